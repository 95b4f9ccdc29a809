"""Loading any model skin_keras writes, with what is needed to feed it and read its output.

`load(path)` gives a runner (runner.py) for any model path: a run folder (weights/best.keras), a
`.keras` file (its class names in its own record, model/record.py), or what export.py wrote: a
SavedModel folder (or its TF Serving base folder) or a `.tflite` or `.onnx` file (class names
inside it, or in the labels.txt beside it: each format's `load`, formats/). The image size
comes from the model itself: nothing the user must repeat on the command line.
"""

from pathlib import Path

import keras

from skin_keras.core.errors import UserError, first_line
from skin_keras.core.layout import RunFolder, read_class_indices
from skin_keras.infer import formats
from skin_keras.infer.runner import About, KerasRunner, Runner
from skin_keras.model import io, parts, record


def resolve_keras_file(model_path: str | Path) -> Path:
    """The .keras file meant by a run folder or a file path; UserError when there is none."""
    path = Path(model_path)
    if path.is_dir():
        if RunFolder(path).best.is_file():
            return RunFolder(path).best
        raise UserError(f"{path} is not a run folder (no weights/best.keras) nor a SavedModel")
    if not path.exists():
        raise UserError(f"model path {path} does not exist")
    if path.suffix != ".keras":
        raise UserError(f"{path} is not a model: give a run folder, a .keras, .tflite or .onnx "
                        "file or a SavedModel folder")
    return path


def _run_class_indices(keras_file: Path) -> Path | None:
    for folder in (keras_file.parent, RunFolder.of_model(keras_file).path):
        if RunFolder(folder).class_indices.is_file():
            return RunFolder(folder).class_indices
    return None


def class_names_of(keras_file: Path) -> list[str]:
    """The class names a .keras file was trained on: its own record, checked against its run
    folder's class_indices.json when there is one."""
    try:
        info = record.read_from(keras_file)
    except ValueError as error:
        raise UserError(str(error)) from None
    if info is None:  # Those of 5884882 have one too (benchmarks/old_artifacts.py).
        raise UserError(f"{keras_file} has no record of its classes ({record.ARCHIVE_ENTRY} in "
                        "the archive): it was not saved by skin_keras (train.py, "
                        "record.save_model)")
    indices = _run_class_indices(keras_file)
    if indices is not None:
        listed = read_class_indices(indices)
        if listed != list(info.class_names):
            raise UserError(f"{keras_file} was trained on the classes {list(info.class_names)} "
                            f"but {indices} lists {listed}: which file belongs to which run?")
    return list(info.class_names)


def load(model_path: str | Path) -> Runner:
    """A runner for a run folder, a .keras file, an exported SavedModel folder, a .tflite or an
    .onnx file."""
    path = Path(model_path)
    if (fmt := formats.of_path(path)) is not None:
        return fmt.load(path)
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
