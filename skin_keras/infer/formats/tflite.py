"""The TFLite format, in four kinds: fp32, fp16, dynamic (int8 weights) and int8 (full integer,
uint8 input, calibrated).

    <output>/tflite_<kind>/<name>_<kind>.tflite + labels.txt + metadata.json
        TFLite Metadata embedded (tflite_metadata.py: what MediaPipe Tasks' ImageClassifier
        reads; labels.txt and metadata.json packed inside too); a metadata model's file takes
        the encoded vector as a second input, "metadata" [1, size]

Converted from the model traced once (tracing.py) with a fixed [1, H, W, 3] float32 input, to
TFLite built-in ops only (no Flex ops, which would need the 10+ MB select-TF-ops library on the
phone); run with LiteRT (`TFLiteRunner`, any batch). `--backend=tflite` and `tflite_int8` run
cached copies of the fp32 and int8 kinds.
"""

import os
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skin_keras.core import console
from skin_keras.core.errors import UserError
from skin_keras.infer.formats import about, base, tflite_metadata, tracing
from skin_keras.infer.runner import About, KerasRunner, Runner, check_image_classifier
from skin_keras.model import io

KINDS = ("fp32", "fp16", "dynamic", "int8")


class TFLiteRunner(Runner):
    """Runs a .tflite classifier (input [B, H, W, 3], and [B, size] encoded metadata for a
    metadata model; outputs the probabilities [B, classes] and, for a model with an unknown
    rule, its score [B]) with LiteRT (XNNPACK on CPUs).

    Calls of at most `chunk` images, which XNNPACK runs faster than larger ones. A model whose
    graph cannot take another batch size (XNNPACK fails to reshape some small-input models:
    a 1x1 last feature map folds the pooling into a fixed-shape reshape) runs one image at a
    time instead. `about` may be None for a file not yet described (load.py fills it in).
    """

    chunk = 8
    thread_safe = False  # One interpreter: its tensors are resized and filled per call.

    def __init__(self, model_content: bytes, about: About | None = None):
        from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top

        with console.quiet_native_stderr():  # "Created TensorFlow Lite XNNPACK delegate"
            self.interpreter = Interpreter(model_content=model_content,
                                           num_threads=os.cpu_count())
            self.interpreter.allocate_tensors()
        self._find_inputs()
        outputs = self.interpreter.get_output_details()
        probabilities = next((d for d in outputs if len(d["shape"]) == 2), None)
        check_image_classifier(
            [int(n) for n in self.input_details[io.IMAGE]["shape"]] if (
                io.IMAGE in self.input_details) else None,
            None if probabilities is None else [int(n) for n in probabilities["shape"]])
        self.output_details = {io.PROBABILITIES: probabilities}
        # A model with an unknown rule has a second output: its score per image.
        score = next((d for d in outputs if len(d["shape"]) == 1), None)
        if score is not None:
            self.output_details[io.UNKNOWN_SCORE] = score
        self.classes = int(self.output_details[io.PROBABILITIES]["shape"][1])
        self.batch_one_only = False
        super().__init__(about or About([], int(self.input_details[io.IMAGE]["shape"][1]), Path()),
                         tuple(self.input_details), tuple(self.output_details))

    def _find_inputs(self) -> None:
        details = self.interpreter.get_input_details()
        image = next((d for d in details if len(d["shape"]) == 4), None)
        self.input_details = {} if image is None else {io.IMAGE: image}
        metadata = next((d for d in details if len(d["shape"]) == 2), None)
        if metadata is not None:
            self.input_details[io.METADATA] = metadata

    @property
    def metadata_size(self) -> int | None:
        """Length of the metadata vector a metadata model takes; None for image-only models."""
        detail = self.input_details.get(io.METADATA)
        return None if detail is None else int(detail["shape"][1])

    def _run(self, feed: dict) -> dict:
        batch = len(feed[io.IMAGE])
        if batch != self.input_details[io.IMAGE]["shape"][0] and (
                self.batch_one_only or not self._resize(batch)):
            answers = [self._run({name: value[i:i + 1] for name, value in feed.items()})
                       for i in range(batch)]
            return {name: np.concatenate([answer[name] for answer in answers])
                    for name in self.outputs}
        # Converted to the input types once, here: a file that runs one image at a time went
        # through the split above, and its metadata was scaled twice when this came first.
        feed = dict(feed)
        if self.input_details[io.IMAGE]["dtype"] == np.uint8:  # Full-integer: pixels as-is.
            feed[io.IMAGE] = np.clip(np.round(feed[io.IMAGE]), 0, 255)
        if io.METADATA in feed:
            feed[io.METADATA] = _quantize(np.asarray(feed[io.METADATA], np.float32),
                                          self.input_details[io.METADATA])
        for name, value in feed.items():
            detail = self.input_details[name]
            self.interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(detail["index"]).astype(np.float32)
                for name, detail in self.output_details.items()}

    def _set_batch(self, batch: int) -> None:
        for detail in self.input_details.values():
            self.interpreter.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
        self.interpreter.allocate_tensors()

    def _resize(self, batch: int) -> bool:
        try:
            self._set_batch(batch)
            resized = True
        except RuntimeError:
            self._set_batch(1)
            self.batch_one_only, resized = True, False
        self._find_inputs()
        return resized

    def op_names(self) -> set[str]:
        return {op["op_name"] for op in self.interpreter._get_ops_details()}  # pylint: disable=protected-access


