"""What goes to disk after every epoch, and the callback that records each epoch.

`RunRecorder` (a Keras callback, one per `fit()` call) reads the confusion matrices, adds the
epoch to the `EpochLog`, lets its checkpoint policy save weights, then writes log.json: an epoch
the log lists always has its weights on disk. The policy is chosen when the callback is built:

- `FullModelCheckpoints`: weights/last.keras every epoch, best.keras a copy of it when best.
- `HeadCheckpoints`, while the head trains on cached features: an epoch takes milliseconds and
  serialising the full model seconds, so each epoch writes only the head's weights and optimizer
  state to weights/head_checkpoint.npz (the last two epochs: log.json may lag one behind); the
  full model is saved once at the first epoch, so the backbone is on disk from then on, and
  `finish()` turns the checkpoint into last.keras and best.keras (at the end of the phase, on
  Ctrl-C, and when a killed run is resumed).
"""

import dataclasses
import math
import shutil
from pathlib import Path

import keras
import numpy as np

from skin_keras.core import atomic
from skin_keras.core.errors import UserError
from skin_keras.core.layout import RunFolder
from skin_keras.model import record
from skin_keras.model.metrics import ConfusionMatrixMetric
from skin_keras.train.epoch_log import EpochLog
from skin_keras.train.recipe import current_learning_rate

HEAD_CHECKPOINT = "head_checkpoint.npz"


def save_model_atomic(model: keras.Model, path: Path, info: record.ModelInfo) -> None:
    atomic.write_atomic(path, lambda tmp: record.save_model(model, tmp, info),
                        suffix=".keras")


class FullModelCheckpoints:
    """weights/last.keras after every epoch; best.keras a copy of it when the epoch is best."""

    def __init__(self, weights_dir: Path, model: keras.Model, info: record.ModelInfo):
        self.weights_dir = Path(weights_dir)
        self.model = model  # The fixed-size model, whatever size fit() sees.
        self.info = info

    def save(self, best: bool) -> None:
        save_model_atomic(self.model, self.weights_dir / RunFolder.LAST, self.info)
        if best:
            # A copy of the file just written: far faster than serialising the model again.
            atomic.write_atomic(self.weights_dir / RunFolder.BEST,
                                lambda tmp: shutil.copyfile(self.weights_dir / RunFolder.LAST, tmp),
                                suffix=".keras")

    def epoch_end(self, epoch: int, log: EpochLog, new_best: bool) -> None:
        del epoch, log
        self.save(new_best)

    def finish(self) -> None:
        pass


@dataclasses.dataclass
class HeadState:
    """What changes from epoch to epoch while the head trains on cached features."""
    epoch: int
    head: list[np.ndarray]  # The head's weights.
    optimizer: list[np.ndarray]  # The optimizer's variables (step count, momenta).
    best_epoch: int | None
    best_head: list[np.ndarray] | None  # The head's weights at best_epoch.


