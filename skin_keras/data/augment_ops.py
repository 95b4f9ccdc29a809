"""Training-only augmentation in the tf.data pipeline: the TensorFlow ops that apply an
`Augmentation` (augmentation.py declares what is on).

Flips and 90-degree turns always apply (dermoscopy has no "up"); everything else only where the
`Augmentation` switches it on. None of this is inside the model, so evaluation, prediction and
exports never see it.
"""

import keras
import numpy as np
import tensorflow as tf

from skin_keras.data.augmentation import Augmentation


def random_crop(image: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """A random crop of at least `crop_scale` of the area (uint8 [H, W, 3] in and out)."""
    if augmentation.crop_scale >= 1.0:
        return image
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), min_object_covered=0.0,
        aspect_ratio_range=(1 / augmentation.crop_aspect, augmentation.crop_aspect),
        area_range=(augmentation.crop_scale, 1.0), use_image_if_no_bounding_boxes=True)
    cropped = tf.slice(image, begin, size)
    if augmentation.zoom_out <= 1.0:
        return cropped
    return tf.cond(tf.random.uniform(()) < 0.5, lambda: cropped, lambda: image)


def zoom_out(image: tf.Tensor, largest: float) -> tf.Tensor:
    """Shrinks a square image [S, S, 3] by a random factor in [1/largest, 1] and fills the
    border by reflection, so the lesion looks smaller in more skin."""
    size = tf.shape(image)[0]
    scale = tf.random.uniform((), 1.0 / largest, 1.0)
    small = tf.maximum(2, tf.cast(tf.round(scale * tf.cast(size, tf.float32)), tf.int32))
    shrunk = tf.image.resize(image, (small, small), method="bilinear", antialias=True)
    before = (size - small) // 2
    after = size - small - before
    # Reflection needs less padding than the image has pixels: true for zoom_out <= 2.5.
    padded = tf.pad(shrunk, [[before, after], [before, after], [0, 0]], mode="REFLECT")
    return tf.ensure_shape(padded, image.shape)


def light_augment(image: tf.Tensor) -> tf.Tensor:
    """Random flips both ways and a random multiple of 90 degrees: dermoscopy has no "up"."""
    image = tf.image.random_flip_left_right(image)
    image = tf.image.random_flip_up_down(image)
    return tf.image.rot90(image, k=tf.random.uniform((), 0, 4, dtype=tf.int32))


def color_jitter(image: tf.Tensor, strength: float) -> tf.Tensor:
    image = image / 255.0
    image = tf.image.random_brightness(image, strength)
    image = tf.image.random_contrast(image, 1 - strength, 1 + strength)
    image = tf.image.random_saturation(image, 1 - strength, 1 + strength)
    image = tf.image.random_hue(image, strength / 4)
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def illuminant_jitter(image: tf.Tensor, strength: float) -> tf.Tensor:
    """Another light source or white balance: a random gain per channel."""
    gains = tf.exp(tf.random.uniform((3,), -strength, strength))
    return tf.clip_by_value(image * gains, 0.0, 255.0)


def gamma_jitter(image: tf.Tensor, strength: float) -> tf.Tensor:
    gamma = tf.exp(tf.random.uniform((), -strength, strength))
    return 255.0 * tf.pow(tf.clip_by_value(image / 255.0, 0.0, 1.0), gamma)


