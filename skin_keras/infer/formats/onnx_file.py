"""The ONNX format, float (onnx) and int8 (onnx_int8: static QDQ quantization, calibrated).

    <output>/onnx/<name>.onnx (<name>_int8.onnx) + labels.txt + metadata.json

The file takes images [B, H, W, 3] float32 RGB in [0, 255] (any batch) as "image" (and
"metadata" [B, size] for a metadata model) and answers "probabilities" (and "unknown_score" [B]
for a model with an unknown rule); the class names and export.py's description of the model are
in the model's metadata properties ("class_names", "skin_keras"). Run with ONNX Runtime
(`ONNXRunner`); `--backend=onnx` and `onnx_int8` run cached copies.

Converted with tf2onnx from the model traced once as a SavedModel, the way its command line
converts SavedModels. Keras 3's own `model.export(format="onnx")` (also tf2onnx underneath) was
tried first: its traced function keeps constants of EfficientNetV2's Normalization layer as
graph inputs, so ONNX Runtime refuses the file ("Required inputs ... normalization/Sub/y:0 are
missing").
"""

import json
import os
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skin_keras.core.errors import UserError, first_line
from skin_keras.infer.formats import about, base, tracing
from skin_keras.infer.runner import About, KerasRunner, Runner, check_image_classifier
from skin_keras.model import io

CLASS_NAMES_KEY = "class_names"
DESCRIPTION_KEY = "skin_keras"
OPSET = 17  # ONNX Runtime 1.32 (requirements.txt) runs it; tf2onnx 1.17 would pick 15.


def to_onnx(model: keras.Model) -> bytes:
    """A serialized ONNX model of `model` (probabilities, and the unknown score if it has a
    rule)."""
    from keras.src.export.tf2onnx_lib import patch_tf2onnx  # pylint: disable=g-import-not-at-top
    patch_tf2onnx()  # tf2onnx 1.17 still refers to NumPy 1 names; Keras' own export patches them.
    import tf2onnx  # pylint: disable=g-import-not-at-top

    with tempfile.TemporaryDirectory() as folder:
        tracing.traced_source(model, folder, batch=None)
        graph_def, inputs, outputs, renames = tf2onnx.tf_loader.from_saved_model(
            folder, None, None, tag="serve", signatures=[tracing.SOURCE_SIGNATURE],
            return_tensors_to_rename=True)
    proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs,
                                              output_names=outputs, opset=OPSET,
                                              tensors_to_rename=renames)
    return proto.SerializeToString()


