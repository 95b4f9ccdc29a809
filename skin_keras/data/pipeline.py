"""tf.data input pipeline: files -> decoded, resized RGB images in [0, 255] -> batches.

`decode_and_resize` is the single definition of how an encoded image becomes model input. Training,
prediction and the exported serving graph all call it, so they cannot disagree about size,
interpolation or value range. Values stay in [0, 255]: the EfficientNetV2 models include their
own rescaling (`include_preprocessing=True`).
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from skin_keras.core.errors import first_line
from skin_keras.data.augment_ops import augment, batch_mixer, random_crop
from skin_keras.data.augmentation import Augmentation

# The named inputs the datasets give, as the models take them (model/io.py).
IMAGE, METADATA = "image", "metadata"

AUTOTUNE = tf.data.AUTOTUNE


def decode_and_resize(contents: tf.Tensor, img_size: int, crop=None,
                      decode_size: int | None = None) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP bytes -> float32 [img_size, img_size, 3] RGB in [0, 255].

    Grayscale images are repeated to three channels and an alpha channel is dropped. The image is
    resized to a square without cropping (a lesion near the border is kept), with antialiasing so
    that large ISIC images are averaged, not sampled, when shrunk. A JPEG at least twice the
    target size is first decoded at a reduced scale (libjpeg's DCT scaling).

    Training passes `crop` (uint8 image -> part of it, before resizing) and `decode_size`, the
    shorter side the decoded image must keep for that crop; nothing else changes.
    """
    decode_size = decode_size or img_size
    image = tf.cond(tf.io.is_jpeg(contents), lambda: _decode_jpeg_at_least(contents, decode_size),
                    lambda: tf.io.decode_image(contents, channels=3, dtype=tf.uint8,
                                               expand_animations=False))
    if crop is not None:
        image = crop(image)
    return resize_rgb(image, img_size)


def resize_rgb(image: tf.Tensor, img_size: int) -> tf.Tensor:
    """uint8 [H, W, 3] RGB -> float32 [img_size, img_size, 3] in [0, 255]: the square, uncropped,
    antialiased resize every decoded image goes through (`decode_and_resize`)."""
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


def read_rgb(path: str | Path) -> np.ndarray:
    """A file's pixels as the model's decoder reads them, before resizing: uint8 [H, W, 3] RGB
    (16-bit PNGs scaled to 8 bits, grey repeated, alpha dropped). Everything else that reads
    pixels (shifted copies, labelled copies, overlays, crops) uses it, so that none can see
    another image than the model. OSError naming the file when it cannot be decoded."""
    return decode_rgb(tf.io.read_file(str(path)), str(path))


def decode_rgb(contents, name: str = "the image") -> np.ndarray:
    """`read_rgb` of a file's contents (bytes or a string tensor); OSError naming `name`."""
    try:
        return tf.io.decode_image(contents, channels=3, dtype=tf.uint8,
                                  expand_animations=False).numpy()
    except tf.errors.OpError as error:
        raise OSError(f"{name}: TensorFlow cannot decode it ({first_line(error.message)})"
                      ) from None


def load_image(path: tf.Tensor, img_size: int) -> tf.Tensor:
    return decode_and_resize(tf.io.read_file(path), img_size)


