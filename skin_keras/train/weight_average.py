"""--average_epochs=K: the mean of the model's weights over the last K epochs, written as
weights/averaged.keras beside best.keras (SWA, Izmailov et al. 2018; averaging along the
trajectory is what SWAD, Cha et al. 2021, found to generalise to other domains).

The trainable weights are averaged; BatchNorm statistics of averaged weights are not the
average of the statistics, so they are re-estimated on training images (model/adapt_bn.py),
as SWA prescribes, drawn as training drew them: with balanced sampling, images of every class
as often (re-estimating a baseline's statistics on the natural mix of its validation images,
three quarters nevi, cost it 0.14 balanced accuracy there, docs/results_from_scratch.md).
best.keras stays the best epoch on validation; which of the two travels better to another
clinic is for evaluate.py to say.

The running sum is saved after every epoch it holds (weights/average_sum.npz), so a killed run
resumed with --resume averages the same epochs as one that was never stopped; when the sum of
the epochs before the kill cannot be recovered, the run says which epochs it averages.
"""

import logging

import keras
import numpy as np

from skin_keras.data.pipeline import draw_like_training
from skin_keras.model.adapt_bn import MAX_IMAGES, adapt_batch_norm
from skin_keras.core import atomic
from skin_keras.core.layout import RunFolder
from skin_keras.train.checkpoints import save_model_atomic

_log = logging.getLogger(__name__)

AVERAGED = RunFolder.AVERAGED
SUM_FILE = "average_sum.npz"


class WeightAverage(keras.callbacks.Callback):
    """Sums the trainable weights from epoch `first` (1-based) on; after epoch `last`, writes
    the averaged model."""

    def __init__(self, session, epochs: int, last: int):
        super().__init__()
        self.session, self.first, self.last = session, last - epochs + 1, last
        self.total, self.count = None, 0

    @property
    def _sum_path(self):
        return RunFolder(self.session.run_dir).weights / SUM_FILE

    def on_train_begin(self, logs=None):
        """A resumed run takes up the sum of the epochs it completed before (each phase's
        fit calls this; only the first call of a resumed run has anything to take up)."""
        completed = self.session.log.epochs
        if self.total is not None or completed < self.first:
            return
        try:
            with np.load(self._sum_path) as saved:
                epoch, count = int(saved["epoch"]), int(saved["count"])
                total = [saved[f"w{i}"] for i in range(len(saved.files) - 2)]
        except (OSError, KeyError, ValueError):
            epoch, count, total = self.first - 1, 0, None
        if epoch == completed:
            self.total, self.count = total, count
        elif epoch == completed - 1:  # Killed after log.json, before the sum: this epoch's
            self.total, self.count = total, count  # weights are the model's now.
            self._add()
        else:
            _log.warning(f"--average_epochs: {AVERAGED} will average epochs {completed + 1}-"
                         f"{self.last} only (the sum of epochs {self.first}-{completed}, from "
                         "before the run was resumed, was not found)")

    def on_epoch_end(self, epoch, logs=None):
        number = epoch + 1  # Keras counts from 0, across resumed runs too (initial_epoch).
        if number < self.first:
            return
        self._add()
        if number == self.last:
            self._write()
            self._sum_path.unlink(missing_ok=True)
        else:
            self._save(number)

    def _add(self) -> None:
        values = [variable.numpy() for variable in self.session.model.trainable_variables]
        self.total = values if self.total is None else [
            total + value for total, value in zip(self.total, values)]
        self.count += 1

    def _save(self, epoch: int) -> None:
        arrays = {f"w{i}": total for i, total in enumerate(self.total)}

        def write(tmp):
            with open(tmp, "wb") as file:
                np.savez(file, epoch=epoch, count=self.count, **arrays)

        atomic.write_atomic(self._sum_path, write)

    def _write(self) -> None:
        model = self.session.model
        kept = [variable.numpy() for variable in model.variables]
        try:
            for variable, total in zip(model.trainable_variables, self.total):
                variable.assign(total / self.count)
            config, train = self.session.config, self.session.data.train
            drawn = draw_like_training(train.labels, MAX_IMAGES, config.seed, config.sampling,
                                       self.session.data.strata)
            adapt_batch_norm(model, [train.paths[i] for i in drawn], config.seed)
            save_model_atomic(model, RunFolder(self.session.run_dir).weights / AVERAGED,
                              self.session.info)
        finally:
            for variable, value in zip(model.variables, kept):
                variable.assign(value)
