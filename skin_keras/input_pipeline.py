"""tf.data input pipeline: files -> decoded, resized RGB images in [0, 255] -> batches.

`decode_and_resize` is the single definition of how an encoded image becomes model input. Training,
prediction and the exported serving graph all call it, so they cannot disagree about size,
interpolation or value range. Values stay in [0, 255]: the EfficientNetV2 models include their
own rescaling (`include_preprocessing=True`).
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def decode_and_resize(contents: tf.Tensor, img_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP bytes -> float32 [img_size, img_size, 3] RGB in [0, 255].

    Grayscale images are repeated to three channels and an alpha channel is dropped. The image is
    resized to a square without cropping (a lesion near the border is kept), with antialiasing so
    that large ISIC images are averaged, not sampled, when shrunk.
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.image.resize(image, (img_size, img_size), method="bilinear", antialias=True)
    return tf.ensure_shape(image, (img_size, img_size, 3))


def load_image(path: tf.Tensor, img_size: int) -> tf.Tensor:
    return decode_and_resize(tf.io.read_file(path), img_size)


def light_augment(image: tf.Tensor) -> tf.Tensor:
    """Random flips both ways and a random multiple of 90 degrees: dermoscopy has no "up"."""
    image = tf.image.random_flip_left_right(image)
    image = tf.image.random_flip_up_down(image)
    return tf.image.rot90(image, k=tf.random.uniform((), 0, 4, dtype=tf.int32))


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
                 sampling: str = "natural") -> tf.data.Dataset:
    """Builds the batched dataset of (images, one-hot labels), or of images when `labels` is None.

    Training data is shuffled every epoch (or, with `sampling="balanced"`, drawn with equal class
    shares) and lightly augmented; evaluation data keeps the order of `paths`. Files that fail to
    decode despite the listing check are dropped with a warning rather than stopping a run of
    hours.
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

    if labels is None:
        def load(path):
            return load_image(path, img_size)
    else:
        def load(path, label):
            return load_image(path, img_size), tf.one_hot(label, num_classes)
    dataset = dataset.map(load, num_parallel_calls=AUTOTUNE, deterministic=not training)
    dataset = dataset.ignore_errors(log_warning=True)
    if training:
        dataset = dataset.map(lambda image, label: (light_augment(image), label),
                              num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)
