"""Training: `train_and_evaluate(config)` turns a TrainConfig into a complete run folder.

    <save_ret>/expN/
      weights/best.keras, weights/last.keras   full models (raw [0, 255] images in, probabilities out)
      class_indices.json                       {"0": "Actinic keratosis", ...}
      flags.cfg                                replays the run: train.py --flagfile=flags.cfg
      train_params.json                        "train parameters", "dataset", "model" (as the seed)
      log.json                                 per epoch: "train info", "valid info", "lr"
      confusion_matrix_train.png, confusion_matrix_val.png, curves.png, tensorboard/
"""

import dataclasses
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skin_keras import (atomic, cache, distribute, feature_cache, folders, input_pipeline,
                        models, reports)
from skin_keras.config import TrainConfig
from skin_keras.errors import UserError
from skin_keras.metrics import ConfusionMatrixMetric


def new_run_dir(save_ret: str | Path) -> Path:
    """Creates `save_ret/expN` with N one more than any existing run; never reuses a folder."""
    root = Path(save_ret)
    if root.exists() and not root.is_dir():
        raise UserError(f"--save_ret={root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(match.group(1)) for entry in root.iterdir()
               if (match := re.fullmatch(r"exp(\d+)", entry.name))]
    number = max(numbers, default=0) + 1
    while True:
        try:
            (root / f"exp{number}").mkdir()
            return root / f"exp{number}"
        except FileExistsError:  # Another run started at the same moment.
            number += 1


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The seed's optimizers with a per-step cosine schedule from lr to lr·lrf (after warm-up)."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    decay_steps = max(1, config.epochs * steps_per_epoch - warmup_steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else config.lr, decay_steps=decay_steps,
        alpha=config.lrf, warmup_target=config.lr if warmup_steps else None,
        warmup_steps=warmup_steps)
    name = config.optimizer_name
    if name == "SGD":
        return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=config.weight_decay)
    optimizer_class = keras.optimizers.Adam if name == "Adam" else keras.optimizers.AdamW
    return optimizer_class(schedule, weight_decay=config.weight_decay)


MATRICES_FILE = "confusion_matrices.json"
_LOG_KEYS = {"loss": "loss", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
             "mean_precision": "mean precision", "mean_recall": "mean recall",
             "mean_specificity": "mean specificity", "mean_f1": "mean f1 score"}


@dataclasses.dataclass(frozen=True)
class Stage:
    """Epochs [first_epoch, last_epoch) trained at one image size and regularisation."""

    first_epoch: int
    last_epoch: int
    img_size: int
    dropout: float
    randaugment_magnitude: float
    mixup_alpha: float
    finetune: bool = False  # The backbone's top blocks train too (after the frozen-head stages).


def stage_plan(config: TrainConfig) -> list[Stage]:
    """Progressive learning (EfficientNetV2, Tan & Le 2021, Algorithm 1).

    The --epochs are split into `progressive_stages` equal stages; image size grows linearly from
    `min_img_size` (default half of `img_size`, rounded to a multiple of 8) to `img_size`, and
    dropout, RandAugment magnitude and MixUp alpha from their minimum to their maximum. One stage
    is plain training at the maximum values. Fine-tuning epochs, if any, form a last stage at the
    maximum values.
    """
    final = Stage(0, config.epochs, config.img_size, config.dropout,
                  config.randaugment_magnitude, config.mixup_alpha)
    finetune = [dataclasses.replace(final, first_epoch=config.epochs, finetune=True,
                                    last_epoch=config.epochs + config.finetune_epochs)
                ] if config.finetune_epochs else []
    count = config.progressive_stages
    bounds = np.linspace(0, config.epochs, count + 1).round().astype(int)
    if count == 1:
        return [final] + finetune
    smallest = config.min_img_size or max(32, 8 * round(config.img_size / 16))
    stages = []
    for index in range(count):
        t = index / (count - 1)
        size = config.img_size if index == count - 1 else max(
            32, 8 * round((smallest + t * (config.img_size - smallest)) / 8))
        stages.append(Stage(
            int(bounds[index]), int(bounds[index + 1]), size,
            config.min_dropout + t * (config.dropout - config.min_dropout),
            config.min_randaugment_magnitude
            + t * (config.randaugment_magnitude - config.min_randaugment_magnitude),
            config.min_mixup_alpha + t * (config.mixup_alpha - config.min_mixup_alpha)))
    return stages + finetune


