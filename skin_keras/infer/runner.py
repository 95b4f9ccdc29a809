"""One interface for running any model: named inputs in, named outputs out (model/io.py).

    runner({"image": float32 [B, H, W, 3] in [0, 255], "records": [Record] * B})
        -> {"probabilities": [B, classes], "unknown_score": [B]}

"records" (io.RECORDS: one `data.patient_metadata.Record` per image; MISSING where nothing is
known) is given to a runner whose model takes patient metadata (`inputs` name "metadata", the
encoded vector the runner makes of them); "unknown_score" comes from a model with an unknown
rule (`unknown`). A runner knows its class names, input size and where it was loaded from. One
implementation per backend: `KerasRunner` here (any Keras model with named outputs: also the
feature and logit models calibration and --ood use); the runners of exported files are their
formats' (formats/: SavedModelRunner, TFLiteRunner, ONNXRunner).
"""

import dataclasses
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skin_keras.core.errors import UserError
from skin_keras.data.patient_metadata import MISSING
from skin_keras.model import io, parts
from skin_keras.model.layers import PatientMetadata
from skin_keras.model.layers.unknown import UnknownRule


@dataclasses.dataclass
class About:
    """What a runner knows about its model besides the computation."""

    class_names: list[str]
    img_size: int
    source: Path
    unknown: UnknownRule | None = None
    encoding: PatientMetadata | None = None  # How records become the metadata vector.


class Runner:
    """Base of the runners: the model's facts (`about`), named inputs and outputs, and the
    call. Subclasses set `inputs`/`outputs` and implement `_run(feed)`, where feed holds the
    image batch and, for a metadata model, the encoded vectors (or, for a runner that encodes
    raw values itself, the records)."""

    chunk: int | None = None  # Images per backend call (None: the whole batch at once).
    encodes_itself = False  # Takes the records as they are (a SavedModel's signature).
    temperature: float | None = None  # A calibrated Keras model's, where it can be read.
    thread_safe = True  # May be called from several threads at once (not a LiteRT interpreter).

    def __init__(self, about: About, inputs: tuple[str, ...], outputs: tuple[str, ...]):
        self.about, self.inputs, self.outputs = about, tuple(inputs), tuple(outputs)

    @property
    def class_names(self) -> list[str]:
        return self.about.class_names

    @property
    def img_size(self) -> int:
        return self.about.img_size

    @property
    def source(self) -> Path:
        return self.about.source

    @property
    def unknown(self) -> UnknownRule | None:
        return self.about.unknown

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        if io.METADATA in batch:  # Never dropped in silence: the rows would run as missing.
            raise ValueError(f"a runner takes patient records as {io.RECORDS!r}, not "
                             f"{io.METADATA!r} (the model's encoded input, which it makes)")
        feed = {io.IMAGE: np.asarray(batch[io.IMAGE], np.float32)}
        if io.METADATA in self.inputs:  # Not given: nothing known of any image.
            records = batch.get(io.RECORDS) or [MISSING] * len(feed[io.IMAGE])
            feed[io.METADATA] = records if self.encodes_itself else (
                self.about.encoding.encode_records(records))
        size = self.chunk or max(len(feed[io.IMAGE]), 1)
        answers = [self._run({name: value[start:start + size] for name, value in feed.items()})
                   for start in range(0, len(feed[io.IMAGE]), size)]
        return {name: np.concatenate([answer[name] for answer in answers]).astype(np.float32)
                for name in self.outputs}

    def _run(self, feed: dict) -> dict:
        raise NotImplementedError


class KerasRunner(Runner):
    """A Keras model with named inputs (any batch size, one traced graph)."""

    def __init__(self, model: keras.Model, about: About):
        model = io.named(model)
        if about.encoding is None:
            about = dataclasses.replace(about, encoding=parts.metadata_encoding_of(model))
        layer = io.unknown_layer(model)
        if about.unknown is None and layer is not None:
            about = dataclasses.replace(about, unknown=layer.rule)
        super().__init__(about, io.input_names(model), tuple(io.output_dict(model)))
        self.model = model
        self.temperature = io.temperature_of(model)
        # One traced graph for every batch (the batch dimension is left free).
        self._forward = tf.function(lambda feed: model(feed, training=False),
                                    reduce_retracing=True)

    def derived(self, model: keras.Model) -> "KerasRunner":
        """A runner of a model derived from this one's layers (parts.feature_model, ...)."""
        return KerasRunner(model, dataclasses.replace(self.about, unknown=None))

    def _run(self, feed: dict) -> dict:
        answer = self._forward({name: tf.constant(value) for name, value in feed.items()
                                if name in self.inputs})
        return {name: answer[name].numpy() for name in self.outputs}


def check_image_classifier(image_shape: list | None, output_shape: list | None) -> None:
    """ValueError unless a converted file takes images [B, H, W, 3] (NHWC, square) and answers
    [B, classes]; a channels-first [B, 3, H, W] file (PyTorch's layout) is named as such."""
    if image_shape is None or output_shape is None:
        raise ValueError("not an image classifier: it needs an input [B, H, W, 3] and an "
                         "output [B, classes]")
    if image_shape[1] == 3 and image_shape[3] != 3:
        raise ValueError(f"not an NHWC image classifier: its image input is {image_shape} "
                         "(channels first, PyTorch's layout); it needs [B, H, W, 3]")
    if image_shape[3] != 3 or not isinstance(image_shape[1], int) or (
            image_shape[1] != image_shape[2]):
        raise ValueError(f"not an image classifier this project can feed: its image input is "
                         f"{image_shape}; it needs [B, size, size, 3]")


def keras_model(runner: Runner, what: str) -> keras.Model:
    """The Keras model behind `runner`; UserError naming `what` needs it for other runners."""
    if not isinstance(runner, KerasRunner):
        raise UserError(f"{what} needs the Keras model: pass the run folder or .keras file "
                        f"that {runner.source} was exported from")
    return runner.model


def explainable(runner: Runner) -> keras.Model:
    """The Keras model of one classifier, which Grad-CAM can explain (not an ensemble)."""
    model = keras_model(runner, "Grad-CAM (--explain)")
    if parts.ensemble_members(model):
        raise UserError(f"{runner.source} is an ensemble: Grad-CAM (--explain) explains one "
                        "model; pass one member (the run's fold_i folder)")
    return model
