"""What one training run holds while it trains: its config and data, the strategy, the models
(the fixed-size model that is saved, the model `fit()` trains, the head for cached features),
one optimizer, loss and metric for all of them, and, once opened, its folder and epoch log."""

import dataclasses
import logging
import math
import shutil
from pathlib import Path

import keras

from skin_keras.model import parts
from skin_keras.model.builder import build_model
from skin_keras.model.metrics import ConfusionMatrixMetric
from skin_keras.model.record import ModelInfo
from skin_keras.train import distribute, feature_cache, run_folder
from skin_keras.train.config import TrainConfig
from skin_keras.train.epoch_log import EpochLog
from skin_keras.train.inputs import RunData, selected, training_draw
from skin_keras.train.recipe import class_weights, finetune_optimizer, make_optimizer

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class Session:
    """A run being trained (`build` makes one; the loop opens its folder)."""

    config: TrainConfig
    data: RunData
    strategy: object
    precision: str  # The mode it trains in (--precision=auto decided: precision.choose).
    model: keras.Model  # Fixed size: what the checkpoints save.
    train_model: keras.Model  # The same layers at any size (progressive stages), else `model`.
    head: keras.Model | None  # The head alone, trained on cached features; None without.
    loss: keras.losses.Loss
    metric: ConfusionMatrixMetric
    info: ModelInfo
    steps_per_epoch: int
    class_weights: dict | None
    run_dir: Path | None = None
    log: EpochLog | None = None
    _cached: tuple | None = None

    def compile(self, finetune: bool = False, models=None) -> None:
        """Compiles the models (all by default) with one new optimizer (the fine-tuning one with
        `finetune`), the loss and the metric, and builds the optimizer, all in the strategy's
        scope. --jit_compile: auto leaves XLA to Keras (on with an accelerator, off on CPU-only
        machines), on/off force it.

        Creating the optimizer's slots here, outside tf.function, saves tracing the training
        step twice (about half a minute for B0 on a 2-core CPU)."""
        models = models or (self.model, self.train_model, self.head)
        unique = list({id(m): m for m in models if m is not None}.values())
        with self.strategy.scope():
            optimizer = (finetune_optimizer if finetune else make_optimizer)(
                self.config, self.steps_per_epoch)
            for model in unique:
                model.compile(optimizer=optimizer, loss=self.loss, metrics=[self.metric],
                              jit_compile={"on": True, "off": False}.get(
                                  self.config.jit_compile, "auto"))
            optimizer.build(unique[-1].trainable_variables)

    def cached_datasets(self) -> tuple:
        """(train, validation) datasets of cached backbone features for the head, computed
        once per run (features missing from the cache are computed first)."""
        if self._cached is None:
            config, data = self.config, self.data
            cache = feature_cache.FeatureCache(config.feature_cache, self.model,
                                               self.precision)
            _log.info(f"frozen backbone: the head trains on cached features ({cache.folder})")
            train, train_ok = cache.features(data.train.paths, config.cache_views,
                                             "train features")
            val, val_ok = cache.features(data.val.paths, 1, "val features")
            self._cached = (
                feature_cache.feature_dataset(
                    train[train_ok], data.train.labels[train_ok], data.train.num_classes,
                    config.batch_size, selected(data.inputs["train"], train_ok),
                    training_draw(config, data, keep=train_ok)),
                feature_cache.feature_dataset(
                    val[val_ok], data.val.labels[val_ok], data.val.num_classes,
                    config.batch_size, selected(data.inputs["val"], val_ok)))
        return self._cached


def build(config: TrainConfig, data: RunData, strategy, mode: str = "float32") -> Session:
    """The models of a run, compiled with its optimizer (variables of the models, the optimizer
    and the metric live on every replica of `strategy`)."""
    distribute.check_batch_size(strategy, config.batch_size)
    keras.utils.set_random_seed(config.seed)
    steps_per_epoch = math.ceil(len(data.train.paths) / config.batch_size)
    spec = config.model_spec
    with strategy.scope():
        model = build_model(spec, data.train.num_classes, data.encoding)
        # Progressive stages train the same layers at other sizes through a twin with a free
        # input size; the fixed-size model is what gets saved. All share one optimizer, so the
        # saved file carries the optimizer state that --resume needs.
        train_model = model if config.progressive_stages == 1 else parts.any_size_twin(
            model, spec.backbone_training)
        # With a frozen backbone, the head can train on cached backbone features instead.
        head = parts.head_model(model) if config.feature_cache_blocker is None else None
        metric = ConfusionMatrixMetric(data.train.num_classes)
    session = Session(config, data, strategy, mode, model, train_model, head,
                      keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                      metric, ModelInfo.of(model, data.train.class_names), steps_per_epoch,
                      class_weights(data.train.class_counts(), config.class_weight))
    session.compile()
    return session


def open_folder(session: Session, run_dir: Path | None) -> None:
    """A new run's folder (`run_dir`, else a new <save_ret>/expN) with its files and an empty
    log."""
    config = session.config
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A run restarted from scratch (killed before its first epoch ended): without the
        # killed attempt's TensorBoard events, which would draw a second curve.
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    else:
        run_dir = run_folder.new_run_dir(config.save_ret)
    run_folder.write_run_files(run_dir, config, session.data, session.model,
                               session.class_weights, session.precision)
    session.run_dir = run_dir
    session.log = EpochLog(session.data.train.class_names, config.monitor)