def field_of_view(size: int, radius: tf.Tensor, centre: tf.Tensor,
                  softness: float = 0.03) -> tf.Tensor:
    """[S, S, 1] mask: 1 inside the circle (radius and centre in units of the side), falling
    to 0 over `softness` of the side outside it."""
    coordinates = (tf.range(size, dtype=tf.float32) + 0.5) / size
    rows, columns = tf.meshgrid(coordinates, coordinates, indexing="ij")
    distance = tf.sqrt((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2)
    return tf.clip_by_value((radius + softness - distance) / softness, 0.0, 1.0)[..., None]


def vignette(image: tf.Tensor) -> tf.Tensor:
    """A contact dermatoscope's dark round field of view: a full circle (small radius) or black
    corners only (radius beyond half the side), with a random centre and darkness."""
    size = image.shape[0]
    radius = tf.random.uniform((), 0.4, 0.75)
    centre = 0.5 + tf.random.uniform((2,), -0.08, 0.08)
    mask = field_of_view(size, radius, centre)
    dark = tf.random.uniform((), 0.0, 30.0)
    return image * mask + dark * (1.0 - mask)


def down_up_blur(image: tf.Tensor) -> tf.Tensor:
    """A softer camera: down-scaled to 30-80% of the side and back."""
    size = image.shape[0]
    small = tf.cast(tf.round(tf.random.uniform((), 0.3, 0.8) * size), tf.int32)
    smaller = tf.image.resize(image, (small, small), method="bilinear", antialias=True)
    return tf.image.resize(smaller, (size, size), method="bilinear")


def jpeg_recompress(image: tf.Tensor) -> tf.Tensor:
    image = tf.image.random_jpeg_quality(tf.clip_by_value(image, 0.0, 255.0) / 255.0, 30, 90)
    return tf.reshape(image, tf.shape(image)) * 255.0


def _maybe(probability: float, change, image: tf.Tensor) -> tf.Tensor:
    if probability <= 0:
        return image
    return tf.cond(tf.random.uniform(()) < probability, lambda: change(image), lambda: image)


def augment(image: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """Per-image training augmentation on a resized image [S, S, 3] in [0, 255]: flips and
    90-degree turns, then the extras that are on. The field of view darkens last but for blur
    and compression, as in a camera."""
    shape = image.shape
    image = light_augment(image)
    if augmentation.zoom_out > 1.0:
        zoomed = lambda: zoom_out(image, augmentation.zoom_out)  # pylint: disable=unnecessary-lambda-assignment
        image = zoomed() if augmentation.crop_scale >= 1.0 else tf.cond(
            tf.random.uniform(()) < 0.5, zoomed, lambda: image)
    if augmentation.rotation:
        image = _rotate(image, tf.random.uniform((), 0.0, 2 * np.pi))
    if augmentation.color_jitter:
        image = color_jitter(image, augmentation.color_jitter)
    if augmentation.illuminant_jitter:
        image = illuminant_jitter(image, augmentation.illuminant_jitter)
    if augmentation.gamma_jitter:
        image = gamma_jitter(image, augmentation.gamma_jitter)
    image = _maybe(augmentation.vignette_prob, vignette, image)
    image = _maybe(augmentation.blur_prob, down_up_blur, image)
    image = _maybe(augmentation.jpeg_prob, jpeg_recompress, image)
    # Branches lose the static size; batch layers (CutMix) need it.
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), shape)


def _rotate(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Rotates about the centre by `angle` radians, reflecting the borders."""
    size = tf.cast(tf.shape(image)[0], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    centre = (size - 1) / 2
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
    transform = tf.stack([cos, -sin, centre - cos * centre + sin * centre,
                          sin, cos, centre - sin * centre - cos * centre, 0.0, 0.0])
    rotated = keras.ops.image.affine_transform(image[None], transform[None],
                                               interpolation="bilinear", fill_mode="reflect")
    return rotated[0]


STYLE_MIX_ALPHA = 0.1  # MixStyle's Beta(alpha, alpha): most weights near 0 or 1.


def style_mix(images: tf.Tensor, probability: float, seed: int | None = None) -> tf.Tensor:
    """Each image, with `probability`, renormalised to per-channel statistics mixed between its
    own and those of another image of the batch (MixStyle, Zhou et al. 2021, on the pixels);
    what the image shows is kept, its colour cast, brightness and contrast change."""
    count = tf.shape(images)[0]
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    std = tf.sqrt(tf.math.reduce_variance(images, axis=[1, 2], keepdims=True) + 1e-3)
    other = tf.random.shuffle(tf.range(count), seed=seed)
    first = tf.random.gamma([count, 1, 1, 1], STYLE_MIX_ALPHA, seed=seed)
    second = tf.random.gamma([count, 1, 1, 1], STYLE_MIX_ALPHA, seed=seed)
    weight = first / tf.maximum(first + second, 1e-12)
    mixed_mean = weight * mean + (1 - weight) * tf.gather(mean, other)
    mixed_std = weight * std + (1 - weight) * tf.gather(std, other)
    styled = (images - mean) / std * mixed_std + mixed_mean
    chosen = tf.random.uniform([count, 1, 1, 1], seed=seed) < probability
    return tf.clip_by_value(tf.where(chosen, styled, images), 0.0, 255.0)


def batch_mixer(augmentation: Augmentation, seed: int | None):
    """A (images, labels) -> (images, labels) function for MixStyle on pixels, RandAugment,
    MixUp and CutMix."""
    rand_augment = keras.layers.RandAugment(
        value_range=(0, 255), factor=augmentation.randaugment_magnitude, seed=seed) if (
            augmentation.randaugment_magnitude) else None
    mixers = []
    if augmentation.mixup_alpha:
        mixers.append(keras.layers.MixUp(alpha=augmentation.mixup_alpha, seed=seed))
    if augmentation.cutmix_alpha:
        mixers.append(keras.layers.CutMix(factor=augmentation.cutmix_alpha, seed=seed))

    def mix(images, labels):
        if augmentation.style_mix_prob:
            images = style_mix(images, augmentation.style_mix_prob, seed)
        if rand_augment is not None:
            images = rand_augment(images)
        if not mixers:
            return tf.clip_by_value(images, 0.0, 255.0), labels
        branches = [lambda m=m: tuple(m({"images": images, "labels": labels}).values())
                    for m in mixers]
        if len(branches) == 1:
            images, labels = branches[0]()
        else:
            images, labels = tf.cond(tf.random.uniform(()) < 0.5, branches[0], branches[1])
        # Keras' layers can overshoot by float rounding (255.00002): the model's range stays.
        return tf.clip_by_value(images, 0.0, 255.0), labels

    return mix
