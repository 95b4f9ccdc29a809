"""Loading any model skin_keras writes, with what is needed to feed it and read its output.

`load(path)` gives a runner (runner.py) for any model path: a run folder (weights/best.keras), a
`.keras` file (its class names in its own record, model/record.py; files written before the
record existed use the class_indices.json of their run folder), or what export.py wrote: a
SavedModel folder (or its TF Serving base folder) or a `.tflite` or `.onnx` file (class names
inside it, or in the labels.txt beside it). The image size comes from the model itself: nothing
the user must repeat on the command line.
"""

import json
import logging
from pathlib import Path

import keras
import tensorflow as tf

from skin_keras.core.errors import UserError, first_line
from skin_keras.infer import tflite_metadata
from skin_keras.infer.litert import TFLiteRunner
from skin_keras.infer.runner import About, KerasRunner, Runner, SavedModelRunner
from skin_keras.model import io, parts, record
from skin_keras.model.layers import PatientMetadata
from skin_keras.model.layers.unknown import RULE_FILE, UnknownRule
from skin_keras.train import run_folder

_log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"  # A SavedModel's assets: how it encodes patient metadata.


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"no {path.name} at {path.parent}: the class names are unknown")
    return check_labels([line for line in path.read_text().splitlines() if line], path)


def check_labels(class_names: list[str], where) -> list[str]:
    """`class_names`, or a UserError when one is named twice (its columns could not be told
    apart)."""
    twice = sorted({name for name in class_names if class_names.count(name) > 1})
    if twice:
        raise UserError(f"{where} names the class(es) {', '.join(twice)} twice: each class "
                        "needs its own name")
    return list(class_names)


def find_saved_model(folder: Path) -> Path | None:
    """The SavedModel in `folder`: the folder itself, or its highest TF Serving version."""
    if (folder / "saved_model.pb").is_file():
        return folder
    versions = sorted((int(p.name) for p in folder.iterdir()
                       if p.name.isdigit() and (p / "saved_model.pb").is_file()), reverse=True)
    return folder / str(versions[0]) if versions else None


def _load_saved_model(folder: Path) -> SavedModelRunner:
    try:
        served = tf.saved_model.load(str(folder))
    except (ValueError, OSError, tf.errors.OpError) as error:
        raise UserError(f"{folder} could not be loaded as a SavedModel: "
                        f"{first_line(error)}") from error
    if "serving_images" not in served.signatures:
        raise UserError(f"{folder} is a SavedModel without the serving_images signature that "
                        "export.py writes")
    signature = served.signatures["serving_images"]
    images = signature.structured_input_signature[1]["images"]
    labels = folder / "assets" / "labels.txt"
    class_names = read_labels(labels)
    classes = signature.structured_outputs["probabilities"].shape[-1]
    if classes != len(class_names):
        raise UserError(f"{folder} answers {classes} classes but {labels} names "
                        f"{len(class_names)}: the files do not belong together")
    encoding = None
    if (description := folder / "assets" / METADATA_FILE).is_file():
        try:
            encoding = _metadata_encoding(json.loads(description.read_text()), None)
        except (OSError, ValueError) as error:
            raise UserError(f"{description}: {error}") from None
    return SavedModelRunner(served, About(
        class_names, int(images.shape[1]), folder,
        unknown=read_unknown_rule(folder / "assets" / RULE_FILE), encoding=encoding))


def read_unknown_rule(path: Path) -> UnknownRule | None:
    """The unknown rule an export wrote beside the model (None when there is none)."""
    if not path.is_file():
        return None
    try:
        return _unknown_rule(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise UserError(f"{path} does not describe an unknown rule ({type(error).__name__}: "
                        f"{error})") from None


def _unknown_rule(description: dict) -> UnknownRule | None:
    try:
        return (None if description.get("unknown") is None
                else UnknownRule.from_dict(description["unknown"]))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ValueError(f"no valid unknown rule: {type(error).__name__}: {error}") from None


def _load_tflite(path: Path) -> TFLiteRunner:
    """A .tflite file: its class names, unknown rule and metadata encoding from what export.py
    packed inside it (tflite_metadata), else from the labels.txt and metadata.json beside it;
    a plain converted file without either names its classes by index."""
    try:
        content = path.read_bytes()
        runner = TFLiteRunner(content)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"{path} is not a readable TFLite model: {error}") from error
    packed = tflite_metadata.read(content)
    runner.about = _describe_file(path, runner, packed and packed["class_names"],
                                  packed and packed["description"],
                                  f"the metadata packed in {path}" if packed else None)
    return runner


def _load_onnx(path: Path) -> Runner:
    """An .onnx file export.py wrote (class names and description in its metadata properties),
    or a plain converted one (labels.txt beside it, or classes named by index)."""
    from skin_keras.infer.onnx_runtime import ONNXRunner  # pylint: disable=g-import-not-at-top

    try:
        runner = ONNXRunner(path.read_bytes())
        description = runner.description()
    except Exception as error:  # pylint: disable=broad-except
        # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) share no base class but Exception.
        raise UserError(f"{path} is not a readable ONNX model: {first_line(error)}") from None
    runner.about = _describe_file(path, runner, description and description.get("class_names"),
                                  description,
                                  f"the metadata properties of {path}" if description else None)
    return runner


