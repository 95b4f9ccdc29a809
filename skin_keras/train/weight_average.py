"""--average_epochs=K: the mean of the model's weights over the last K epochs, written as
weights/averaged.keras beside best.keras (SWA, Izmailov et al. 2018; averaging along the
trajectory is what SWAD, Cha et al. 2021, found to generalise to other domains).

The trainable weights are averaged; BatchNorm statistics of averaged weights are not the
average of the statistics, so they are re-estimated on training images (model/adapt_bn.py),
as SWA prescribes, drawn as training drew them: with balanced sampling, images of every class
as often (re-estimating a baseline's statistics on the natural mix of its validation images,
three quarters nevi, cost it 0.14 balanced accuracy there, docs/results_from_scratch.md). best.keras stays the best epoch on validation; which of the two travels
better to another clinic is for evaluate.py to say. A resumed run averages the epochs it trains.
"""

import keras

from skin_keras.data.pipeline import draw_like_training
from skin_keras.model.adapt_bn import MAX_IMAGES, adapt_batch_norm
from skin_keras.train.checkpoints import save_model_atomic

AVERAGED = "averaged.keras"


class WeightAverage(keras.callbacks.Callback):
    """Sums the trainable weights from epoch `first` (1-based) on; after epoch `last`, writes
    the averaged model."""

    def __init__(self, session, epochs: int, last: int):
        super().__init__()
        self.session, self.first, self.last = session, last - epochs + 1, last
        self.total, self.count = None, 0

    def on_epoch_end(self, epoch, logs=None):
        number = epoch + 1  # Keras counts from 0, across resumed runs too (initial_epoch).
        if number < self.first:
            return
        values = [variable.numpy() for variable in self.session.model.trainable_variables]
        self.total = values if self.total is None else [
            total + value for total, value in zip(self.total, values)]
        self.count += 1
        if number == self.last:
            self._write()

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
            save_model_atomic(model, self.session.run_dir / "weights" / AVERAGED,
                              self.session.info)
        finally:
            for variable, value in zip(model.variables, kept):
                variable.assign(value)
