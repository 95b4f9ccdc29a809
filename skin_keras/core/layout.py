"""Where things are: every file name of a run folder (`RunFolder`) and of a prepared data folder
(`DataRoot`), declared once, and reading the two files every later step needs from a run.

    <save_ret>/expN/                      RunFolder
      weights/best.keras, last.keras      the best and the last epoch's full models
      weights/best_uncalibrated.keras     the model as trained, once calibrated
      weights/averaged.keras              --average_epochs
      class_indices.json, flags.cfg, train_params.json, log.json, confusion_matrices.json

    <data>/                               DataRoot (prepare_isic's output)
      train/<class>/, val/<class>/        class folders
      split.csv                           image, lesion_id, fold, ... of every image placed
"""

import dataclasses
import json
from pathlib import Path

from skin_keras.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """One training run's folder."""

    path: Path

    WEIGHTS = "weights"
    BEST, LAST = "best.keras", "last.keras"
    UNCALIBRATED = "best_uncalibrated.keras"  # Calibration keeps the model as trained here.
    AVERAGED = "averaged.keras"
    CLASS_INDICES, PARAMS, FLAGS = "class_indices.json", "train_params.json", "flags.cfg"
    LOG, MATRICES = "log.json", "confusion_matrices.json"

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of_model(cls, model_file: str | Path) -> "RunFolder":
        """The run a model file belongs to: <run>/weights/<file>, else the file's folder."""
        model_file = Path(model_file)
        parent = model_file.parent
        return cls(parent.parent if parent.name == cls.WEIGHTS else parent)

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def best(self) -> Path:
        return self.weights / self.BEST

    @property
    def last(self) -> Path:
        return self.weights / self.LAST

    @property
    def uncalibrated(self) -> Path:
        return self.weights / self.UNCALIBRATED

    @property
    def class_indices(self) -> Path:
        return self.path / self.CLASS_INDICES

    @property
    def params(self) -> Path:
        return self.path / self.PARAMS

    @property
    def flags(self) -> Path:
        return self.path / self.FLAGS

    def read_params(self) -> dict:
        """train_params.json; UserError (one line) when it is not what training wrote."""
        try:
            params = json.loads(self.params.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"{self.params} is not readable JSON: "
                            f"{str(error).splitlines()[0]}") from None
        if not isinstance(params, dict) or not isinstance(params.get("train parameters"), dict):
            raise UserError(f"{self.params} is not a run's train_params.json (no \"train "
                            "parameters\")")
        return params

    def trained_with(self, flag: str) -> str:
        """A training flag's value as train_params.json records it ("" when absent or the file
        cannot be read)."""
        try:
            return str(self.read_params()["train parameters"].get(flag) or "")
        except UserError:
            return ""


def read_class_indices(path: str | Path) -> list[str]:
    """The class names of a class_indices.json ({"0": name, ...}); one-line UserError when the
    file is not that."""
    path = Path(path)
    try:
        indices = json.loads(path.read_text())
        if not isinstance(indices, dict) or not indices:
            raise ValueError("not a non-empty JSON object")
        names = [indices[str(i)] for i in range(len(indices))]
        if not all(isinstance(name, str) and name for name in names):
            raise ValueError("class names must be non-empty strings")
    except (OSError, ValueError, KeyError) as error:
        reason = f"no key {error}" if isinstance(error, KeyError) else str(error).splitlines()[0]
        raise UserError(f"{path} is not a class index file ({{\"0\": \"class name\", ...}}): "
                        f"{reason}") from None
    return names


@dataclasses.dataclass(frozen=True)
class DataRoot:
    """A prepared data folder: train/ and val/ class folders and split.csv beside them."""

    path: Path

    TRAIN, VAL, SPLIT = "train", "val", "split.csv"

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, class_folder: str | Path) -> "DataRoot":
        """The data folder that holds `class_folder` (its train/ or val/)."""
        return cls(Path(class_folder).parent)

    @property
    def train(self) -> Path:
        return self.path / self.TRAIN

    @property
    def val(self) -> Path:
        return self.path / self.VAL

    @property
    def split_csv(self) -> Path:
        return self.path / self.SPLIT
