"""The model behind the server: uploaded bytes in, the answers predict.py and the SavedModel
give out.

An upload is checked as predict.py checks a file (`folders.inspect_bytes`: not an image, a
truncated one, an unsupported format; and a pixel limit against decompression bombs), decoded by
the function training and the SavedModel's bytes signature use (`pipeline.decode_and_resize`)
and run by the runner predict.py would pick, in batches with the other requests waiting
(batcher.py: `max_concurrent` batches at once, up to `max_batch` images each; how many may wait
is admission.py's). Nothing uploaded is written anywhere unless `keep_uploads` names a folder
(then under a name made from its content, never one the client chose; a write that fails is
logged and never fails the prediction).
"""

import dataclasses
import hashlib
import io as bytes_io
import logging
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from skin_keras.core import atomic
from skin_keras.core.errors import UserError
from skin_keras.data import folders, pipeline
from skin_keras.data.patient_metadata import MISSING, Record
from skin_keras.infer import gradcam, outputs
from skin_keras.infer.predict import prediction_rows
from skin_keras.infer.runner import Runner, explainable
from skin_keras.model import io
from skin_keras.serve import batcher

_log = logging.getLogger(__name__)

# Larger than any dermoscopy image (ISIC's largest are 6,000 x 4,000 = 24 Mpx); a small file
# that unpacks to more is refused before it is decoded.
MAX_PIXELS = 64_000_000
OVERLAY_SIDE = 512  # Grad-CAM overlays are sent at most this wide or high.
MAX_INSTANCES = 1024  # Images in one request (decoded max_batch at a time).