def _quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float values as an integer input takes them (its scale and zero point)."""
    if detail["dtype"] == np.float32:
        return values
    scale, zero_point = detail["quantization"]
    limits = np.iinfo(detail["dtype"])
    return np.clip(np.round(values / scale + zero_point), limits.min, limits.max)


def to_tflite(model: keras.Model, kind: str, source: str | None = None,
              calibration: dict[str, np.ndarray] | None = None) -> bytes:
    """A TFLite flatbuffer with a fixed [1, H, W, 3] input (uint8 for int8, else float32),
    TFLite built-in ops only.

    `source` is a folder written by `tracing.traced_source` (one is made when it is None);
    `calibration` holds the named inputs (base.Work.calibration_inputs) that set the int8
    kind's value ranges.
    """
    if source is None:
        with tempfile.TemporaryDirectory() as folder:
            return to_tflite(model, kind, tracing.traced_source(model, folder), calibration)
    converter = tf.lite.TFLiteConverter.from_saved_model(source)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if kind != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if kind == "int8":
        def representative_inputs():
            for index in range(len(calibration[io.IMAGE])):
                yield {name: values[index:index + 1] for name, values in calibration.items()}

        converter.representative_dataset = representative_inputs
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    with console.quiet_native_stderr():  # "fully_quantize: 0, inference_type: 6, ..." (int8)
        return converter.convert()


def custom_ops(model_content: bytes) -> list[str]:
    """Ops of a TFLite file outside the built-ins (Flex or custom ops), by name."""
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=g-import-not-at-top

    model = schema.ModelT.InitFromPackedBuf(model_content, 0)
    return sorted({code.customCode.decode() if isinstance(code.customCode, bytes)
                   else str(code.customCode)
                   for code in model.operatorCodes
                   if max(code.builtinCode, code.deprecatedBuiltinCode)
                   == schema.BuiltinOperator.CUSTOM})


class TFLite(base.Format):
    """One kind of TFLite file."""

    suffix = ".tflite"

    def __init__(self, kind: str):
        self.kind, self.name = kind, f"tflite_{kind}"
        self.folder = self.name
        self.title = {"fp32": "TFLite", "fp16": "float16 TFLite",
                      "dynamic": "dynamic-range TFLite", "int8": "int8 TFLite"}[kind]
        self.backend = {"fp32": "tflite", "int8": "tflite_int8"}.get(kind)
        self.calibrated = kind == "int8"
        self.min_agreement = None if self.calibrated else base.MIN_TOP1_AGREEMENT
        self.input_dtype = "uint8" if self.calibrated else "float32"

    def file_name(self, name: str) -> str:
        return f"{name}_{self.kind}.tflite"

    def convert(self, runner: KerasRunner, work: base.Work) -> bytes:
        source = work.scratch / "traced"  # Traced once, converted to every kind.
        if not source.exists():
            tracing.traced_source(runner.model, str(source))
        content = to_tflite(runner.model, self.kind, str(source),
                            work.calibration_inputs(runner) if self.calibrated else None)
        if custom_ops(content):
            raise base.ExportError(f"{self.name} needs ops that are not TFLite built-ins: "
                                   f"{', '.join(custom_ops(content))}")
        return content

    def embed(self, content: bytes, description: dict, runner: KerasRunner,
              target: Path) -> bytes:
        return tflite_metadata.embed(
            content, description, runner.class_names,
            name=target.name.removesuffix(f"_{self.kind}{self.suffix}"))

    def write(self, runner: KerasRunner, target: Path, work: base.Work) -> dict:
        super().write(runner, target, work)
        return {"ops": sorted(TFLiteRunner(target.read_bytes()).op_names())}

    def open(self, content: bytes, about_it: About | None) -> Runner:
        return TFLiteRunner(content, about_it)

    def load(self, path: Path) -> Runner:
        """A .tflite file: its class names, unknown rule and metadata encoding from what
        export.py packed inside it (tflite_metadata), else from the labels.txt and
        metadata.json beside it; a plain converted file without either names its classes by
        index."""
        try:
            content = path.read_bytes()
            runner = TFLiteRunner(content)
        except (OSError, ValueError, RuntimeError) as error:
            raise UserError(f"{path} is not a readable TFLite model: {error}") from error
        packed = tflite_metadata.read(content)
        runner.about = about.about_file(path, runner, packed and packed["class_names"],
                                        packed and packed["description"],
                                        f"the metadata packed in {path}" if packed else None)
        return runner

    def is_kind(self, runner: Runner) -> bool:
        full_integer = isinstance(runner, TFLiteRunner) and (
            runner.input_details[io.IMAGE]["dtype"] == np.uint8)
        return runner.source.suffix == self.suffix and (self.kind != "int8" or full_integer)


FORMATS = tuple(TFLite(kind) for kind in KINDS)
