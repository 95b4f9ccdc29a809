"""What every model format says about itself, and the work the formats of one export share.

A format (one module each beside this one) knows its file's suffix and place in an export
folder, how a Keras model becomes that file (with calibration images for int8), what it embeds
to describe itself, how a file of it is loaded and run (its runner), how export's parity check
runs it, and how much it must agree with the Keras model. export.py loops over the formats it
is asked for; predict.py's `--backend` runs a format's cached copy (`backend`); `load` opens any
file by its suffix.
"""

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from skin_keras.core import atomic
from skin_keras.core.errors import UserError
from skin_keras.data import pipeline
from skin_keras.infer.formats import about
from skin_keras.infer.runner import About, KerasRunner, Runner
from skin_keras.model import io

# Images that set the int8 value ranges (export.py's --calibration_images; predict.py's
# int8 backends take this many of the run's validation images), drawn with this seed.
CALIBRATION_IMAGES, CALIBRATION_SEED = 100, 1
# A float or weight-only file must agree with the Keras model on this share of top-1 labels.
MIN_TOP1_AGREEMENT = 0.99


class ExportError(UserError):
    """An exported artifact is unusable (Flex ops, or answers that differ from the model's)."""


@dataclasses.dataclass
class Work:
    """What a conversion needs besides the model, shared by the formats of one export:
    a scratch folder (where the model traced once and the float ONNX file are kept for the
    next format) and, for int8, the calibration images and their patient records (None: varied
    over the vocabulary; ignored for an image-only model)."""

    scratch: Path
    calibration: list[str] = dataclasses.field(default_factory=list)
    records: list | None = None
    _inputs: dict | None = dataclasses.field(default=None, repr=False)

    def calibration_inputs(self, runner: Runner) -> dict[str, np.ndarray]:
        """The named inputs int8 conversion runs the model on: the calibration images at the
        model's size and, for a metadata model, their records encoded (the one place they are
        encoded for conversion). Decoded once for every int8 format of the export."""
        if self._inputs is None:
            self._inputs = {io.IMAGE: np.stack([
                pipeline.load_image(str(path), runner.img_size).numpy()
                for path in self.calibration])}
            encoding = runner.about.encoding
            if io.METADATA in runner.inputs and encoding is not None:
                self._inputs[io.METADATA] = encoding.encode_records(
                    self.records if self.records is not None
                    else encoding.varied_records(len(self.calibration)))
        return self._inputs


class Format:
    """One format. File formats implement `convert` and `open`; the SavedModel overrides
    `write`, `load` and `answers`."""

    name = ""           # export.py's --formats value.
    title = ""          # In messages: "int8 TFLite".
    suffix = ""         # Of the file ("" for a folder).
    folder = ""         # Of an export: <output>/<folder>/.
    backend: str | None = None   # predict.py's --backend that runs a cached copy of it.
    calibrated = False  # Needs calibration images (int8).
    # Top-1 agreement with Keras an export needs; None: a lower one is warned of (int8).
    min_agreement: float | None = MIN_TOP1_AGREEMENT
    input_dtype = "float32"  # Of the image input.

    def file_name(self, name: str) -> str:
        return f"{name}{self.suffix}"

    def target(self, output: Path, name: str, version: int) -> Path:
        """Where an export of `name` into `output` writes this format."""
        return output / self.folder / self.file_name(name)

    def usable(self, given: int) -> int:
        """How many of `given` calibration images the conversion uses."""
        return given

    def refuse(self, runner: KerasRunner, what: str) -> None:
        """UserError naming `what` when the model cannot be made into this format: said before
        any slow work starts."""

    def convert(self, runner: KerasRunner, work: Work) -> bytes:
        """The runner's model as the file's bytes (described, but without labels beside it)."""
        raise NotImplementedError

    def open(self, content: bytes, about: About | None) -> Runner:
        """A runner of the file's bytes (`about` None: read from the file)."""
        raise NotImplementedError

    def load(self, path: Path) -> Runner:
        """A runner of an exported file, with what it says about itself."""
        raise NotImplementedError

    def is_kind(self, runner: Runner) -> bool:
        """Whether a loaded runner is a file of this format."""
        return runner.source.suffix == self.suffix

    def write(self, runner: KerasRunner, target: Path, work: Work) -> dict:
        """Writes the export at `target` (labels.txt and metadata.json beside a file); returns
        what the report says of it besides parity."""
        description = about.describe(runner, self, target.name)
        content = self.embed(self.convert(runner, work), description, runner, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_atomic(target, lambda tmp: Path(tmp).write_bytes(content))
        atomic.write_text_atomic(target.parent / about.LABELS_FILE,
                                 "\n".join(runner.class_names) + "\n")
        atomic.write_json_atomic(target.parent / about.DESCRIPTION_FILE, description)
        return {}

    def embed(self, content: bytes, description: dict, runner: KerasRunner,
              target: Path) -> bytes:
        """The converted bytes with `description` inside, where the format has room for it."""
        return content

    def answers(self, target: Path, runner: KerasRunner, paths: list,
                batch: dict) -> Callable[[int], dict]:
        """How the parity check runs the export at `target`, as shipped, on `batch` (the images
        of `paths`): a function of a count (0: every image) that answers like a runner."""
        copy = self.load(target)
        return lambda images: copy({name: value[:images] if images else value
                                    for name, value in batch.items()})

    def facts(self, target: Path, runner: KerasRunner, paths: list, batch: dict,
              reference: dict) -> dict:
        """What the report says of the written export besides its agreement."""
        return {}

