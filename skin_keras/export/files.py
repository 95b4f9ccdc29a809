"""The phone and ONNX files: what each takes and answers (metadata.json, also packed inside),
the labels beside it, and their parity rows.

    <output>/tflite_<kind>/<name>_<kind>.tflite + labels.txt + metadata.json
        TFLite Metadata embedded (infer/tflite_metadata.py: what MediaPipe Tasks'
        ImageClassifier reads; labels.txt and metadata.json packed inside too); kind: fp32,
        fp16, dynamic (int8 weights) or int8 (full integer, uint8 input); a metadata model's
        file takes the encoded vector as a second input, "metadata" [1, size]
    <output>/onnx/<name>.onnx + labels.txt + metadata.json
        input "image" [B, H, W, 3] float32 in [0, 255] (and "metadata"), outputs
        "probabilities" (and "unknown_score"); class names and the description in its
        metadata properties; its parity row is run with ONNX Runtime

TFLite files may contain TFLite built-in ops only (no Flex ops, which would need the 10+ MB
select-TF-ops library on the phone).
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

from skin_keras.core import atomic
from skin_keras.core.errors import UserError, first_line
from skin_keras.export import parity
from skin_keras.infer import litert, onnx_runtime, tflite_metadata
from skin_keras.infer.runner import KerasRunner
from skin_keras.model import io
from skin_keras.model.record import ModelInfo


class ExportError(UserError):
    """An exported artifact is unusable (Flex ops, or answers that differ from the model's)."""


def describe_file(runner: KerasRunner, fmt: str, file_name: str, input_dtype: str) -> dict:
    """What a phone or ONNX file takes and answers (metadata.json, and packed in the file)."""
    info, size = ModelInfo.of(runner.model, runner.class_names), runner.img_size
    batch = 1 if fmt.startswith("tflite") else "any"
    unknown = runner.unknown
    return {
        "model": info.architecture,
        "format": fmt,
        "file": file_name,
        "input": {"shape": [batch, size, size, 3], "dtype": input_dtype, **info.input},
        "preprocessing inside the model": info.preprocessing,
        **({} if info.metadata is None else {"metadata input": {
            "name": io.METADATA, "shape": [batch, info.metadata["vector size"]],
            "dtype": "float32 (quantized like the image input in int8 files)",
            **info.metadata}}),
        "output": {"shape": [batch, len(runner.class_names)], "dtype": "float32",
                   "meaning": "class probabilities, in the order of labels.txt"},
        **({} if unknown is None else {
            "unknown": unknown.to_dict(),
            "score output": {"shape": [batch], "dtype": "float32", "meaning": (
                f"out-of-distribution score ({unknown.score}): the image is none of "
                f"the classes when it is below the threshold")}}),
        "class_names": runner.class_names,
        "source": str(runner.source),
    }


def _write(runner: KerasRunner, path: Path, content: bytes, description: dict) -> None:
    """The file, and labels.txt and metadata.json beside it for runtimes that do not read what
    is inside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_atomic(path, lambda tmp: Path(tmp).write_bytes(content))
    atomic.write_text_atomic(path.parent / "labels.txt", "\n".join(runner.class_names) + "\n")
    atomic.write_json_atomic(path.parent / "metadata.json", description)


def _checked(runner: KerasRunner, copy, path: Path, batch: dict, reference: dict,
             labels: np.ndarray) -> dict:
    """The parity row of a written file, run as shipped by `copy` (its runner)."""
    answer, latency = parity.timed_runner(copy, batch)
    return {"path": str(path), "file size bytes": path.stat().st_size,
            "mean latency ms": 1000 * latency,
            **parity.agreement(reference, answer, labels, runner.unknown)}


def export_tflite(runner: KerasRunner, kind: str, content: bytes, folder: Path, name: str,
                  batch: dict, reference: dict, labels: np.ndarray) -> dict:
    """<folder>/<name>_<kind>.tflite (converted `content`, metadata embedded) and its row."""
    if litert.custom_ops(content):
        raise ExportError(f"tflite_{kind} needs ops that are not TFLite built-ins: "
                          f"{', '.join(litert.custom_ops(content))}")
    path = folder / f"{name}_{kind}.tflite"
    description = describe_file(runner, f"tflite_{kind}", path.name,
                                "uint8" if kind == "int8" else "float32")
    _write(runner, path, tflite_metadata.embed(
        content, description, runner.class_names, name=name, scores=runner.unknown is not None,
        takes_metadata=io.METADATA in runner.inputs), description)
    copy = litert.TFLiteRunner(path.read_bytes(), runner.about)  # Checked as shipped.
    return {**_checked(runner, copy, path, batch, reference, labels),
            "ops": sorted(copy.op_names())}


def float_onnx(runner: KerasRunner, scratch: Path) -> bytes:
    """The model converted to ONNX with tf2onnx, once per export (kept in `scratch`): onnx and
    onnx_int8 start from it."""
    path = scratch / "model.onnx"
    if not path.exists():
        try:
            path.write_bytes(onnx_runtime.convert(runner.model))
        except (ValueError, RuntimeError, KeyError, TypeError, tf.errors.OpError) as error:
            raise ExportError(f"onnx: tf2onnx could not convert {runner.source}: "
                              f"{first_line(error)}") from None
    return path.read_bytes()


def export_onnx(runner: KerasRunner, folder: Path, name: str, content: bytes, batch: dict,
                reference: dict, labels: np.ndarray, calibration: dict | None = None) -> dict:
    """<folder>/<name>.onnx (`content`, float_onnx's) or, with `calibration` inputs,
    <folder>/<name>_int8.onnx (onnx_runtime.quantize: int8 convolutions),
    described in its properties, and its row."""
    fmt = "onnx" if calibration is None else "onnx_int8"
    path = folder / f"{name}{'' if calibration is None else '_int8'}.onnx"
    entry = {"runtime": "onnxruntime"}
    if calibration is not None:
        content = onnx_runtime.quantize(content, calibration)
        entry["calibration images"] = onnx_runtime.calibrated_count(len(calibration[io.IMAGE]))
    description = describe_file(runner, fmt, path.name, "float32")
    _write(runner, path, onnx_runtime.described(content, description), description)
    copy = onnx_runtime.ONNXRunner(path.read_bytes(), runner.about)  # Checked as shipped.
    return {**_checked(runner, copy, path, batch, reference, labels), **entry}
