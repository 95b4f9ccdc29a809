"""TFLite: converting a Keras model, checking the ops, and running a file with LiteRT.

Used by export (the phone files and their parity report) and by inference (the cached float32
copy `--backend=tflite` runs). The converter reads a SavedModel traced once with a fixed
[1, H, W, 3] float32 input; `TFLiteRunner` takes any batch.
"""

import os
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skin_keras.core import console
from skin_keras.data import pipeline
from skin_keras.infer.runner import About, Runner, check_image_classifier
from skin_keras.model import io, parts

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
        feed = dict(feed)
        if self.input_details[io.IMAGE]["dtype"] == np.uint8:  # Full-integer: pixels as-is.
            feed[io.IMAGE] = np.clip(np.round(feed[io.IMAGE]), 0, 255)
        if io.METADATA in feed:
            feed[io.METADATA] = _quantize(np.asarray(feed[io.METADATA], np.float32),
                                          self.input_details[io.METADATA])
        batch = len(feed[io.IMAGE])
        if batch != self.input_details[io.IMAGE]["shape"][0] and (
                self.batch_one_only or not self._resize(batch)):
            answers = [self._run({name: value[i:i + 1] for name, value in feed.items()})
                       for i in range(batch)]
            return {name: np.concatenate([answer[name] for answer in answers])
                    for name in self.outputs}
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


SOURCE_SIGNATURE = "serving_default"  # The converted TFLite file's one signature is named so.


def traced_source(model: keras.Model, folder: str, batch: int | None = 1) -> str:
    """Writes `model` with its named inputs, "image" [batch, H, W, 3] float32 (and "metadata"
    [batch, size] for a metadata model), and its named outputs as a SavedModel for the TFLite
    or ONNX converter (tracing it once serves every kind of conversion); returns `folder`.
    TFLite takes batch 1; None leaves the batch free (ONNX)."""
    model = io.named(model)
    specs = {name: tf.TensorSpec([batch, *tensor.shape[1:]], tf.float32, name=name)
             for name, tensor in io.input_dict(model).items()}
    serve = tf.function(lambda named: model(named, training=False), input_signature=[specs])
    save_signatures({SOURCE_SIGNATURE: serve}, folder)
    return folder


def save_signatures(signatures: dict, folder: str | Path, endpoints: bool = False) -> None:
    """Writes a SavedModel of `signatures` (name: a tf.function with an input signature) and
    the variables they capture, for inference only: each function traced once, no gradients of
    ops with custom gradients (nothing that serves or converts it differentiates). Three times
    faster than Keras' ExportArchive, which retraces every endpoint (docs/benchmarks.md). The
    captured tf.Variables are kept, not their Keras wrappers: only then do the converters
    freeze them into constants. `endpoints`: each signature is also a method of the loaded
    object, as ExportArchive made it (`tf.saved_model.load(path).serving_images(...)`)."""
    concrete = {name: function.get_concrete_function() for name, function in signatures.items()}
    holder = tf.Module()
    for name, function in signatures.items() if endpoints else ():
        setattr(holder, name, function)
    holder.captured_variables = list({id(variable): variable for function in concrete.values()
                                      for variable in function.variables}.values())
    tf.saved_model.save(holder, str(folder), signatures=concrete,
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))


def convert(model: keras.Model, kind: str, calibration_paths: list[str] = (),
            source: str | None = None, calibration_metadata: np.ndarray | None = None) -> bytes:
    """A TFLite flatbuffer with a fixed [1, H, W, 3] input (uint8 for int8, else float32),
    TFLite built-in ops only.

    `source` is a folder written by `traced_source` (one is made when it is None);
    `calibration_paths` are images for the int8 kind's value ranges (with
    `calibration_metadata`, their encoded metadata, for a metadata model).
    """
    if source is None:
        with tempfile.TemporaryDirectory() as folder:
            return convert(model, kind, calibration_paths, traced_source(model, folder),
                           calibration_metadata)
    converter = tf.lite.TFLiteConverter.from_saved_model(source)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if kind != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if kind == "int8":
        size = parts.image_size(model)
        encoding = parts.metadata_encoding_of(model)
        if encoding is not None and calibration_metadata is None:  # Every value occurs.
            calibration_metadata = encoding.encode_records(
                encoding.varied_records(len(calibration_paths)))

        def representative_images():
            for index, path in enumerate(calibration_paths):
                named = {io.IMAGE: pipeline.load_image(tf.constant(path), size)[None]}
                if encoding is not None:
                    named[io.METADATA] = calibration_metadata[index:index + 1]
                yield named

        converter.representative_dataset = representative_images
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