def _describe_file(path: Path, runner, class_names: list | None, description: dict | None,
                   where: str | None) -> About:
    """What a TFLite or ONNX file's runner needs to know: class names and description as found
    in the file, else from the labels.txt and metadata.json beside it."""
    beside = path.parent / "metadata.json"
    if description is None and beside.is_file():
        try:
            description = json.loads(beside.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"{beside} is not readable ({type(error).__name__}: {error})"
                            ) from None
    where = where or beside
    if class_names is None and (path.parent / "labels.txt").is_file():
        class_names = read_labels(path.parent / "labels.txt")
    elif class_names is None:
        class_names = [f"class {i}" for i in range(runner.classes)]
        _log.info(f"{path}: no labels in the file nor a labels.txt beside it: the classes are "
                  "named by their index")
    check_labels(class_names, where)
    if len(class_names) != runner.classes:
        raise UserError(f"{path} answers {runner.classes} classes but its labels name "
                        f"{len(class_names)}: the files do not belong together")
    encoding = unknown = None
    try:
        if runner.metadata_size is not None:
            encoding = _metadata_encoding(description, runner.metadata_size)
        if io.UNKNOWN_SCORE in runner.outputs and description is not None:
            unknown = _unknown_rule(description)
    except ValueError as error:
        raise UserError(f"{path}: {where} {error}; keep the metadata.json export.py wrote "
                        "beside the file") from None
    return About(list(class_names), runner.img_size, path, unknown, encoding)


def _metadata_encoding(description: dict | None, size: int | None) -> PatientMetadata:
    """The metadata encoding of a metadata TFLite or ONNX file from its description
    (metadata.json)."""
    try:
        vocabulary = description["metadata input"]["vocabulary"]
        encoding = PatientMetadata(vocabulary["sex"], vocabulary["anatom_site_general"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"does not say how to encode the patient metadata the model takes "
                         f"({type(error).__name__}: {error})") from None
    if size is not None and encoding.size != size:
        raise ValueError(f"describes a metadata vector of {encoding.size} values but the model "
                         f"takes {size}")
    return encoding


def resolve_keras_file(model_path: str | Path) -> Path:
    """The .keras file meant by a run folder or a file path; UserError when there is none."""
    path = Path(model_path)
    if path.is_dir():
        if (path / "weights" / "best.keras").is_file():
            return path / "weights" / "best.keras"
        raise UserError(f"{path} is not a run folder (no weights/best.keras) nor a SavedModel")
    if not path.exists():
        raise UserError(f"model path {path} does not exist")
    if path.suffix != ".keras":
        raise UserError(f"{path} is not a model: give a run folder, a .keras, .tflite or .onnx "
                        "file or a SavedModel folder")
    return path


def _run_class_indices(keras_file: Path) -> Path | None:
    for folder in (keras_file.parent, keras_file.parent.parent):
        if (folder / run_folder.CLASS_INDICES).is_file():
            return folder / run_folder.CLASS_INDICES
    return None


def class_names_of(keras_file: Path) -> list[str]:
    """The class names a .keras file was trained on: its own record, checked against its run
    folder's class_indices.json when both exist; the latter alone for older files."""
    try:
        info = record.read_from(keras_file)
    except ValueError as error:
        raise UserError(str(error)) from None
    indices = _run_class_indices(keras_file)
    if info is None:
        if indices is None:
            raise UserError(f"no class_indices.json beside {keras_file} or in its run folder, "
                            "and the file has no record of its classes: the class names are "
                            "unknown")
        return run_folder.read_class_indices(indices)
    if indices is not None:
        listed = run_folder.read_class_indices(indices)
        if listed != list(info.class_names):
            raise UserError(f"{keras_file} was trained on the classes {list(info.class_names)} "
                            f"but {indices} lists {listed}: which file belongs to which run?")
    return list(info.class_names)


def load(model_path: str | Path) -> Runner:
    """A runner for a run folder, a .keras file, an exported SavedModel folder, a .tflite or an
    .onnx file."""
    path = Path(model_path)
    if path.is_dir() and (saved_model := find_saved_model(path)) is not None:
        return _load_saved_model(saved_model)
    if path.is_file() and path.suffix == ".tflite":
        return _load_tflite(path)
    if path.is_file() and path.suffix == ".onnx":
        return _load_onnx(path)
    keras_file = resolve_keras_file(path)
    class_names = class_names_of(keras_file)
    try:
        model = keras.models.load_model(keras_file, compile=False)
    except (ValueError, OSError, TypeError) as error:
        raise UserError(f"{keras_file} could not be loaded as a Keras model: "
                        f"{first_line(error)}") from error
    model = io.named(model)
    classes = io.output_dict(model)[io.PROBABILITIES].shape[-1]
    if classes != len(class_names):
        raise UserError(f"{keras_file} predicts {classes} classes but its class list names "
                        f"{len(class_names)}")
    return KerasRunner(model, About(class_names, parts.image_size(model), keras_file))