def write_head_checkpoint(path: Path, states: dict[int, HeadState]) -> None:
    arrays = {}
    for epoch, state in states.items():
        arrays[f"{epoch}/best_epoch"] = np.array(state.best_epoch or 0)
        for kind in ("head", "optimizer", "best_head"):
            for index, value in enumerate(getattr(state, kind) or ()):
                arrays[f"{epoch}/{kind}/{index}"] = value
    atomic.write_atomic(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def read_head_checkpoint(path: Path) -> dict[int, HeadState]:
    parts = {}
    with np.load(path) as data:
        for key in data.files:
            epoch, _, rest = key.partition("/")
            entry = parts.setdefault(int(epoch), {"head": {}, "optimizer": {}, "best_head": {}})
            if rest == "best_epoch":
                entry["best_epoch"] = int(data[key]) or None
            else:
                kind, index = rest.rsplit("/", 1)
                entry[kind][int(index)] = data[key]

    def ordered(entry, kind):
        return [value for _, value in sorted(entry[kind].items())]

    return {epoch: HeadState(epoch, ordered(entry, "head"), ordered(entry, "optimizer"),
                             entry["best_epoch"], ordered(entry, "best_head") or None)
            for epoch, entry in parts.items()}


class HeadCheckpoints:
    """Per-epoch head checkpoints while the head trains on cached features (see module doc)."""

    def __init__(self, weights_dir: Path, model: keras.Model, info: record.ModelInfo,
                 head: keras.Model, best_on_disk: int | None = None):
        """`best_on_disk`: the epoch weights/best.keras holds when the phase starts (a resumed
        run's best epoch), whose head weights this policy never sees."""
        self.full = FullModelCheckpoints(weights_dir, model, info)
        self.path = Path(weights_dir) / HEAD_CHECKPOINT
        self.head = head
        self.states: dict[int, HeadState] = {}
        self.best_head = None
        self.best_on_disk = best_on_disk

    def _numpy(self, variables) -> list[np.ndarray]:
        return [keras.ops.convert_to_numpy(variable) for variable in variables]

    def _set_head(self, weights, optimizer=None) -> None:
        for variable, value in zip(self.head.weights, weights, strict=True):
            variable.assign(value)
        for variable, value in zip(self.head.optimizer.variables if optimizer is not None else (),
                                   optimizer or (), strict=True):
            variable.assign(value)

    def epoch_end(self, epoch: int, log: EpochLog, new_best: bool) -> None:
        head = self._numpy(self.head.weights)
        if new_best:
            self.best_head = head
        self.states = {e: s for e, s in self.states.items() if e == epoch - 1}
        self.states[epoch] = HeadState(epoch, head, self._numpy(self.head.optimizer.variables),
                                       log.best_epoch, self.best_head)
        write_head_checkpoint(self.path, self.states)
        if not (self.full.weights_dir / RunFolder.LAST).exists():
            self.full.save(new_best)
            self.best_on_disk = epoch if new_best else None

    def finish(self) -> None:
        """last.keras and best.keras from the checkpoint; then the checkpoint goes."""
        if not self.states:
            return
        last = self.states[max(self.states)]
        self._set_head(last.head, last.optimizer)  # An interrupted epoch may have moved it.
        if last.best_epoch in (None, last.epoch, self.best_on_disk):
            self.full.save(best=last.best_epoch == last.epoch)
        else:
            self._set_head(last.best_head)
            save_model_atomic(self.full.model, self.full.weights_dir / RunFolder.BEST,
                              self.full.info)
            self._set_head(last.head)
            save_model_atomic(self.full.model, self.full.weights_dir / RunFolder.LAST,
                              self.full.info)
        self.best_on_disk = last.best_epoch
        self.path.unlink(missing_ok=True)
        self.states = {}

    def resume(self, epoch: int, log: EpochLog) -> None:
        """Takes up a checkpoint an interrupted run left (if any) at `epoch`, the last epoch
        log.json lists, and writes it out as last.keras and best.keras."""
        if not self.path.exists():
            return
        state = read_head_checkpoint(self.path).get(epoch)
        if state is None:
            raise UserError(f"{self.path} does not hold epoch {epoch}, the last one in log.json")
        self._set_head(state.head, state.optimizer)
        self.states, self.best_head = {epoch: state}, state.best_head
        log.best_epoch = state.best_epoch  # The epoch whose weights the checkpoint holds.
        self.finish()


class RunRecorder(keras.callbacks.Callback):
    """Records every epoch of one `fit()` call into `log` and saves weights by `checkpoints`.

    Keras uses one set of metric objects for training and validation and resets them when
    validation starts, so the training confusion matrix is read just before that reset
    (`on_test_begin`) and the validation one at the end of the epoch.
    """

    def __init__(self, run_dir: Path, log: EpochLog, metric: ConfusionMatrixMetric,
                 checkpoints, stage: dict | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.epoch_log = log
        self.metric = metric
        self.checkpoints = checkpoints
        self.stage = stage  # Size and regularisation of a progressive stage, for the log.
        self._train_matrix = None
        self._lr = None

    def _matrix(self) -> np.ndarray:
        return keras.ops.convert_to_numpy(self.metric.matrix).astype(np.int64)

    def on_epoch_begin(self, epoch, logs=None):
        self._train_matrix = None
        self._lr = current_learning_rate(self.model.optimizer)

    def on_test_begin(self, logs=None):
        if self._train_matrix is None:
            self._train_matrix = self._matrix()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        val_matrix = self._matrix()
        train_matrix = self._train_matrix if self._train_matrix is not None else val_matrix
        new_best = self.epoch_log.add(
            epoch + 1, train_matrix, val_matrix, float(logs.get("loss", math.nan)),
            float(logs.get("val_loss", math.nan)), self._lr, self.stage)
        self.epoch_log.write_matrices(self.run_dir)
        self.checkpoints.epoch_end(epoch + 1, self.epoch_log, new_best)
        # log.json last: an epoch it lists always has its weights on disk.
        self.epoch_log.write_log(self.run_dir)