class RequestError(Exception):
    """A request the server refuses: an HTTP status (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Upload:
    """One image sent to the server; `name` is only shown (the CSV's path column)."""

    contents: bytes
    record: Record = MISSING
    name: str = ""


class ModelService:
    """A loaded model and the server's rules for running it."""

    def __init__(self, loaded: Runner, runner: Runner, max_concurrent: int = 1,
                 keep_uploads: Path | None = None, max_batch: int = 8):
        """`loaded`: what load.load gave (a KerasRunner can explain); `runner`: the backend
        that predicts (backend.select)."""
        self.loaded, self.runner = loaded, runner
        self.keep_uploads, self.max_batch = keep_uploads, max_batch
        # A runner that is not thread-safe (LiteRT's interpreter) runs one batch at a time.
        self._batcher = batcher.Batcher(self._run, max_concurrent if runner.thread_safe else 1,
                                        max_batch)
        self._explaining = threading.Lock()  # Grad-CAM: one at a time, beside the batches.
        size = runner.img_size
        self._decode = tf.function(lambda contents: pipeline.decode_and_resize(contents, size),
                                   input_signature=[tf.TensorSpec([], tf.string)])

    @property
    def takes_metadata(self) -> bool:
        return io.METADATA in self.runner.inputs

    @property
    def can_explain(self) -> bool:
        try:
            explainable(self.loaded)
        except UserError:
            return False
        return True

    # --- Checking and decoding ---

    def check(self, uploads: list[Upload]) -> None:
        """RequestError naming the first upload that is not an image predict.py would read,
        or that unpacks to more than MAX_PIXELS (read from its header, before decoding)."""
        for index, upload in enumerate(uploads):
            dimensions, reason = folders.inspect_bytes(upload.contents)
            if reason is None and dimensions[0] * dimensions[1] > MAX_PIXELS:
                raise RequestError(413, f"{_which(upload, index, len(uploads))}: "
                                   f"{dimensions[0]} x {dimensions[1]} pixels is more than the "
                                   f"server decodes ({MAX_PIXELS / 1e6:g} Mpx)")
            if reason is not None:
                raise RequestError(400, f"{_which(upload, index, len(uploads))}: {reason}")

    def _decoded(self, uploads: list[Upload], rows: range) -> np.ndarray:
        decoded = []
        for index in rows:
            try:
                decoded.append(self._decode(tf.constant(uploads[index].contents)).numpy())
            except tf.errors.OpError:
                raise RequestError(400, f"{_which(uploads[index], index, len(uploads))}: could "
                                   "not be decoded (a damaged image)") from None
        return np.stack(decoded)

    # --- Predicting ---

    def answer(self, items: list[Upload] | np.ndarray,
               records: list[Record] | None) -> dict[str, np.ndarray]:
        """The runner's outputs for uploads (all checked first, then kept where asked) or for
        images [B, H, W, 3]; decoded and run `max_batch` at a time, so that a request of many
        images never holds more than that many decoded. Records None: metadata missing."""
        if len(items) > MAX_INSTANCES:
            raise RequestError(413, f"{len(items)} images in one request: send at most "
                               f"{MAX_INSTANCES} per request")
        uploaded = not isinstance(items, np.ndarray)
        if uploaded:
            self.check(items)
            self._keep(items)
        parts = []
        for start in range(0, len(items), self.max_batch):
            rows = range(start, min(start + self.max_batch, len(items)))
            images = self._decoded(items, rows) if uploaded else items[start:rows.stop]
            parts.append(self.run(images, None if records is None else records[start:rows.stop]))
        results = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        if not all(np.isfinite(values).all() for values in results.values()):
            raise RequestError(422, "the model produced NaN (the model is broken, not the "
                               "image)")
        return results

    def run(self, images: np.ndarray, records: list[Record] | None) -> dict[str, np.ndarray]:
        """The runner's outputs for `images`, run in a batch with the other requests waiting."""
        return self._batcher(images, records)

    def _run(self, images: np.ndarray, records: list[Record] | None) -> dict[str, np.ndarray]:
        batch = {io.IMAGE: images}
        if self.takes_metadata and records is not None:
            batch[io.RECORDS] = records
        return self.runner(batch)

    def predict(self, uploads: list[Upload]) -> list[dict]:
        """predict.py's rows (predictions.csv's) for `uploads`."""
        records = [upload.record for upload in uploads]
        results = self.answer(uploads, records)
        inputs = {io.RECORDS: records} if self.takes_metadata else None
        return prediction_rows([upload.name for upload in uploads], results,
                               [None] * len(uploads), self.runner, 0, inputs)

    def explain(self, upload: Upload) -> bytes:
        """A PNG of the image with the Grad-CAM map of its predicted class over it."""
        model = explainable(self.loaded)
        self.check([upload])
        image = self._decoded([upload], range(1))
        with self._explaining:
            heat_maps, _ = gradcam.grad_cam(
                model, image, records=[upload.record] if self.takes_metadata else None)
        picture = Image.fromarray(pipeline.decode_rgb(upload.contents))
        picture.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
        buffer = bytes_io.BytesIO()
        gradcam.overlay(picture, heat_maps[0]).save(buffer, "PNG")
        return buffer.getvalue()

    def csv_header(self) -> list[str]:
        return outputs.csv_header(self.runner.class_names, 0, self.runner.inputs,
                                  self.runner.outputs)

    def _keep(self, uploads: list[Upload]) -> None:
        if self.keep_uploads is None:
            return
        for upload in uploads:
            with Image.open(bytes_io.BytesIO(upload.contents)) as image:
                suffix = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp"}[
                    image.format]
            target = self.keep_uploads / (
                hashlib.sha256(upload.contents).hexdigest()[:32] + suffix)
            try:
                if not target.exists():
                    atomic.write_atomic(target,
                                        lambda tmp, c=upload.contents: Path(tmp).write_bytes(c))
            except OSError as error:  # A side feature: the prediction goes on.
                _log.warning(f"--keep_uploads: cannot write {target.name} "
                             f"({error.strerror or error})")


def _which(upload: Upload, index: int, count: int) -> str:
    if upload.name:
        return upload.name
    return "the image" if count == 1 else f"instance {index}"
