"""Pooled features of a frozen backbone, computed once per image and view and kept on disk.

With the backbone frozen (the seed's recipe), every epoch would push every image through the same
backbone again. Instead, the pooled backbone features of each image are computed once and the head
trains on them; the run folder is the same as without the cache (the full model with the trained
head is saved).

    <cache root>/<backbone>_<size>px_<precision>[_<preprocessing>]_<weights fingerprint>/<sha1>.npy

Each .npy holds [views, D] float32 features of one file's content: view v is
`pipeline.dihedral_views`' v-th flip/rotation of the image resized to `size`. The folder
name covers what changes the features besides the file (architecture, every weight value, input
size, compute precision, the model's preprocessing layers such as colour constancy), so a cache
is never stale: another run on the same files starts without computing anything, whatever its
head hyper-parameters.
"""

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skin_keras.core import atomic, cache
from skin_keras.core.progress import progress
from skin_keras.data import pipeline
from skin_keras.model import parts
from skin_keras.model.io import FEATURES

_log = logging.getLogger(__name__)


def weights_fingerprint(model: keras.Model) -> str:
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Pooled features of a built model's backbone for files, computed where missing."""

    def __init__(self, root: str | Path, model: keras.Model, precision: str,
                 batch_size: int = 16):
        backbone = parts.backbone_of(model)
        self.img_size = parts.image_size(model)
        preprocessing = "".join(f"_{layer.method}{layer.power:g}"
                                for layer in parts.preprocessing_layers(model))
        self.folder = Path(root).expanduser() / (
            f"{backbone.name}_{self.img_size}px_{precision}{preprocessing}_"
            f"{weights_fingerprint(backbone)}")
        self.batch_size = batch_size
        self.unwritable = False
        extractor = parts.feature_model(model)
        # One trace for every batch size (a last, smaller batch would trace again: seconds).
        self._forward = tf.function(
            lambda images: extractor({pipeline.IMAGE: images}, training=False)[FEATURES],
            input_signature=[tf.TensorSpec([None, self.img_size, self.img_size, 3], tf.float32)])
        self.dim = int(extractor.outputs[0].shape[-1])

    def features(self, paths: Sequence[str], views: int, label: str = "features"
                 ) -> tuple[np.ndarray, np.ndarray]:
        """([N, views, D] features, [N] bool: False where the file could not be decoded)."""
        digests = [cache.file_sha1(path) for path in paths]
        stored = {}
        for digest in set(digests):
            file = self.folder / f"{digest}.npy"
            if file.exists():
                try:
                    stored[digest] = np.load(file)
                except (ValueError, OSError, EOFError):  # Damaged: computed again.
                    pass
        missing = {}  # digest -> path, for files with fewer views stored than asked for.
        for path, digest in zip(paths, digests):
            have = stored.get(digest)
            if have is None or have.shape[0] < views or have.shape[1] != self.dim:
                missing.setdefault(digest, path)
        if missing:
            stored.update(self._compute(missing, views, label))
        features = np.zeros((len(paths), views, self.dim), np.float32)
        ok = np.zeros(len(paths), bool)
        for i, digest in enumerate(digests):
            if digest in stored:
                features[i], ok[i] = stored[digest][:views], True
        if not ok.all():
            _log.warning("warning: %d file(s) could not be decoded and are left out: %s",
                            int((~ok).sum()), ", ".join(str(paths[i]) for i in np.where(~ok)[0]))
        return features, ok

    def _compute(self, missing: dict[str, str], views: int, label: str) -> dict[str, np.ndarray]:
        digests = list(missing)
        dataset = pipeline.indexed_images([missing[d] for d in digests], self.img_size,
                                                self.batch_size)
        computed = {}
        total = -(-len(digests) // self.batch_size)
        for indices, images in progress(dataset, f"{label}: {len(digests)} images x {views} "
                                        "view(s)", total=total):
            batch = np.stack([self._forward(view).numpy()
                              for view in pipeline.dihedral_views(images, views)], axis=1)
            for index, rows in zip(indices.numpy(), batch):
                digest = digests[index]
                computed[digest] = rows.astype(np.float32)
                self._store(digest, rows)
        return computed

    def _store(self, digest: str, rows: np.ndarray) -> None:
        """Keeps a file's features for later runs, unless the cache cannot be written (a
        read-only or full disk): then they are used by this run only, said once."""
        if self.unwritable:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic.write_atomic(self.folder / f"{digest}.npy",
                                lambda tmp: np.save(tmp, rows), suffix=".npy")
        except OSError as error:
            self.unwritable = True
            _log.warning(f"warning: features are not cached ({error.strerror}: {self.folder});"
                         " this run computes them, the next one will again")


def feature_dataset(features: np.ndarray, labels: np.ndarray, num_classes: int,
                    batch_size: int, inputs: dict | None = None,
                    training: pipeline.Training | None = None) -> tf.data.Dataset:
    """Batches of ({"features": pooled features, **inputs}, one-hot labels) for the head: the
    cached counterpart of `pipeline.make_dataset` (`inputs`, the other named inputs such as the
    metadata vectors, join at the head; `training` draws and transforms them the same way).

    Training draws one of the cached views of each image at random (the cached counterpart of
    the random flips and rotations); evaluation uses view 0, the image as it is.
    """
    labels = np.asarray(labels, np.int64)
    inputs = {name: np.asarray(values, np.float32) for name, values in (inputs or {}).items()}
    if training is None:
        dataset = tf.data.Dataset.from_tensor_slices(
            ({FEATURES: features[:, 0], **inputs}, tf.one_hot(labels, num_classes)))
        return dataset.batch(batch_size).prefetch(pipeline.AUTOTUNE)
    table = tf.constant(features)
    views = features.shape[1]
    items = {"index": np.arange(len(labels), dtype=np.int64), **inputs}

    def pick(item, label):
        view = tf.random.uniform((), 0, views, dtype=tf.int64, seed=training.seed)
        named = {FEATURES: table[item["index"], view]}
        for name in inputs:
            named[name] = training.transforms.get(name, lambda value: value)(item[name])
        return named, tf.one_hot(label, num_classes)

    dataset = pipeline.example_stream(items, labels, num_classes, training)
    return dataset.map(pick).batch(batch_size).prefetch(pipeline.AUTOTUNE)
