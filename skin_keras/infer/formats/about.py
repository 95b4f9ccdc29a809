"""What an exported file says about itself: written by export (`describe`: metadata.json beside
the file, and inside it where the format allows) and read back by `load` (class names, unknown
rule, patient-metadata encoding), from the file or from what lies beside it."""

import json
import logging
from pathlib import Path

from skin_keras.core.errors import UserError
from skin_keras.infer.runner import About, KerasRunner
from skin_keras.model import io
from skin_keras.model.layers import PatientMetadata
from skin_keras.model.layers.unknown import UnknownRule
from skin_keras.model.record import ModelInfo

_log = logging.getLogger(__name__)

LABELS_FILE, DESCRIPTION_FILE = "labels.txt", "metadata.json"  # Beside an exported file.


def describe(runner: KerasRunner, fmt, file_name: str) -> dict:
    """What a phone or ONNX file of the format `fmt` (base.Format) takes and answers
    (metadata.json, also packed in the file)."""
    info, size = ModelInfo.of(runner.model, runner.class_names), runner.img_size
    batch = 1 if fmt.suffix == ".tflite" else "any"
    unknown = runner.unknown
    return {
        "model": info.architecture,
        "format": fmt.name,
        "file": file_name,
        "input": {"shape": [batch, size, size, 3], "dtype": fmt.input_dtype, **info.input},
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


def read_description(path: Path) -> dict | None:
    """The metadata.json export wrote beside `path` (None when there is none)."""
    beside = path.parent / DESCRIPTION_FILE
    if not beside.is_file():
        return None
    try:
        return json.loads(beside.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{beside} is not readable ({type(error).__name__}: {error})") from None


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


def read_unknown_rule(path: Path) -> UnknownRule | None:
    """The unknown rule an export wrote beside the model (None when there is none)."""
    if not path.is_file():
        return None
    try:
        return unknown_rule(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise UserError(f"{path} does not describe an unknown rule ({type(error).__name__}: "
                        f"{error})") from None


def unknown_rule(description: dict) -> UnknownRule | None:
    try:
        return (None if description.get("unknown") is None
                else UnknownRule.from_dict(description["unknown"]))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ValueError(f"no valid unknown rule: {type(error).__name__}: {error}") from None


def about_file(path: Path, runner, class_names: list | None, description: dict | None,
               where: str | None) -> About:
    """What a TFLite or ONNX file's runner needs to know: class names and description as found
    in the file, else from the labels.txt and metadata.json beside it."""
    beside = path.parent / DESCRIPTION_FILE
    if description is None:
        description = read_description(path)
    where = where or beside
    if class_names is None and (path.parent / LABELS_FILE).is_file():
        class_names = read_labels(path.parent / LABELS_FILE)
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
            encoding = metadata_encoding(description, runner.metadata_size)
        if io.UNKNOWN_SCORE in runner.outputs and description is not None:
            unknown = unknown_rule(description)
    except ValueError as error:
        raise UserError(f"{path}: {where} {error}; keep the metadata.json export.py wrote "
                        "beside the file") from None
    return About(list(class_names), runner.img_size, path, unknown, encoding)


def metadata_encoding(description: dict | None, size: int | None) -> PatientMetadata:
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