def indexed_images(paths: Sequence[str], img_size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of (indices into `paths`, images), in order. A file that fails to decode is
    left out, so its index is missing: callers match results back by index and name it."""
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(paths), dtype=np.int64), [str(path) for path in paths]))
    dataset = dataset.map(lambda index, path: (index, load_image(path, img_size)),
                          num_parallel_calls=AUTOTUNE).ignore_errors()
    # Without tf.data's autotuner AUTOTUNE means one decoder per core, fixed. With it, on 2
    # cores, a pass over a folder ran at a pinned 19.9 img/s (10.33 s for 206 images, the CPU
    # idle for 4 of them) in about a third of passes, whatever the model (docs/benchmarks.md).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.batch(batch_size).prefetch(AUTOTUNE).with_options(options)


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


def balanced_file_stream(items: dict, labels: np.ndarray, num_classes: int,
                         seed: int | None = None, strata: np.ndarray | None = None
                         ) -> tf.data.Dataset:
    """(item, label) pairs drawn with equal probability per class, len(labels) per epoch; with
    `strata` (a group per item, e.g. its clinic), each group of a class equally likely too.

    `items` are named arrays whose rows go together (a file's path and its other inputs). Each
    class's (and group's) items are shuffled and repeated on their own, so a rare class is seen
    as often as a common one (its images repeat; augmentation makes the repeats differ).
    """
    labels = np.asarray(labels, np.int64)
    strata = np.zeros(len(labels), int) if strata is None else np.asarray(strata)
    present = [c for c in range(num_classes) if np.any(labels == c)]
    streams, weights = [], []
    for c in present:
        found = sorted(set(strata[labels == c]))
        for group in found:
            mask = (labels == c) & (strata == group)
            part = {name: np.asarray(values)[mask] for name, values in items.items()}
            stream = tf.data.Dataset.from_tensor_slices((part, labels[mask]))
            streams.append(stream.shuffle(int(mask.sum()), seed=seed,
                                          reshuffle_each_iteration=True).repeat())
            weights.append(1 / len(present) / len(found))
    mixed = tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=seed)
    return mixed.take(len(labels))


def draw_like_training(labels: np.ndarray, count: int, seed: int | None, sampling: str,
                       strata: np.ndarray | None = None) -> np.ndarray:
    """Indices of `count` training examples drawn as the training stream draws them: with
    replacement, uniformly (natural), or with every class (and every stratum of a class)
    equally likely (balanced). What statistics of "the training images" must be measured on
    when they are to match the batches the model trained with (BatchNorm re-estimation)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if sampling != "balanced":
        return rng.integers(0, len(labels), count)
    strata = np.zeros(len(labels), int) if strata is None else np.asarray(strata)
    cells, weights = [], []
    present = sorted(set(labels.tolist()))
    for c in present:
        found = sorted(set(strata[labels == c].tolist()))
        for group in found:
            cells.append(np.flatnonzero((labels == c) & (strata == group)))
            weights.append(1 / len(present) / len(found))
    chosen = rng.choice(len(cells), count, p=np.array(weights) / np.sum(weights))
    return np.array([rng.choice(cells[cell]) for cell in chosen])


@dataclasses.dataclass(frozen=True)
class Training:
    """How a training dataset draws and changes its examples.

    Attributes:
      seed: Shuffling, class draws and augmentation.
      sampling: natural (each example once per epoch, shuffled) or balanced (every class drawn
        with the same probability).
      augmentation: What changes the images (flips and 90-degree turns always).
      deterministic: The same batches and augmentations for the same seed (slower).
      transforms: Per named input other than the image, a function applied to each example's
        value (the patient-metadata row blanker).
      strata: With balanced sampling, a group per training example (its clinic): each group of
        a class drawn as often.
    """

    seed: int | None = None
    sampling: str = "natural"
    augmentation: Augmentation = Augmentation()
    deterministic: bool = False
    transforms: dict = dataclasses.field(default_factory=dict)
    strata: np.ndarray | None = None

    def __post_init__(self):
        if self.sampling not in ("natural", "balanced"):
            raise ValueError(f"sampling={self.sampling!r}: choose natural or balanced")


def example_stream(items: dict, labels, num_classes: int, training: Training | None):
    """(named items, label) per example: in order for evaluation; for training shuffled or
    drawn with balanced classes, every epoch anew."""
    if training is not None and training.sampling == "balanced":
        return balanced_file_stream(items, labels, num_classes, training.seed, training.strata)
    dataset = tf.data.Dataset.from_tensor_slices((items, np.asarray(labels, np.int64)))
    if training is not None:
        dataset = dataset.shuffle(len(labels), seed=training.seed, reshuffle_each_iteration=True)
    return dataset


def _on_image(function):
    """`function(images, labels)` applied to named inputs: the image changes, the others stay."""
    def apply(inputs, labels):
        images, labels = function(inputs[IMAGE], labels)
        return {**inputs, IMAGE: images}, labels
    return apply


def make_dataset(paths: Sequence[str], labels: np.ndarray | None, num_classes: int,
                 img_size: int, batch_size: int, inputs: dict | None = None,
                 training: Training | None = None) -> tf.data.Dataset:
    """Batches of ({"image": images, **inputs}, one-hot labels); of {"image": images} when
    `labels` is None (for prediction, in order).

    `inputs` are the other named model inputs, one row per path ({"metadata": encoded vectors});
    augmentation changes the images only (MixUp/CutMix keep the other inputs of the image they
    mix into). Without `training` the examples keep the order of `paths`; with it they are
    shuffled (or drawn with balanced classes) every epoch and augmented. Training checks every
    file with `decode_check` first, so none should fail here; one that still does is dropped
    with a warning rather than stopping a run of hours.

    Training batches come in whatever order the parallel decoders finish, and random
    augmentation draws go to whichever image asks first; `Training.deterministic` fixes both
    (same seed, same batches), at some cost in speed.
    """
    if labels is None:
        dataset = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
        return dataset.map(lambda path: {IMAGE: load_image(path, img_size)},
                           num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
    items = {IMAGE: np.asarray([str(p) for p in paths]),
             **{name: np.asarray(values, np.float32) for name, values in (inputs or {}).items()}}
    dataset = example_stream(items, labels, num_classes, training)
    augmentation = training.augmentation if training is not None else None

    def load(item, label):
        if augmentation is None:
            image = load_image(item[IMAGE], img_size)
        else:
            image = decode_and_resize(tf.io.read_file(item[IMAGE]), img_size,
                                      decode_size=augmentation.decode_size(img_size),
                                      crop=lambda image: random_crop(image, augmentation))
        return {**item, IMAGE: image}, tf.one_hot(label, num_classes)

    deterministic = training is None or training.deterministic
    dataset = dataset.map(load, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    dataset = dataset.ignore_errors(log_warning=True)
    if training is None:
        return dataset.batch(batch_size).prefetch(AUTOTUNE)
    # Random ops drawing in parallel hand out their numbers in no fixed order: one at a time.
    random_calls = None if training.deterministic else AUTOTUNE
    dataset = dataset.map(_on_image(lambda image, label: (augment(image, augmentation), label)),
                          num_parallel_calls=random_calls)
    if training.transforms:
        dataset = dataset.map(lambda named, label: ({name: training.transforms.get(
            name, lambda value: value)(value) for name, value in named.items()}, label),
            num_parallel_calls=random_calls)
    dataset = dataset.batch(batch_size)
    if augmentation.mixes_batches:
        dataset = dataset.map(_on_image(batch_mixer(augmentation, training.seed)),
                              num_parallel_calls=random_calls)
    return dataset.prefetch(AUTOTUNE)
