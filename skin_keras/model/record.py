"""What a saved model says about itself: its classes and how it expects its input.

Every `.keras` file training writes carries one `ModelInfo` record (`skin_keras.json` inside the
archive, beside Keras' own `config.json` and `metadata.json`; Keras ignores it), so a model file
copied anywhere still knows its class names and its preprocessing. Training writes it, inference
and export read it; exported SavedModels and TFLite files carry the same facts (`labels.txt`,
`metadata.json`, the graph's class-name constant). A `.keras` file without one is not ours.
"""

import dataclasses
import json
import zipfile
from pathlib import Path

import keras

from skin_keras.model import parts

ARCHIVE_ENTRY = "skin_keras.json"
INPUT_DESCRIPTION = {
    "value range": [0, 255], "channels": "RGB",
    "resize": "the whole image to the input size (no crop), bilinear with antialiasing",
    "scaling": "none: the model rescales its input itself",
}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The facts a model needs beside its weights.

    Attributes:
      class_names: Output index -> class name.
      img_size: Input images are img_size x img_size.
      architecture: The Keras model's name (efficientnetv2_b0, ...).
      preprocessing: What the model does to its input before the backbone, in words (colour
        constancy); "none" for none.
      input: How to feed it (value range, channel order, resizing).
      metadata: For a model with a patient-metadata input, how to encode it
        (`PatientMetadata.describe()`); None for an image-only model.
    """

    class_names: tuple[str, ...]
    img_size: int
    architecture: str
    preprocessing: str = "none"
    input: dict = dataclasses.field(default_factory=lambda: dict(INPUT_DESCRIPTION))
    metadata: dict | None = None

    @classmethod
    def of(cls, model: keras.Model, class_names) -> "ModelInfo":
        encoding = parts.metadata_encoding_of(model)
        return cls(tuple(class_names), parts.image_size(model), model.name,
                   parts.describe_preprocessing(model),
                   metadata=None if encoding is None else encoding.describe())

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelInfo":
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        return cls(**{**values, "class_names": tuple(values["class_names"])})


def write_into(keras_file: str | Path, info: ModelInfo) -> None:
    """Adds the record to a `.keras` archive (written by `model.save`)."""
    with zipfile.ZipFile(keras_file, "a") as archive:
        archive.writestr(ARCHIVE_ENTRY, json.dumps(info.to_dict(), indent=2))


def read_from(keras_file: str | Path) -> ModelInfo | None:
    """The record of a `.keras` file, or None for a file without one (not saved by us).

    Raises ValueError when the file is not a readable archive or the record is damaged.
    """
    try:
        with zipfile.ZipFile(keras_file) as archive:
            if ARCHIVE_ENTRY not in archive.namelist():
                return None
            data = json.loads(archive.read(ARCHIVE_ENTRY))
        return ModelInfo.from_dict(data)
    except (zipfile.BadZipFile, OSError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{keras_file}: unreadable model record ({error})") from error


def save_model(model: keras.Model, path: str | Path, info: ModelInfo) -> None:
    """`model.save(path)` with the record inside (the caller makes it atomic).

    The compile configuration is saved without its metrics: ours (training's confusion
    matrix) made a plain `keras.models.load_model` fail in a Python that had not imported
    skin_keras, and nothing that loads a file needs them (a resumed run takes the optimizer's
    state and compiles its own model)."""
    kept = getattr(model, "_compile_config", None)  # Keras' own record of compile()'s arguments.
    if kept is not None and kept.config.get("metrics"):
        model._compile_config = type(kept)(  # pylint: disable=protected-access
            **{**kept.config, "metrics": None})
    try:
        model.save(path)
    finally:
        if kept is not None:
            model._compile_config = kept  # pylint: disable=protected-access
    write_into(path, info)
