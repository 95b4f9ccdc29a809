"""tf.data input pipeline: files -> decoded, resized RGB images in [0, 255] -> batches.

`decode_and_resize` is the single definition of how an encoded image becomes model input. Training,
prediction and the exported serving graph all call it, so they cannot disagree about size,
interpolation or value range. Values stay in [0, 255]: the EfficientNetV2 models include their
own rescaling (`include_preprocessing=True`).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def decode_and_resize(contents: tf.Tensor, img_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP bytes -> float32 [img_size, img_size, 3] RGB in [0, 255].

    Grayscale images are repeated to three channels and an alpha channel is dropped. The image is
    resized to a square without cropping (a lesion near the border is kept), with antialiasing so
    that large ISIC images are averaged, not sampled, when shrunk. A JPEG at least twice the
    target size is first decoded at a reduced scale (libjpeg's DCT scaling).
    """
    image = tf.cond(tf.io.is_jpeg(contents), lambda: _decode_jpeg_at_least(contents, img_size),
                    lambda: tf.io.decode_image(contents, channels=3, dtype=tf.uint8,
                                               expand_animations=False))
    image = tf.image.resize(image, (img_size, img_size), method="bilinear", antialias=True)
    return tf.ensure_shape(image, (img_size, img_size, 3))


def _decode_jpeg_at_least(contents: tf.Tensor, img_size: int) -> tf.Tensor:
    """Decodes a JPEG at 1/2, 1/4 or 1/8 scale (in the DCT domain, far cheaper than decoding it
    whole) when both sides stay at least `img_size`; the antialiased resize does the rest."""
    shape = tf.image.extract_jpeg_shape(contents)
    shorter = tf.minimum(shape[0], shape[1])
    branches = [(shorter >= ratio * img_size,
                 lambda ratio=ratio: tf.io.decode_jpeg(contents, channels=3, ratio=ratio))
                for ratio in (8, 4, 2)]
    return tf.case(branches, default=lambda: tf.io.decode_jpeg(contents, channels=3),
                   exclusive=False)


