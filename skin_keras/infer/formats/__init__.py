"""The model formats, one module each (base.py says what a format declares), and the registry
that export.py, predict.py's --backend and `load` loop over. Adding a format is adding its
module and naming it in `_MODULES`."""

from pathlib import Path

from skin_keras.core.errors import UserError
from skin_keras.infer.formats import onnx_file, saved_model, tflite
from skin_keras.infer.formats.base import (CALIBRATION_IMAGES, CALIBRATION_SEED,
                                           MIN_TOP1_AGREEMENT, ExportError, Format, Work)

_MODULES = (saved_model, tflite, onnx_file)  # In this order in export.py's help and report.
FORMATS: dict[str, Format] = {fmt.name: fmt for module in _MODULES for fmt in module.FORMATS}
# predict.py's --backend names of the formats it can convert a .keras file to, and run.
BY_BACKEND: dict[str, Format] = {fmt.backend: fmt for fmt in FORMATS.values() if fmt.backend}

__all__ = ["CALIBRATION_IMAGES", "CALIBRATION_SEED", "MIN_TOP1_AGREEMENT", "ExportError",
           "FORMATS", "BY_BACKEND", "Format", "Work", "get", "of_path"]


def get(name: str) -> Format:
    """The format export.py's --formats calls `name`; UserError naming the others."""
    if name not in FORMATS:
        raise UserError(f"unknown format {name}; choose from {', '.join(FORMATS)}")
    return FORMATS[name]


def of_path(path: Path) -> Format | None:
    """The format that reads what is at `path`: a SavedModel folder (or its TF Serving base
    folder), a .tflite or an .onnx file; None for anything else (a run folder, a .keras file)."""
    if path.is_dir():
        return FORMATS["saved_model"] if saved_model.find_saved_model(path) else None
    if path.is_file():
        return next((fmt for fmt in FORMATS.values() if fmt.suffix and
                     path.suffix == fmt.suffix), None)
    return None
