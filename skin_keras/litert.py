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

from skin_keras import atomic, cache, console, input_pipeline, models

KINDS = ("fp32", "fp16", "dynamic", "int8")


class TFLiteRunner:
    """Runs a .tflite classifier (input [B, H, W, 3], and [B, size] encoded metadata for a
    metadata model) with LiteRT (XNNPACK on CPUs).

    Calls of at most CHUNK images, which XNNPACK runs faster than larger ones. A model whose
    graph cannot take another batch size (XNNPACK fails to reshape some small-input models:
    a 1x1 last feature map folds the pooling into a fixed-shape reshape) runs one image at a
    time instead.
    """

    CHUNK = 8

    def __init__(self, model_content: bytes):
        from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top

        with console.quiet_native_stderr():  # "Created TensorFlow Lite XNNPACK delegate"
            self.interpreter = Interpreter(model_content=model_content,
                                           num_threads=os.cpu_count())
            self.interpreter.allocate_tensors()
        self._find_inputs()
        outputs = self.interpreter.get_output_details()
        self.output = next(d for d in outputs if len(d["shape"]) == 2)
        # A model with an unknown rule (open_set) has a second output: its score per image.
        self.score_output = next((d for d in outputs if len(d["shape"]) == 1), None)
        self.img_size = int(self.input["shape"][1])
        self.batch_one_only = False

    def _find_inputs(self) -> None:
        details = self.interpreter.get_input_details()
        self.input = next(d for d in details if len(d["shape"]) == 4)
        self.metadata_input = next((d for d in details if len(d["shape"]) == 2), None)

    @property
    def scores(self) -> bool:
        """Whether calls return (probabilities, out-of-distribution scores)."""
        return self.score_output is not None

    @property
    def metadata_size(self) -> int | None:
        """Length of the metadata vector a metadata model takes; None for image-only models."""
        return None if self.metadata_input is None else int(self.metadata_input["shape"][1])

    def __call__(self, images, metadata=None):
        """Probabilities of images [B, H, W, 3] in [0, 255] (with encoded metadata [B, size]
        for a metadata model; it is required there); (probabilities, scores) for a model with a
        score output."""
        images = np.asarray(images, np.float32)
        if self.input["dtype"] == np.uint8:  # Full-integer models take pixel values as-is.
            images = np.clip(np.round(images), 0, 255)
        if self.metadata_input is not None:
            if metadata is None:
                raise ValueError("this TFLite model takes encoded metadata beside the images")
            metadata = self._quantize(np.asarray(metadata, np.float32), self.metadata_input)
        answers = [self._invoke(images[start:start + self.CHUNK],
                                None if metadata is None else metadata[start:start + self.CHUNK])
                   for start in range(0, len(images), self.CHUNK)]
        probabilities = np.concatenate([answer[0] for answer in answers])
        if not self.scores:
            return probabilities
        return probabilities, np.concatenate([answer[1] for answer in answers])

    @staticmethod
    def _quantize(values: np.ndarray, detail: dict) -> np.ndarray:
        """Float values as an integer input takes them (its scale and zero point)."""
        if detail["dtype"] == np.float32:
            return values
        scale, zero_point = detail["quantization"]
        limits = np.iinfo(detail["dtype"])
        return np.clip(np.round(values / scale + zero_point), limits.min, limits.max)

    def _set_batch(self, batch: int) -> None:
        for detail in (self.input, self.metadata_input):
            if detail is not None:
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

    def _invoke(self, images: np.ndarray, metadata: np.ndarray | None) -> tuple:
        """(probabilities, scores or None) of one chunk."""
        batch = images.shape[0]
        if batch != self.input["shape"][0] and (self.batch_one_only or not self._resize(batch)):
            answers = [self._invoke(image[None], None if metadata is None else metadata[i:i + 1])
                       for i, image in enumerate(images)]
            return (np.concatenate([answer[0] for answer in answers]),
                    None if not self.scores else np.concatenate([a[1] for a in answers]))
        self.interpreter.set_tensor(self.input["index"], images.astype(self.input["dtype"]))
        if self.metadata_input is not None:
            self.interpreter.set_tensor(self.metadata_input["index"],
                                        metadata.astype(self.metadata_input["dtype"]))
        self.interpreter.invoke()
        return (self.interpreter.get_tensor(self.output["index"]).astype(np.float32),
                None if not self.scores else
                self.interpreter.get_tensor(self.score_output["index"]).astype(np.float32))

    def op_names(self) -> set[str]:
        return {op["op_name"] for op in self.interpreter._get_ops_details()}  # pylint: disable=protected-access


def traced_source(model: keras.Model, folder: str, batch: int | None = 1,
                  named_outputs: bool = False) -> str:
    """Writes `model` with a [batch, H, W, 3] float32 input "image" (and [batch, size] encoded
    "metadata" for a metadata model) as a SavedModel for the TFLite or ONNX converter (tracing
    it once serves every kind of conversion); returns `folder`. TFLite takes batch 1;
    `named_outputs` answers {"probabilities", "unknown_score"} in place of a list."""
    size = models.image_size(model)
    encoding = models.metadata_encoding_of(model)
    scored = models.scored_model(model)  # Probabilities and a score, if it has a rule.
    model = scored or model

    def call(*inputs):
        answer = model(inputs[0] if encoding is None else list(inputs), training=False)
        if not named_outputs:
            return answer
        return dict(zip(("probabilities", "unknown_score"), answer if scored else [answer]))

    archive = keras.export.ExportArchive()
    archive.track(model)
    specs = [tf.TensorSpec([batch, size, size, 3], tf.float32, name="image")]
    if encoding is not None:
        specs.append(tf.TensorSpec([batch, encoding.size], tf.float32, name="metadata"))
    archive.add_endpoint("serve", call, input_signature=specs)
    archive.write_out(folder, verbose=False)
    return folder


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
        size = models.image_size(model)
        encoding = models.metadata_encoding_of(model)
        if encoding is not None and calibration_metadata is None:
            calibration_metadata = np.repeat(encoding.missing_vector()[None],
                                             len(calibration_paths), axis=0)

        def representative_images():
            for index, path in enumerate(calibration_paths):
                image = input_pipeline.load_image(tf.constant(path), size)[None]
                if encoding is None:
                    yield [image]
                else:
                    yield {"image": image, "metadata": calibration_metadata[index:index + 1]}

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


def cached_copy(keras_file: Path, model: keras.Model, convert_if_missing: bool = True,
                digest: str | None = None) -> TFLiteRunner | None:
    """A runner for a float32 TFLite copy of a .keras file, converted once per file content and
    kept in <cache>/tflite; None when not cached and `convert_if_missing` is False. `digest`:
    the file's SHA-1 when the caller has it.

    The conversion runs in this process: for EfficientNetV2-S it peaks at about twice the
    memory of prediction, once.
    """
    path = cache.cache_root() / "tflite" / f"{digest or cache.file_sha1(keras_file)}.tflite"
    if not path.exists():
        if not convert_if_missing:
            return None
        print(f"converting {keras_file} to TFLite (once; cached in {path.parent})")
        content = convert(model, "fp32")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_atomic(path, lambda tmp: Path(tmp).write_bytes(content))
    return TFLiteRunner(path.read_bytes())