def load_image(path: tf.Tensor, img_size: int) -> tf.Tensor:
    return decode_and_resize(tf.io.read_file(path), img_size)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-only augmentation beyond the flips and 90-degree rotations that always apply.

    All default to off. They run in the tf.data pipeline, never inside the model, so evaluation,
    prediction and exported models do not see them.

    Attributes:
      crop_scale: Random resized crop keeping at least this fraction of the image area (aspect
        3:4 to 4:3) before resizing; 1.0 = off.
      rotation: Random rotation by any angle (reflected borders).
      color_jitter: Strength s of random brightness (±s·255), contrast and saturation (×[1-s,
        1+s]) and hue (±s/4); 0 = off.
      randaugment_magnitude: `keras.layers.RandAugment` factor in (0, 1] (2 ops per image); 0 = off.
      mixup_alpha, cutmix_alpha: `keras.layers.MixUp` alpha / `keras.layers.CutMix` factor; the
        labels become soft. With both set, each batch gets one of the two at random. 0 = off.
    """

    crop_scale: float = 1.0
    rotation: bool = False
    color_jitter: float = 0.0
    randaugment_magnitude: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0


def load_training_image(path: tf.Tensor, img_size: int, crop_scale: float) -> tf.Tensor:
    """`load_image`, after a random crop of at least `crop_scale` of the area (when < 1)."""
    if crop_scale >= 1.0:
        return load_image(path, img_size)
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.uint8,
                               expand_animations=False)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(crop_scale, 1.0),
        use_image_if_no_bounding_boxes=True)
    image = tf.image.resize(tf.slice(image, begin, size), (img_size, img_size),
                            method="bilinear", antialias=True)
    return tf.ensure_shape(image, (img_size, img_size, 3))


def color_jitter(image: tf.Tensor, strength: float) -> tf.Tensor:
    image = image / 255.0
    image = tf.image.random_brightness(image, strength)
    image = tf.image.random_contrast(image, 1 - strength, 1 + strength)
    image = tf.image.random_saturation(image, 1 - strength, 1 + strength)
    image = tf.image.random_hue(image, strength / 4)
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def batch_mixer(augmentation: Augmentation, seed: int | None):
    """A (images, labels) -> (images, labels) function for RandAugment, MixUp and CutMix."""
    import keras  # pylint: disable=g-import-not-at-top

    rand_augment = keras.layers.RandAugment(
        value_range=(0, 255), factor=augmentation.randaugment_magnitude, seed=seed) if (
            augmentation.randaugment_magnitude) else None
    mixers = []
    if augmentation.mixup_alpha:
        mixers.append(keras.layers.MixUp(alpha=augmentation.mixup_alpha, seed=seed))
    if augmentation.cutmix_alpha:
        mixers.append(keras.layers.CutMix(factor=augmentation.cutmix_alpha, seed=seed))

    def mix(images, labels):
        if rand_augment is not None:
            images = rand_augment(images)
        if not mixers:
            return images, labels
        branches = [lambda m=m: tuple(m({"images": images, "labels": labels}).values())
                    for m in mixers]
        if len(branches) == 1:
            images, labels = branches[0]()
        else:
            images, labels = tf.cond(tf.random.uniform(()) < 0.5, branches[0], branches[1])
        return images, labels

    return mix


def light_augment(image: tf.Tensor) -> tf.Tensor:
    """Random flips both ways and a random multiple of 90 degrees: dermoscopy has no "up"."""
    image = tf.image.random_flip_left_right(image)
    image = tf.image.random_flip_up_down(image)
    return tf.image.rot90(image, k=tf.random.uniform((), 0, 4, dtype=tf.int32))


def dihedral_views(images: tf.Tensor, count: int = 8) -> list[tf.Tensor]:
    """The first `count` of the eight flips/rotations of a batch [B, H, W, C], identity first:
    the views `light_augment` draws from, test-time augmentation averages and the feature cache
    stores. Only those asked for are computed."""
    bases = [images] + ([tf.transpose(images, (0, 2, 1, 3))] if count > 4 else [])
    views = []
    for index in range(count):
        base, axes = bases[index // 4], ([], [2], [1], [1, 2])[index % 4]
        views.append(tf.reverse(base, axes) if axes else base)
    return views


SAMPLINGS = ("natural", "balanced")


def balanced_file_stream(paths: Sequence[str], labels: np.ndarray, num_classes: int,
                         seed: int | None = None) -> tf.data.Dataset:
    """(path, label) pairs drawn with equal probability per class, len(paths) per epoch.

    Each class's files are shuffled and repeated on their own, so a rare class is seen as often
    as a common one (its images repeat; augmentation makes the repeats differ).
    """
    labels = np.asarray(labels, np.int64)
    present = [c for c in range(num_classes) if np.any(labels == c)]
    streams = []
    for c in present:
        class_paths = [p for p, label in zip(paths, labels) if label == c]
        stream = tf.data.Dataset.from_tensor_slices(
            (class_paths, np.full(len(class_paths), c, np.int64)))
        streams.append(stream.shuffle(len(class_paths), seed=seed,
                                      reshuffle_each_iteration=True).repeat())
    mixed = tf.data.Dataset.sample_from_datasets(streams, weights=[1 / len(present)] * len(present),
                                                 seed=seed)
    return mixed.take(len(paths))


def make_dataset(paths: Sequence[str], labels: np.ndarray | None, num_classes: int, img_size: int,
                 batch_size: int, training: bool = False, seed: int | None = None,
                 sampling: str = "natural", augmentation: Augmentation | None = None,
                 deterministic: bool = False) -> tf.data.Dataset:
    """Builds the batched dataset of (images, one-hot labels), or of images when `labels` is None.

    Training data is shuffled every epoch (or, with `sampling="balanced"`, drawn with equal class
    shares) and lightly augmented; evaluation data keeps the order of `paths`. Files that fail to
    decode despite the listing check are dropped with a warning rather than stopping a run of
    hours.

    Training batches come in whatever order the parallel decoders finish, and random
    augmentation draws go to whichever image asks first; `deterministic=True` fixes both (same
    seed, same batches), at some cost in speed.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling={sampling!r}: choose one of {', '.join(SAMPLINGS)}")
    if labels is None:
        dataset = tf.data.Dataset.from_tensor_slices(list(paths))
    elif training and sampling == "balanced":
        dataset = balanced_file_stream(paths, labels, num_classes, seed)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int64)))
    if training and sampling == "natural":
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    augmentation = (augmentation or Augmentation()) if training else None
    if labels is None:
        def load(path):
            return load_image(path, img_size)
    elif training:
        def load(path, label):
            image = load_training_image(path, img_size, augmentation.crop_scale)
            return image, tf.one_hot(label, num_classes)
    else:
        def load(path, label):
            return load_image(path, img_size), tf.one_hot(label, num_classes)
    dataset = dataset.map(load, num_parallel_calls=AUTOTUNE,
                          deterministic=deterministic or not training)
    dataset = dataset.ignore_errors(log_warning=True)
    # Random ops drawing in parallel hand out their numbers in no fixed order: one at a time.
    random_calls = None if deterministic else AUTOTUNE
    if training:
        dataset = dataset.map(lambda image, label: (augment(image, augmentation), label),
                              num_parallel_calls=random_calls)
    dataset = dataset.batch(batch_size)
    if training and (augmentation.randaugment_magnitude or augmentation.mixup_alpha
                     or augmentation.cutmix_alpha):
        dataset = dataset.map(batch_mixer(augmentation, seed), num_parallel_calls=random_calls)
    return dataset.prefetch(AUTOTUNE)


def augment(image: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """Per-image training augmentation: flips, 90-degree turns, then the optional extras."""
    image = light_augment(image)
    if augmentation.rotation:
        angle = tf.random.uniform((), 0.0, 2 * np.pi)
        image = _rotate(image, angle)
    if augmentation.color_jitter:
        image = color_jitter(image, augmentation.color_jitter)
    return image


def _rotate(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Rotates about the centre by `angle` radians, reflecting the borders."""
    import keras  # pylint: disable=g-import-not-at-top

    size = tf.cast(tf.shape(image)[0], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    centre = (size - 1) / 2
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
    transform = tf.stack([cos, -sin, centre - cos * centre + sin * centre,
                          sin, cos, centre - sin * centre - cos * centre, 0.0, 0.0])
    rotated = keras.ops.image.affine_transform(image[None], transform[None],
                                               interpolation="bilinear", fill_mode="reflect")
    return rotated[0]