def monitor_log_key(monitor: str) -> tuple[str, str]:
    """Where a Keras log name (val_balanced_accuracy) lives in log.json (valid info, ...)."""
    return "valid info", _LOG_KEYS[monitor.removeprefix("val_")]


def class_weights(counts: np.ndarray, mode: str) -> dict[int, float] | None:
    """Loss weight per class from the training counts, or None for mode "none".

    "balanced" is N / (C * n_c) (scikit-learn's formula): every class carries the same total
    weight. "sqrt" is its square root, a milder correction. Both are scaled so that the mean
    weight over the training images is 1, which keeps the loss (and the learning rate) on the
    scale of an unweighted run.
    """
    if mode == "none":
        return None
    counts = np.asarray(counts, np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    if mode == "sqrt":
        weights = np.sqrt(weights)
    weights *= counts.sum() / np.sum(counts * weights)
    return {index: float(weight) for index, weight in enumerate(weights)}


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def save_model_atomic(model: keras.Model, path: Path) -> None:
    atomic.write_atomic(path, model.save, suffix=".keras")


HEAD_CHECKPOINT = "head_checkpoint.npz"


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
    return {epoch: HeadState(epoch, *[[v for _, v in sorted(entry[kind].items())]
                                      for kind in ("head", "optimizer")],
                             entry["best_epoch"],
                             [v for _, v in sorted(entry["best_head"].items())] or None)
            for epoch, entry in parts.items()}


class RunRecorder(keras.callbacks.Callback):
    """Writes log.json and the weights after every epoch; tracks the best epoch on validation.

    Keras uses one set of metric objects for training and validation and resets them when
    validation starts, so the training confusion matrix is read just before that reset
    (`on_test_begin`) and the validation one at the end of the epoch.

    While the head trains on cached features (`head` is set), an epoch takes far less time than
    serialising the full model, so each epoch writes only the head's weights and the optimizer
    state to weights/head_checkpoint.npz (the last two epochs: log.json may lag one behind);
    `write_head_weights` turns the checkpoint into last.keras and best.keras when the phase ends
    (or is interrupted, or resumed). The full model is saved once at the first epoch, so the
    backbone is on disk from then on.
    """

    def __init__(self, run_dir: Path, class_names, metric: ConfusionMatrixMetric, monitor: str,
                 model_to_save: keras.Model):
        super().__init__()
        self.run_dir = run_dir
        self.weights_dir = run_dir / "weights"
        self.model_to_save = model_to_save  # The fixed-size model, whatever size fit() sees.
        self.stage = None  # Size and regularisation of the current stage, when progressive.
        self.head = None  # The head model, while it trains on cached features.
        self.head_states: dict[int, HeadState] = {}
        self.best_head = None
        self._best_on_disk = None  # The epoch best.keras holds, when known.
        self.class_names = list(class_names)
        self.metric = metric
        self.monitor = monitor
        self.minimize = monitor.endswith("loss")
        self.log = {}
        self.matrices = {}
        self.best_epoch = None
        self.best_value = None
        self.best_matrices = None
        self._train_matrix = None
        self._lr = None

    def restore(self) -> int:
        """Takes up the log of an interrupted run; returns the number of completed epochs."""
        self.log = json.loads((self.run_dir / "log.json").read_text())
        self.matrices = json.loads((self.run_dir / MATRICES_FILE).read_text())
        split, key = monitor_log_key(self.monitor)
        for name, entry in self.log.items():
            value = entry[split][key]
            if not math.isfinite(entry["train info"]["loss"]) or math.isnan(value):
                continue
            if self.best_value is None or (
                    value < self.best_value if self.minimize else value > self.best_value):
                self.best_value, self.best_epoch = value, int(name.split(":")[1])
        self._set_best(self.best_epoch)
        return len(self.log)

    def _set_best(self, epoch: int | None) -> None:
        self.best_epoch, self.best_value, self.best_matrices = epoch, None, None
        if epoch is not None:
            split, key = monitor_log_key(self.monitor)
            self.best_value = self.log[f"epoch:{epoch}"][split][key]
            best = self.matrices[f"epoch:{epoch}"]
            self.best_matrices = (np.array(best["train"]), np.array(best["val"]))

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
        number = epoch + 1
        self.log[f"epoch:{number}"] = {
            "train info": {**reports.classification_info(train_matrix, self.class_names),
                           "loss": float(logs.get("loss", math.nan))},
            "valid info": {**reports.classification_info(val_matrix, self.class_names),
                           "loss": float(logs.get("val_loss", math.nan))},
            "lr": self._lr,
        }
        if self.stage is not None:
            self.log[f"epoch:{number}"]["stage"] = self.stage
        self.matrices[f"epoch:{number}"] = {"train": train_matrix.tolist(),
                                              "val": val_matrix.tolist()}
        atomic.write_json_atomic(self.run_dir / MATRICES_FILE, self.matrices)
        value = float(logs.get(self.monitor, math.nan))
        # An epoch whose loss diverged is never "best", whatever its metrics say.
        diverged = not math.isfinite(float(logs.get("loss", math.nan)))
        new_best = not diverged and not math.isnan(value) and (
            self.best_value is None
            or (value < self.best_value if self.minimize else value > self.best_value))
        if new_best:
            self.best_value, self.best_epoch = value, number
            self.best_matrices = (train_matrix, val_matrix)
        if self.head is not None:
            self._checkpoint_head(number, new_best)
        if self.head is None or not (self.weights_dir / "last.keras").exists():
            self._save_model(new_best)
        # log.json last: an epoch it lists always has its weights on disk.
        atomic.write_json_atomic(self.run_dir / "log.json", self.log)

    def _save_model(self, best: bool) -> None:
        """last.keras from the model as it is; best.keras a copy of it when `best`."""
        save_model_atomic(self.model_to_save, self.weights_dir / "last.keras")
        if best:
            # A copy of the file just written: far faster than serialising the model again.
            atomic.write_atomic(self.weights_dir / "best.keras",
                                lambda tmp: shutil.copyfile(self.weights_dir / "last.keras", tmp),
                                suffix=".keras")
            self._best_on_disk = self.best_epoch

    def _checkpoint_head(self, epoch: int, new_best: bool) -> None:
        head = [keras.ops.convert_to_numpy(w) for w in self.head.weights]
        if new_best:
            self.best_head = head
        state = HeadState(epoch, head,
                          [keras.ops.convert_to_numpy(v) for v in self.head.optimizer.variables],
                          self.best_epoch, self.best_head)
        self.head_states = {e: s for e, s in self.head_states.items() if e == epoch - 1}
        self.head_states[epoch] = state
        write_head_checkpoint(self.weights_dir / HEAD_CHECKPOINT, self.head_states)

    def _set_head(self, weights: list[np.ndarray], optimizer: list[np.ndarray] | None = None):
        for variable, value in zip(self.head.weights, weights, strict=True):
            variable.assign(value)
        if optimizer is not None:
            for variable, value in zip(self.head.optimizer.variables, optimizer, strict=True):
                variable.assign(value)

    def resume_head_checkpoint(self, head: keras.Model, epoch: int) -> None:
        """Takes up a head checkpoint left by an interrupted cached-head phase (if any) at
        `epoch`, the last epoch log.json lists, and writes it out as last/best.keras."""
        path = self.weights_dir / HEAD_CHECKPOINT
        if not path.exists():
            return
        state = read_head_checkpoint(path).get(epoch)
        if state is None:
            raise UserError(f"{path} does not hold epoch {epoch}, the last one in log.json")
        self.head = head
        self._set_head(state.head, state.optimizer)
        self.head_states, self.best_head = {epoch: state}, state.best_head
        self._set_best(state.best_epoch)  # The epoch whose weights the checkpoint holds.
        self.write_head_weights()
        self.head = None

    def write_head_weights(self) -> None:
        """last.keras and best.keras from the head checkpoint; then the checkpoint goes."""
        if self.head is None or not self.head_states:
            return
        last = self.head_states[max(self.head_states)]
        self._set_head(last.head, last.optimizer)  # An interrupted epoch may have moved it.
        if last.best_epoch in (None, last.epoch, self._best_on_disk):
            self._save_model(best=last.best_epoch == last.epoch)
        else:
            self._set_head(last.best_head)
            save_model_atomic(self.model_to_save, self.weights_dir / "best.keras")
            self._best_on_disk = last.best_epoch
            self._set_head(last.head)
            save_model_atomic(self.model_to_save, self.weights_dir / "last.keras")
        (self.weights_dir / HEAD_CHECKPOINT).unlink(missing_ok=True)
        self.head_states = {}


def _write_run_files(run_dir: Path, config: TrainConfig, train: folders.ImageFolder,
                     val: folders.ImageFolder, model: keras.Model,
                     weights: dict[int, float] | None) -> None:
    (run_dir / "weights").mkdir()
    atomic.write_json_atomic(run_dir / "class_indices.json",
                              {str(i): name for i, name in enumerate(train.class_names)})
    atomic.write_text_atomic(run_dir / "flags.cfg", config.to_flagfile())
    atomic.write_json_atomic(run_dir / "train_params.json", {
        "train parameters": config.to_dict(),
        "dataset": {
            "trainset number": len(train.paths),
            "valset number": len(val.paths),
            "number classes": train.num_classes,
            "trainset per class": dict(zip(train.class_names, map(int, train.class_counts()))),
            "valset per class": dict(zip(val.class_names, map(int, val.class_counts()))),
            "bad files": [f"{path}: {reason}" for path, reason in train.bad_files + val.bad_files],
            "skipped non-image files": len(train.skipped) + len(val.skipped),
            "class weights": None if weights is None else {
                name: round(weights[i], 6) for i, name in enumerate(train.class_names)},
        },
        "model": {
            "total parameters": model.count_params(),
            "train parameters": models.count_params(model.trainable_weights),
            # Counting takes seconds for the large models: once per architecture and size.
            "flops": cache.memoized("flops", f"{model.name}/{model.input_shape}/"
                                    f"{model.output_shape}/tf{tf.__version__}",
                                    lambda: models.count_flops(model)),
        },
    })


def _write_reports(run_dir: Path, recorder: RunRecorder, class_names) -> None:
    if recorder.best_matrices is not None:
        train_matrix, val_matrix = recorder.best_matrices
        for split, matrix in (("train", train_matrix), ("val", val_matrix)):
            reports.plot_confusion_matrix(
                matrix, class_names, run_dir / f"confusion_matrix_{split}.png",
                title=f"{split}, best epoch {recorder.best_epoch}")
    if recorder.log:
        reports.plot_curves(recorder.log, run_dir / "curves.png")


def train_and_evaluate(config: TrainConfig, verbose: int | str = "auto") -> Path:
    """Trains a classifier as `config` says and returns the run folder it wrote."""
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        return _train_and_evaluate(config, verbose)
    finally:  # The dtype policy is global: leave it as it was for whatever runs next.
        keras.mixed_precision.set_global_policy(previous_policy)


def compile_models(models_to_compile, optimizer, loss, metric) -> None:
    """Compiles the model(s) with one optimizer, loss and metric, and builds the optimizer.

    Creating the optimizer's slots here, outside tf.function, saves tracing the training step
    twice (about half a minute for B0 on a 2-core CPU).
    """
    unique = {id(m): m for m in models_to_compile}.values()
    for model in unique:
        model.compile(optimizer=optimizer, loss=loss, metrics=[metric])
    optimizer.build(list(unique)[-1].trainable_variables)


def _block_number(layer_name: str) -> int | None:
    """EfficientNetV2 layers are named block<stage><letter>_...; None for stem and top."""
    match = re.match(r"block(\d+)[a-z]_", layer_name)
    return int(match.group(1)) if match else None


def unfreeze_top_blocks(backbone: keras.Model, blocks: int) -> None:
    """Makes the top `blocks` stages of the backbone (0: all of it) trainable.

    BatchNormalization layers stay frozen, so they keep running in inference mode with the
    statistics they have (the Keras fine-tuning recipe).
    """
    numbers = [n for n in (_block_number(layer.name) for layer in backbone.layers) if n]
    first = max(numbers) - blocks + 1 if blocks else 0
    backbone.trainable = True
    for layer in backbone.layers:
        number = _block_number(layer.name)
        in_top = blocks == 0 or (number is not None and number >= first) or (
            number is None and layer.name.startswith("top_"))
        layer.trainable = in_top and not isinstance(layer, keras.layers.BatchNormalization)


def finetune_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The fine-tuning phase's optimizer: cosine from finetune_lr to finetune_lr * lrf."""
    return make_optimizer(dataclasses.replace(
        config, lr=config.finetune_lr, epochs=config.finetune_epochs, warmup_epochs=0),
        steps_per_epoch)


def check_resumable(config: TrainConfig) -> None:
    """UserError unless config.resume is an interrupted run of the same config."""
    run_dir = Path(config.resume)
    needed = [run_dir / name for name in ("train_params.json", "log.json", MATRICES_FILE,
                                          "weights/last.keras")]
    missing = [str(path.relative_to(run_dir)) for path in needed if not path.exists()]
    if missing:
        raise UserError(f"--resume={run_dir} is not a run folder with a completed epoch "
                        f"(missing {', '.join(missing)})")
    saved = json.loads((run_dir / "train_params.json").read_text())["train parameters"]
    current = config.to_dict()
    def same(name):
        there, now = saved.get(name, current[name]), current[name]
        if name in ("data_train", "data_val", "save_ret", "feature_cache"):  # Paths.
            there, now = (os.path.abspath(os.path.expanduser(p)) for p in (there, now))
        return there == now

    differing = [f"{name} ({saved.get(name)!r} there, {current[name]!r} now)"
                 for name in current if name != "resume" and not same(name)]
    if differing:
        raise UserError(f"--resume needs the run's own flags; these differ: {'; '.join(differing)}"
                        f" (use --flagfile={run_dir / 'flags.cfg'} --resume={run_dir})")


def restore_training_state(model: keras.Model, checkpoint: Path) -> None:
    """Copies weights and optimizer state (its step count drives the schedule) from a .keras."""
    saved = keras.models.load_model(checkpoint)
    model.set_weights(saved.get_weights())
    for variable, value in zip(model.optimizer.variables, saved.optimizer.variables):
        variable.assign(value)


def cached_datasets(config: TrainConfig, model: keras.Model, train: folders.ImageFolder,
                    val: folders.ImageFolder) -> tuple:
    """(train, validation) datasets of cached backbone features for the head (computed where
    missing)."""
    cache = feature_cache.FeatureCache(config.feature_cache, model, config.precision)
    print(f"frozen backbone: the head trains on cached features ({cache.folder})")
    train_features, train_ok = cache.features(train.paths, config.cache_views, "train features")
    val_features, val_ok = cache.features(val.paths, 1, "val features")
    return (feature_cache.feature_dataset(
                train_features[train_ok], train.labels[train_ok], train.num_classes,
                config.batch_size, training=True, seed=config.seed, sampling=config.sampling),
            feature_cache.feature_dataset(val_features[val_ok], val.labels[val_ok],
                                          val.num_classes, config.batch_size))


def _train_and_evaluate(config: TrainConfig, verbose: int | str) -> Path:
    if config.resume:
        check_resumable(config)
    strategy = distribute.make_strategy(config.strategy)
    distribute.check_batch_size(strategy, config.batch_size)
    keras.utils.set_random_seed(config.seed)

    # --- Data ---
    train = folders.scan_image_folder(config.data_train)
    val = folders.scan_image_folder(config.data_val, class_names=train.class_names)
    print(folders.describe(train, "train"))
    print(folders.describe(val, "val"))
    weights = class_weights(train.class_counts(), config.class_weight)
    val_dataset = input_pipeline.make_dataset(
        val.paths, val.labels, val.num_classes, config.img_size, config.batch_size)
    steps_per_epoch = math.ceil(len(train.paths) / config.batch_size)

    # --- Model --- (variables of the model, the optimizer and the metric live on every replica)
    with strategy.scope():
        model = models.build_model(config.model, train.num_classes, config.img_size,
                                   config.weights, freeze_backbone=config.freeze_layers,
                                   dropout_rate=config.dropout)
        # Progressive stages train the same layers at other sizes through a twin with a free
        # input size; the fixed-size model is what gets saved. Both share one optimizer, so the
        # saved file carries the optimizer state that --resume needs.
        train_model = model if config.progressive_stages == 1 else models.any_size_twin(
            model, models.backbone_training_mode(config.freeze_layers, config.weights))
        # With a frozen backbone, the head can train on cached backbone features instead.
        head = feature_cache.head_model(model) if config.feature_cache_blocker is None else None
        metric = ConfusionMatrixMetric(train.num_classes)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        compile_models((model, train_model) + ((head,) if head else ()),
                       make_optimizer(config, steps_per_epoch), loss, metric)
    stages = stage_plan(config)

    # --- Run folder ---
    if config.resume:
        run_dir = Path(config.resume)
        recorder = RunRecorder(run_dir, train.class_names, metric, config.monitor, model)
        initial_epoch = recorder.restore()
        with strategy.scope():
            if initial_epoch > config.epochs and config.finetune_epochs:  # Mid fine-tuning.
                unfreeze_top_blocks(models.backbone_of(model), config.unfreeze_blocks)
                compile_models((model, train_model), finetune_optimizer(config, steps_per_epoch),
                               loss, metric)
            restore_training_state(model, run_dir / "weights" / "last.keras")
            if head is not None:
                recorder.resume_head_checkpoint(head, initial_epoch)
        print(f"resuming {run_dir} after epoch {initial_epoch}")
    else:
        run_dir = new_run_dir(config.save_ret)
        _write_run_files(run_dir, config, train, val, model, weights)
        recorder = RunRecorder(run_dir, train.class_names, metric, config.monitor, model)
        initial_epoch = 0
        print(f"run folder: {run_dir}")
    if strategy.num_replicas_in_sync > 1:
        print(f"{type(strategy).__name__}: {strategy.num_replicas_in_sync} replicas, "
              f"{config.batch_size // strategy.num_replicas_in_sync} images per replica and step")

    # --- Train ---
    callbacks = [recorder, keras.callbacks.TerminateOnNaN(),
                 keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False,
                                             profile_batch=0)]
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=config.monitor, mode="min" if recorder.minimize else "max",
            patience=config.patience, verbose=1))
    if head is not None and initial_epoch < config.epochs:
        cached = cached_datasets(config, model, train, val)
    elif config.freeze_layers and config.feature_cache != "none":
        print(f"feature cache not used: {config.feature_cache_blocker}")
    try:
        for stage in stages:
            if stage.last_epoch <= initial_epoch:
                continue
            if stage.finetune:
                if initial_epoch <= config.epochs:  # Else the resume set this phase up already.
                    with strategy.scope():
                        unfreeze_top_blocks(models.backbone_of(model), config.unfreeze_blocks)
                        compile_models((model, train_model),
                                       finetune_optimizer(config, steps_per_epoch), loss, metric)
                print(f"fine-tuning: epochs {stage.first_epoch + 1}-{stage.last_epoch}, "
                      f"{models.count_params(model.trainable_weights):,} trainable parameters, "
                      f"lr {config.finetune_lr}")
            elif config.progressive_stages > 1:
                recorder.stage = {"img_size": stage.img_size, "dropout": round(stage.dropout, 4),
                                  "randaugment_magnitude": round(stage.randaugment_magnitude, 4),
                                  "mixup_alpha": round(stage.mixup_alpha, 4)}
                print(f"stage: epochs {stage.first_epoch + 1}-{stage.last_epoch}, "
                      f"{recorder.stage}")
                model.get_layer(models.HEAD_LAYERS[1]).rate = stage.dropout
                train_model.train_function = None  # Retrace: the dropout rate is traced in.
            if head is not None and not stage.finetune:
                fit_model, (train_dataset, validation) = head, cached
                recorder.head = head
            else:
                fit_model, validation = train_model, val_dataset
                train_dataset = input_pipeline.make_dataset(
                    train.paths, train.labels, train.num_classes, stage.img_size,
                    config.batch_size, training=True, seed=config.seed, sampling=config.sampling,
                    augmentation=dataclasses.replace(
                        config.augmentation, randaugment_magnitude=stage.randaugment_magnitude,
                        mixup_alpha=stage.mixup_alpha), deterministic=config.deterministic)
            with warnings.catch_warnings():
                # The pipeline drops undecodable files, so Keras cannot know the epoch length in
                # advance and would warn about "running out of data" at the end of each epoch.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                fit_model.fit(train_dataset, validation_data=validation,
                              epochs=stage.last_epoch,
                              initial_epoch=max(stage.first_epoch, initial_epoch),
                              callbacks=callbacks, shuffle=False, verbose=verbose,
                              class_weight=weights)
            recorder.write_head_weights()
            recorder.head = None
            if fit_model.stop_training:  # Early stopping or a NaN loss.
                break
    except KeyboardInterrupt:
        # Completed epochs are already saved; leave their reports too before giving up.
        recorder.write_head_weights()
        _write_reports(run_dir, recorder, train.class_names)
        print(f"\ninterrupted after {len(recorder.log)} complete epoch(s); run folder: {run_dir}")
        raise

    # --- Report ---
    _write_reports(run_dir, recorder, train.class_names)
    last_loss = recorder.log[f"epoch:{len(recorder.log)}"]["train info"]["loss"]
    if not math.isfinite(last_loss):
        kept = (f"weights/best.keras holds epoch {recorder.best_epoch}" if recorder.best_epoch
                else "no epoch finished with a finite loss, so there is no weights/best.keras")
        print(f"training stopped in epoch {len(recorder.log)}: the loss became {last_loss} "
              f"(lower --lr?); {kept}")
    elif len(recorder.log) < config.epochs + config.finetune_epochs:
        print(f"early stopping after epoch {len(recorder.log)}: {config.monitor} did not improve "
              f"for {config.patience} epochs")
    if recorder.best_epoch is None:
        if math.isfinite(last_loss):
            print(f"no epoch had a finite {config.monitor}; weights/last.keras holds the last one")
        print(f"run folder: {run_dir}")
        return run_dir
    best = recorder.log[f"epoch:{recorder.best_epoch}"]["valid info"]
    print(f"best epoch {recorder.best_epoch}/{len(recorder.log)} by {config.monitor}: "
          f"val accuracy {best['accuracy']:.4f}, balanced accuracy "
          f"{best['balanced accuracy']:.4f}, mean specificity {best['mean specificity']:.4f}, "
          f"mean F1 {best['mean f1 score']:.4f}")
    print(f"run folder: {run_dir}")
    return run_dir

