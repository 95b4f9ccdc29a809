"""The library's Python API: a trained model loaded once, then called on images.

    import skin_keras
    model = skin_keras.load("runs/exp3")     # a run folder, .keras, SavedModel, .tflite, .onnx
    model.classes                             # the class names, in the model's order
    rows = model.predict(["a.jpg", "b.png"], metadata=[{"age_approx": 50, "sex": "male"}, None])
    rows = model.predict(images)              # uint8 [N, H, W, 3] array, or PIL images
    heat = model.explain("a.jpg")             # Grad-CAM of the predicted class (Keras models)

`predict` gives predict.py's rows (predictions.json's): path, label, score, probabilities, error;
for a metadata model whether it was used; for a calibrated model unknown and unknown_score.
Files go through predict.py's own path (the same checks, decoding, batches and backend
choice); arrays and PIL images through the same resize. Bad input raises UserError with
predict.py's messages; a file that cannot be read gets an error row, as in predict.py.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from skin_keras.core.errors import UserError
from skin_keras.data import patient_metadata, pipeline
from skin_keras.infer import backend as backends
from skin_keras.infer import files, gradcam, load
from skin_keras.infer.predict import prediction_rows
from skin_keras.infer.runner import Runner, explainable
from skin_keras.model import io


def load_classifier(model_path: str | Path, backend: str = "auto", batch_size: int = 32,
                    tta: int = 1) -> "Classifier":
    """`skin_keras.load`: any model predict.py takes; `backend`, `batch_size` and `tta` as
    predict.py's flags."""
    if backend not in backends.BACKENDS:
        raise UserError(f"backend={backend!r}: choose from {', '.join(backends.BACKENDS)}")
    if not 1 <= tta <= files.MAX_TTA_VIEWS or batch_size < 1:
        raise UserError(f"tta={tta}, batch_size={batch_size}: tta is 1 to "
                        f"{files.MAX_TTA_VIEWS}, batch_size at least 1")
    return Classifier(load.load(model_path), backend, batch_size, tta)


class Classifier:
    """A loaded model and how to run it (see the module's docstring)."""

    def __init__(self, loaded: Runner, backend: str, batch_size: int, tta: int):
        self.loaded, self.backend, self.batch_size, self.tta = loaded, backend, batch_size, tta
        self._runners = {}

    @property
    def classes(self) -> list[str]:
        return list(self.loaded.class_names)

    def __repr__(self) -> str:
        return (f"Classifier({self.loaded.source}, {len(self.classes)} classes, "
                f"{self.loaded.img_size} px)")

    def _runner(self, images: int) -> Runner:
        """The backend predict.py would pick for a job of `images` (kept for the next call)."""
        key = images * self.tta >= backends.AUTO_TFLITE_MIN_IMAGES
        if key not in self._runners:
            self._runners[key] = backends.select(self.loaded, self.backend, images * self.tta)
        return self._runners[key]

    def predict(self, images, metadata: Sequence[dict | None] | None = None) -> list[dict]:
        """predict.py's rows for file paths, or for images given as uint8 arrays ([H, W, 3] or
        [N, H, W, 3]; grey [H, W] and RGBA are taken as the decoder takes them) or PIL images.
        `metadata`: for a model trained with it, one dict (age_approx, sex,
        anatom_site_general) or None per image."""
        items = _as_items(images)
        runner = self._runner(len(items))
        records = self._records(runner, metadata, len(items))
        inputs = {io.RECORDS: records} if records is not None else {}
        if all(isinstance(item, (str, Path)) for item in items):
            paths = [Path(item) for item in items]
            results, errors = files.predict_files(runner, paths, self.batch_size, self.tta,
                                                  inputs, show_progress=False)
            return prediction_rows(paths, results, errors, runner, 0, inputs or None)
        if any(isinstance(item, (str, Path)) for item in items):
            raise UserError("give file paths, or images (arrays, PIL images), not both at once")
        pixels = [_rgb(item, index) for index, item in enumerate(items)]
        results = {}
        for start in range(0, len(pixels), self.batch_size):
            batch = tf.stack([pipeline.resize_rgb(image, runner.img_size)
                              for image in pixels[start:start + self.batch_size]])
            others = {name: values[start:start + self.batch_size]
                      for name, values in inputs.items()}
            for name, values in files.answer_views(runner, batch, others, self.tta).items():
                results.setdefault(name, []).append(values)
        results = {name: np.concatenate(parts) for name, parts in results.items()}
        errors = [None if all(np.isfinite(values[i]).all() for values in results.values())
                  else files.MODEL_NAN for i in range(len(pixels))]
        return prediction_rows([f"[{i}]" for i in range(len(pixels))], results, errors, runner,
                               0, inputs or None)

    def _records(self, runner: Runner, metadata, count: int) -> list | None:
        if io.METADATA not in runner.inputs:
            if metadata is not None and any(value is not None for value in metadata):
                raise UserError(f"{self.loaded.source} was trained without metadata: give "
                                "none")
            return None
        metadata = [None] * count if metadata is None else list(metadata)
        if len(metadata) != count:
            raise UserError(f"metadata: {len(metadata)} entries for {count} images (one per "
                            "image; None where there is none)")
        return [patient_metadata.record_of(values) for values in metadata]

    def explain(self, image, metadata: dict | None = None) -> np.ndarray:
        """The Grad-CAM heat map [H, W] in [0, 1] of the class predicted for the image (a file
        path, a uint8 array or a PIL image) at its own size; Keras models only. `metadata`, as
        one entry of `predict`'s, changes which class that is for a model trained with it."""
        model = explainable(self.loaded)
        if isinstance(image, (str, Path)):
            pixels = pipeline.read_rgb(image)
        else:
            pixels = _rgb(image, 0).numpy()
        batch = pipeline.resize_rgb(tf.constant(pixels), self.loaded.img_size)[None]
        heat_maps, _ = gradcam.grad_cam(model, batch,
                                        records=self._records(self.loaded, [metadata], 1))
        return gradcam.resize_map(heat_maps[0], (pixels.shape[1], pixels.shape[0]))


def _as_items(images) -> list:
    if isinstance(images, (str, Path)) or _is_picture(images):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    items = list(images)
    if not items:
        raise UserError("no images given")
    return items


def _is_picture(item) -> bool:
    return (isinstance(item, np.ndarray) and item.ndim in (2, 3)) or hasattr(item, "getdata")


def _rgb(item, index: int) -> tf.Tensor:
    """uint8 [H, W, 3] of an array or a PIL image (grey repeated, alpha dropped)."""
    if hasattr(item, "getdata"):  # A PIL image.
        item = np.asarray(item.convert("RGB"))
    item = np.asarray(item)
    if item.dtype != np.uint8:
        raise UserError(f"image {index}: give uint8 RGB values in [0, 255] (got {item.dtype})")
    if item.ndim == 2:
        item = np.repeat(item[..., None], 3, axis=-1)
    if item.ndim != 3 or item.shape[-1] not in (3, 4) or min(item.shape[:2]) < 1:
        raise UserError(f"image {index}: shape {item.shape} is not [H, W, 3]")
    return tf.constant(item[..., :3])