def described(content: bytes, description: dict) -> bytes:
    """The ONNX model with the class names and `description` as its metadata properties
    (replacing any it had)."""
    import onnx  # pylint: disable=g-import-not-at-top

    proto = onnx.load_from_string(content)
    del proto.metadata_props[:]
    for key, value in ((CLASS_NAMES_KEY, description["class_names"]),
                       (DESCRIPTION_KEY, description)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto.SerializeToString()


# Quantized to int8 (static, QDQ): the convolutions, which hold nearly all of the arithmetic,
# and EfficientNet-Lite's ReLU6 (Clip) with them. Swish, squeeze-excitation's sigmoid gates, the
# additions, the dense layers (the classifier, whose logits 8 bits would round) and the softmax
# stay in float: mixed quantization, where quantizing them would cost accuracy for little speed.
# (The classifier in float: top-1 agreement 95.5/97.25/98.0% instead of 94.75/94.5/97.25% on
# three calibration draws of EfficientNetV2, docs/benchmarks.md.) Clip must be quantized with
# the convolution it follows: the quantizer then takes the convolution's output range after
# ReLU6, [0, 6], as TFLite's fused kernels do. Left in float, each convolution's output was
# rounded over its whole pre-activation range, and the fine-tuned Lite0 agreed with float on
# 77.5% of 400 validation images (0.524 balanced accuracy against 0.759); with Clip, 96.75%
# (0.738) (2026-12-07, docs/benchmarks.md).
QUANTIZED_OPS = ("Conv", "Clip")


# Calibration runs in calls of this many inputs (the percentile calibrator needs calls of one
# size); a remainder is left out.
CALIBRATION_BATCH = 10


def calibrated_count(given: int) -> int:
    """How many of `given` calibration inputs `quantize` uses."""
    return given if given < CALIBRATION_BATCH else given // CALIBRATION_BATCH * CALIBRATION_BATCH


def quantize(content: bytes, calibration: dict[str, np.ndarray]) -> bytes:
    """An int8 copy of an ONNX model: ONNX Runtime's pre-processing (BatchNorm folded into the
    convolutions), then static QDQ quantization: int8 weights per output channel, uint8
    activations whose ranges are the 99.999th percentile of their values over `calibration`
    (the model's inputs by name, in calls of CALIBRATION_BATCH; min/max agreed less with
    float). Its metadata properties are not kept: `described` sets them."""
    from onnxruntime import quantization  # pylint: disable=g-import-not-at-top
    from onnxruntime.quantization import shape_inference  # pylint: disable=g-import-not-at-top

    count = calibrated_count(len(next(iter(calibration.values()))))
    feeds = iter([{name: values[start:start + CALIBRATION_BATCH]
                   for name, values in calibration.items()}
                  for start in range(0, count, CALIBRATION_BATCH)])

    class Reader(quantization.CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    with tempfile.TemporaryDirectory() as folder:
        source, prepared = Path(folder) / "float.onnx", Path(folder) / "prepared.onnx"
        target = Path(folder) / "int8.onnx"
        source.write_bytes(content)
        shape_inference.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantization.quantize_static(
            str(prepared), str(target), Reader(), quant_format=quantization.QuantFormat.QDQ,
            per_channel=True, activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
            calibrate_method=quantization.CalibrationMethod.Percentile)
        return target.read_bytes()


class ONNXRunner(Runner):
    """Runs an .onnx classifier with ONNX Runtime on the CPU: images [B, H, W, 3] in [0, 255]
    (and encoded metadata [B, size] for a metadata model) in; probabilities [B, classes] (and
    the unknown score [B]) out. Tensors are recognised by their rank, so a plain converted file
    with other names runs too. `about` may be None for a file not yet described (load.py)."""

    chunk = 32

    def __init__(self, model_content: bytes, about: About | None = None):
        import onnxruntime  # pylint: disable=g-import-not-at-top

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.log_severity_level = 3  # Errors only.
        # Its threads sleep between calls instead of spinning, leaving the cores to the tf.data
        # decoder and other processes; the same speed either way (docs/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(model_content, options,
                                                    providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        image = next((i for i in inputs if len(i.shape) == 4), None)
        probabilities = next((o for o in outputs if len(o.shape) == 2), None)
        check_image_classifier(image and list(image.shape),
                               probabilities and list(probabilities.shape))
        self.input_names = {io.IMAGE: image.name}
        metadata = next((i for i in inputs if len(i.shape) == 2), None)
        if metadata is not None:
            self.input_names[io.METADATA] = metadata.name
            self.metadata_size = int(metadata.shape[1])
        else:
            self.metadata_size = None
        self.output_names = {io.PROBABILITIES: probabilities.name}
        score = next((o for o in outputs if len(o.shape) == 1), None)
        if score is not None:
            self.output_names[io.UNKNOWN_SCORE] = score.name
        self.classes = probabilities.shape[1]
        self.properties = self.session.get_modelmeta().custom_metadata_map
        super().__init__(about or About([], int(image.shape[1]), Path()),
                         tuple(self.input_names), tuple(self.output_names))

    def description(self) -> dict | None:
        """export.py's description of the model from the metadata properties (None without)."""
        text = self.properties.get(DESCRIPTION_KEY)
        return None if text is None else json.loads(text)

    def _run(self, feed: dict) -> dict:
        answer = self.session.run(
            list(self.output_names.values()),
            {self.input_names[name]: np.asarray(value, np.float32) for name, value in feed.items()})
        return dict(zip(self.output_names, answer))


class ONNX(base.Format):
    """The float ONNX file."""

    name, title, suffix, folder, backend = "onnx", "ONNX", ".onnx", "onnx", "onnx"

    def convert(self, runner: KerasRunner, work: base.Work) -> bytes:
        path = work.scratch / "model.onnx"  # Once per export: onnx_int8 starts from it too.
        if not path.exists():
            try:
                path.write_bytes(to_onnx(runner.model))
            except (ValueError, RuntimeError, KeyError, TypeError, tf.errors.OpError) as error:
                raise base.ExportError(f"onnx: tf2onnx could not convert {runner.source}: "
                                       f"{first_line(error)}") from None
        return path.read_bytes()

    def embed(self, content: bytes, description: dict, runner: KerasRunner,
              target: Path) -> bytes:
        return described(content, description)

    def write(self, runner: KerasRunner, target: Path, work: base.Work) -> dict:
        return {**super().write(runner, target, work), "runtime": "onnxruntime"}

    def open(self, content: bytes, about_it: About | None) -> Runner:
        return ONNXRunner(content, about_it)

    def load(self, path: Path) -> Runner:
        """An .onnx file export.py wrote (class names and description in its metadata
        properties), or a plain converted one (labels.txt beside it, or classes named by
        index)."""
        try:
            runner = ONNXRunner(path.read_bytes())
            description = runner.description()
        except Exception as error:  # pylint: disable=broad-except
            # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) share no base class.
            raise UserError(f"{path} is not a readable ONNX model: {first_line(error)}"
                            ) from None
        runner.about = about.about_file(
            path, runner, description and description.get("class_names"), description,
            f"the metadata properties of {path}" if description else None)
        return runner


class ONNXInt8(ONNX):
    """The int8 ONNX file (`quantize`)."""

    name, title, backend = "onnx_int8", "int8 ONNX", "onnx_int8"
    calibrated, min_agreement = True, None

    def file_name(self, name: str) -> str:
        return f"{name}_int8.onnx"

    def usable(self, given: int) -> int:
        return calibrated_count(given)

    def convert(self, runner: KerasRunner, work: base.Work) -> bytes:
        return quantize(super().convert(runner, work), work.calibration_inputs(runner))

    def write(self, runner: KerasRunner, target: Path, work: base.Work) -> dict:
        return {**super().write(runner, target, work),
                "calibration images": self.usable(len(work.calibration))}

    def is_kind(self, runner: Runner) -> bool:
        return isinstance(runner, ONNXRunner) and (
            runner.description() or {}).get("format") == self.name


FORMATS = (ONNX(), ONNXInt8())
