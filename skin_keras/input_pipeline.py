"""tf.data input pipeline: files -> decoded, resized RGB images in [0, 255] -> batches.

`decode_and_resize` is the single definition of how an encoded image becomes model input. Training,
prediction and the exported serving graph all call it, so they cannot disagree about size,
interpolation or value range. Values stay in [0, 255]: the EfficientNetV2 models include their
own rescaling (`include_preprocessing=True`).
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from skin_keras.augmentation import Augmentation, augment, batch_mixer, random_crop

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


def indexed_images(paths: Sequence[str], img_size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of (indices into `paths`, images), in order. A file that fails to decode is
    left out, so its index is missing: callers match results back by index and name it."""
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(paths), dtype=np.int64), [str(path) for path in paths]))
    dataset = dataset.map(lambda index, path: (index, load_image(path, img_size)),
                          num_parallel_calls=AUTOTUNE).ignore_errors()
    # Without tf.data's autotuner AUTOTUNE means one decoder per core, fixed. With it, on 2
    # cores, a pass over a folder ran at a pinned 19.9 img/s (10.33 s for 206 images, the CPU
    # idle for 4 of them) in about a third of passes, whatever the model (benchmarks/README).
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


def balanced_file_stream(items, labels: np.ndarray, num_classes: int,
                         seed: int | None = None) -> tf.data.Dataset:
    """(item, label) pairs drawn with equal probability per class, len(labels) per epoch.

    `items` are paths (or indices), or a tuple of arrays (paths, metadata vectors) whose rows go
    together. Each class's items are shuffled and repeated on their own, so a rare class is
    seen as often as a common one (its images repeat; augmentation makes the repeats differ).
    """
    labels = np.asarray(labels, np.int64)
    present = [c for c in range(num_classes) if np.any(labels == c)]
    streams = []
    for c in present:
        mask = labels == c
        class_items = (tuple(np.asarray(part)[mask] for part in items)
                       if isinstance(items, tuple) else np.asarray(items)[mask])
        stream = tf.data.Dataset.from_tensor_slices((class_items, labels[mask]))
        streams.append(stream.shuffle(int(mask.sum()), seed=seed,
                                      reshuffle_each_iteration=True).repeat())
    mixed = tf.data.Dataset.sample_from_datasets(streams, weights=[1 / len(present)] * len(present),
                                                 seed=seed)
    return mixed.take(len(labels))


def _on_images(function, with_metadata: bool):
    """`function(images, labels)` applied to elements whose inputs may be (images, metadata)."""
    if not with_metadata:
        return function

    def apply(inputs, labels):
        images, labels = function(inputs[0], labels)
        return (images, inputs[1]), labels
    return apply


def make_dataset(paths: Sequence[str], labels: np.ndarray | None, num_classes: int, img_size: int,
                 batch_size: int, training: bool = False, seed: int | None = None,
                 sampling: str = "natural", augmentation: Augmentation | None = None,
                 deterministic: bool = False, metadata: np.ndarray | None = None,
                 blank_metadata=None) -> tf.data.Dataset:
    """Builds the batched dataset of (images, one-hot labels), or of images when `labels` is None.

    With `metadata` (encoded vectors [N, size], one per path) the inputs are (images, metadata);
    augmentation changes the images only (MixUp/CutMix keep the metadata of the image they
    mix into); in training, `blank_metadata` (`metadata_encoding.row_blanker`) blanks rows.

    Training data is shuffled every epoch (or, with `sampling="balanced"`, drawn with equal class
    shares) and augmented; evaluation data keeps the order of `paths`. Training checks every file
    with `decode_check` first, so none should fail here; one that still does is dropped with a
    warning rather than stopping a run of hours.

    Training batches come in whatever order the parallel decoders finish, and random
    augmentation draws go to whichever image asks first; `deterministic=True` fixes both (same
    seed, same batches), at some cost in speed.
    """
    if sampling not in ("natural", "balanced"):
        raise ValueError(f"sampling={sampling!r}: choose natural or balanced")
    with_metadata = metadata is not None and labels is not None
    items = (np.asarray([str(p) for p in paths]), np.asarray(metadata, np.float32)
             ) if with_metadata else [str(p) for p in paths]
    if labels is None:
        dataset = tf.data.Dataset.from_tensor_slices(items)
    elif training and sampling == "balanced":
        dataset = balanced_file_stream(items, labels, num_classes, seed)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((items, np.asarray(labels, np.int64)))
    if training and sampling == "natural":
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    augmentation = (augmentation or Augmentation()) if training else None
    if labels is None:
        def load(path):
            return load_image(path, img_size)
    else:
        def read(path):
            if not training:
                return load_image(path, img_size)
            return decode_and_resize(
                tf.io.read_file(path), img_size, decode_size=augmentation.decode_size(img_size),
                crop=lambda image: random_crop(image, augmentation))

        def load(item, label):
            if with_metadata:
                return (read(item[0]), item[1]), tf.one_hot(label, num_classes)
            return read(item), tf.one_hot(label, num_classes)
    dataset = dataset.map(load, num_parallel_calls=AUTOTUNE,
                          deterministic=deterministic or not training)
    dataset = dataset.ignore_errors(log_warning=True)
    # Random ops drawing in parallel hand out their numbers in no fixed order: one at a time.
    random_calls = None if deterministic else AUTOTUNE
    if training:
        dataset = dataset.map(_on_images(lambda image, label: (augment(image, augmentation),
                                                               label), with_metadata),
                              num_parallel_calls=random_calls)
        if with_metadata and blank_metadata is not None:
            dataset = dataset.map(lambda inputs, label: ((inputs[0], blank_metadata(inputs[1])),
                                                         label), num_parallel_calls=random_calls)
    dataset = dataset.batch(batch_size)
    if training and augmentation.mixes_batches:
        dataset = dataset.map(_on_images(batch_mixer(augmentation, seed), with_metadata),
                              num_parallel_calls=random_calls)
    return dataset.prefetch(AUTOTUNE)
