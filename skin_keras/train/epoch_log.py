"""The record of a run's epochs: log.json, confusion_matrices.json and the best epoch.

A plain object fed with numbers (confusion matrices, losses, learning rate): no model, no
callback, so it is tested on its own. The best epoch is the one with the best `--monitor` among
epochs whose training and validation losses are finite; an epoch with a non-finite loss is
flagged in the log (`"non-finite": [...]`) and never becomes best, whatever its metrics say
(outputs that are all NaN still have an arg-max, and so a balanced accuracy).
"""

import json
import math
from pathlib import Path

import numpy as np

from skin_keras.core import atomic
from skin_keras.core.layout import RunFolder
from skin_keras.model.metrics import classification_info
from skin_keras.model.spec import monitor_log_key

LOG_FILE, MATRICES_FILE = RunFolder.LOG, RunFolder.MATRICES


class EpochLog:
    """log.json's entries ("epoch:N" -> train info, valid info, lr), the raw matrices, and the
    best epoch by `monitor` (a Keras name such as val_balanced_accuracy or val_loss)."""

    def __init__(self, class_names, monitor: str):
        self.class_names = list(class_names)
        self.monitor = monitor
        self.minimize = monitor.endswith("loss")
        self.entries: dict[str, dict] = {}
        self.matrices: dict[str, dict] = {}
        self.best_epoch: int | None = None

    @property
    def epochs(self) -> int:
        return len(self.entries)

    def monitored(self, epoch: int) -> float:
        split, key = monitor_log_key(self.monitor)
        return self.entries[f"epoch:{epoch}"][split][key]

    def eligible(self, epoch: int) -> bool:
        """Whether an epoch may be best: finite losses and a finite monitored value."""
        entry = self.entries[f"epoch:{epoch}"]
        return all(math.isfinite(entry[split]["loss"]) for split in ("train info", "valid info")
                   ) and math.isfinite(self.monitored(epoch))

    def _better(self, epoch: int) -> bool:
        if not self.eligible(epoch):
            return False
        if self.best_epoch is None:
            return True
        value, best = self.monitored(epoch), self.monitored(self.best_epoch)
        return value < best if self.minimize else value > best

    def add(self, epoch: int, train_matrix: np.ndarray, val_matrix: np.ndarray,
            train_loss: float, val_loss: float, lr: float, stage: dict | None = None) -> bool:
        """Records epoch `epoch` (1-based); returns whether it is the new best."""
        entry = {
            "train info": {**classification_info(train_matrix, self.class_names),
                           "loss": float(train_loss)},
            "valid info": {**classification_info(val_matrix, self.class_names),
                           "loss": float(val_loss)},
            "lr": float(lr),
        }
        non_finite = [name for name, value in (("train loss", train_loss), ("val loss", val_loss))
                      if not math.isfinite(value)]
        if non_finite:
            entry["non-finite"] = non_finite
        if stage is not None:
            entry["stage"] = stage
        self.entries[f"epoch:{epoch}"] = entry
        self.matrices[f"epoch:{epoch}"] = {"train": np.asarray(train_matrix).tolist(),
                                           "val": np.asarray(val_matrix).tolist()}
        if self._better(epoch):
            self.best_epoch = epoch
            return True
        return False

    def best_matrices(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.best_epoch is None:
            return None
        best = self.matrices[f"epoch:{self.best_epoch}"]
        return np.array(best["train"]), np.array(best["val"])

    def write_matrices(self, run_dir: Path) -> None:
        atomic.write_json_atomic(Path(run_dir) / MATRICES_FILE, self.matrices)

    def write_log(self, run_dir: Path) -> None:
        atomic.write_json_atomic(Path(run_dir) / LOG_FILE, self.entries)

    @classmethod
    def restore(cls, run_dir: Path, class_names, monitor: str) -> "EpochLog":
        """The log of an interrupted run; its best epoch found again the same way."""
        log = cls(class_names, monitor)
        run_dir = Path(run_dir)
        log.entries = json.loads((run_dir / LOG_FILE).read_text())
        log.matrices = json.loads((run_dir / MATRICES_FILE).read_text())
        for name in log.entries:
            if log._better(int(name.split(":")[1])):  # pylint: disable=protected-access
                log.best_epoch = int(name.split(":")[1])
        return log

    def last_train_loss(self) -> float:
        return self.entries[f"epoch:{self.epochs}"]["train info"]["loss"]
