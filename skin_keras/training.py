"""Training: `train_and_evaluate(config)` turns a TrainConfig into a complete run folder
(`run_folder` describes its files).

The body reads as the steps of a run: check a resume, scan the data, build and compile the model,
open the run folder, fit stage by stage (progressive sizes, cached-feature head epochs, then
fine-tuning), write the reports and say how it went.
"""

import dataclasses
import functools
import json
import math
import sys
import warnings
from pathlib import Path

import keras

import numpy as np

from skin_keras import (cross_validation, custom_loop, decode_check, distribute, feature_cache,
                        folders, input_pipeline, models, patient_metadata, reports, run_folder,
                        temperature)
from skin_keras.checkpointing import FullModelCheckpoints, HeadCheckpoints, RunRecorder
from skin_keras.config import TrainConfig
from skin_keras.epoch_log import EpochLog
from skin_keras.errors import UserError
from skin_keras.metadata_encoding import PatientMetadata, row_blanker
from skin_keras.metrics import ConfusionMatrixMetric
from skin_keras.model_info import ModelInfo
from skin_keras.recipe import class_weights, finetune_optimizer, make_optimizer, stage_plan

# Exit code of train.py when the run diverged (a NaN or infinite loss) or no epoch gave usable
# validation outputs: the run folder exists, but its model should not be used as it is.
DIVERGED_EXIT_CODE = 3


class TrainingDiverged(UserError):
    """The loss became NaN or infinite, or no epoch had finite validation outputs."""

    exit_code = DIVERGED_EXIT_CODE

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


def train_and_evaluate(config: TrainConfig, verbose: int | str = "auto",
                       run_dir: Path | None = None) -> Path:
    """Trains a classifier as `config` says (with --folds, K members and their ensemble:
    cross_validation) and returns the run folder it wrote: `run_dir`, or a new
    <save_ret>/expN.

    Raises TrainingDiverged (after writing the run folder) when the run diverged.
    """
    if verbose == "auto":  # Keras' live bar in a terminal; one line per epoch in a log file.
        verbose = 1 if sys.stdout.isatty() else 2
    note = distribute.precision_note(config.precision) if run_dir is None else None
    if note:  # Once per command, not per cross-validation member.
        print(f"note: {note}")
    if run_dir is not None:  # A cross-validation member.
        return _train(config, verbose, run_dir)
    # A worker of a cluster other than the chief writes its run folder into a scratch folder.
    with distribute.worker_scratch(config) as config:
        return _train(config, verbose, None)


def _train(config: TrainConfig, verbose: int, run_dir: Path | None) -> Path:
    if config.folds:
        return cross_validation.train_folds(config, train_and_evaluate, verbose)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        return _train_and_evaluate(config, verbose, run_dir)
    finally:  # The dtype policy is global: leave it as it was for whatever runs next.
        keras.mixed_precision.set_global_policy(previous_policy)


class KnownStepsProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar with the epoch's length from the first epoch on (`1/Unknown`
    otherwise: the pipeline that drops a file failing to decode cannot tell its length)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def set_params(self, params):
        super().set_params(params)
        self.target = self.target or self.steps


def compile_models(models_to_compile, optimizer, loss, metric, jit_compile: str = "auto"
                   ) -> None:
    """Compiles the model(s) with one optimizer, loss and metric, and builds the optimizer.
    `jit_compile` is --jit_compile: auto leaves XLA to Keras (on with an accelerator, off on
    CPU-only machines), on/off force it.

    Creating the optimizer's slots here, outside tf.function, saves tracing the training step
    twice (about half a minute for B0 on a 2-core CPU).
    """
    unique = {id(m): m for m in models_to_compile}.values()
    for model in unique:
        model.compile(optimizer=optimizer, loss=loss, metrics=[metric],
                      jit_compile={"on": True, "off": False}.get(jit_compile, "auto"))
    optimizer.build(list(unique)[-1].trainable_variables)


def _check_metadata_vocabulary(run_dir: Path, metadata: "MetadataInputs | None") -> None:
    """UserError when the metadata CSV now gives other categories than the run recorded (the
    model's input would mean something else); before any model is built."""
    params = json.loads((run_dir / run_folder.PARAMS_FILE).read_text())
    recorded = (params.get("model", {}).get("metadata") or {}).get("vocabulary")
    now = None if metadata is None else metadata.encoding.describe()["vocabulary"]
    if recorded != now:
        raise UserError(f"--resume: the metadata CSV now gives other categories than the run "
                        f"was started with ({recorded} then, {now} now); resume with the CSV "
                        "the run used")


def restore_training_state(model: keras.Model, checkpoint: Path) -> None:
    """Copies weights and optimizer state (its step count drives the schedule) from a .keras."""
    saved = run_folder.load_for_resume(checkpoint)
    model.set_weights(saved.get_weights())
    for variable, value in zip(model.optimizer.variables, saved.optimizer.variables):
        variable.assign(value)


def scan_data(config: TrainConfig, class_names=None) -> tuple[folders.ImageFolder, ...]:
    """The training and validation folders, every file checked by a full decode; printed.

    `class_names` (a resumed run's) must be exactly the training folder's classes.
    """
    if class_names is not None:
        found = folders.find_class_names(config.data_train)
        if tuple(found) != tuple(class_names):
            missing = sorted(set(class_names) - set(found))
            extra = sorted(set(found) - set(class_names))
            raise UserError(
                f"--resume: the class folders of {config.data_train} are not the run's classes "
                f"(class_indices.json): missing {', '.join(missing) or 'none'}; new "
                f"{', '.join(extra) or 'none'}; resuming would train on other labels")
    train = folders.scan_image_folder(config.data_train, class_names=class_names)
    val = folders.scan_image_folder(config.data_val, class_names=train.class_names)
    train = decode_check.set_aside_undecodable(train, "train")
    val = decode_check.set_aside_undecodable(val, "val")
    print(folders.describe(train, "train"))
    print(folders.describe(val, "val"))
    return train, val


@dataclasses.dataclass(frozen=True)
class MetadataInputs:
    """A run's patient metadata: its encoding (learned from the training rows), the encoded
    vectors of the training and validation images, and the coverage summary."""

    encoding: PatientMetadata
    train: np.ndarray
    val: np.ndarray
    summary: dict
    blank: object = None  # The training pipeline's row blanker (--metadata_dropout).


def read_metadata(config: TrainConfig, train: folders.ImageFolder,
                  val: folders.ImageFolder) -> MetadataInputs | None:
    """The run's metadata, or None for an image-only run (--metadata=none, or auto without a
    metadata.csv)."""
    path = patient_metadata.resolve(config.metadata, config.data_train)
    if path is None:
        if config.metadata.lower() == patient_metadata.AUTO:
            print("metadata: auto, but no metadata.csv beside the data folders: image only")
        return None
    table = patient_metadata.read_table(path)
    summary = patient_metadata.check_for_training(table, train.paths, val.paths)
    print(patient_metadata.describe_coverage(summary))
    train_records, _ = table.lookup(train.paths)
    encoding = PatientMetadata.fit(train_records)
    val_records, _ = table.lookup(val.paths)
    blank = row_blanker(encoding, config.metadata_dropout, config.seed) if (
        config.metadata_dropout) else None
    return MetadataInputs(encoding, encoding.encode_records(train_records),
                          encoding.encode_records(val_records),
                          {**summary, **encoding.describe(),
                           "training dropout": config.metadata_dropout}, blank)


def cached_datasets(config: TrainConfig, model: keras.Model, train: folders.ImageFolder,
                    val: folders.ImageFolder, metadata: MetadataInputs | None) -> tuple:
    """(train, validation) datasets of cached backbone features for the head (computed where
    missing), with the metadata vectors beside them for a metadata run."""
    cache = feature_cache.FeatureCache(config.feature_cache, model, config.precision)
    print(f"frozen backbone: the head trains on cached features ({cache.folder})")
    train_features, train_ok = cache.features(train.paths, config.cache_views, "train features")
    val_features, val_ok = cache.features(val.paths, 1, "val features")
    return (feature_cache.feature_dataset(
                train_features[train_ok], train.labels[train_ok], train.num_classes,
                config.batch_size, training=True, seed=config.seed, sampling=config.sampling,
                metadata=None if metadata is None else metadata.train[train_ok],
                blank_metadata=metadata and metadata.blank),
            feature_cache.feature_dataset(
                val_features[val_ok], val.labels[val_ok], val.num_classes, config.batch_size,
                metadata=None if metadata is None else metadata.val[val_ok]))


def _train_and_evaluate(config: TrainConfig, verbose: int | str, run_dir: Path | None) -> Path:
    resume = run_folder.check_resumable(config) if config.resume else None
    strategy = distribute.make_strategy(config.strategy)
    distribute.check_batch_size(strategy, config.batch_size)
    keras.utils.set_random_seed(config.seed)

    # --- Data ---
    train, val = scan_data(config, resume.class_names if resume else None)
    metadata = read_metadata(config, train, val)
    if resume and resume.completed_epochs:
        _check_metadata_vocabulary(resume.run_dir, metadata)
    weights = class_weights(train.class_counts(), config.class_weight)
    val_dataset = input_pipeline.make_dataset(
        val.paths, val.labels, val.num_classes, config.img_size, config.batch_size,
        metadata=None if metadata is None else metadata.val)
    steps_per_epoch = math.ceil(len(train.paths) / config.batch_size)

    # --- Model --- (variables of the model, the optimizer and the metric live on every replica)
    with strategy.scope():
        model = models.build_model(config.model, train.num_classes, config.img_size,
                                   config.weights, freeze_backbone=config.freeze_layers,
                                   dropout_rate=config.dropout,
                                   color_constancy=config.color_constancy,
                                   cc_power=config.cc_power,
                                   metadata_encoding=metadata and metadata.encoding)
        # Progressive stages train the same layers at other sizes through a twin with a free
        # input size; the fixed-size model is what gets saved. Both share one optimizer, so the
        # saved file carries the optimizer state that --resume needs.
        train_model = model if config.progressive_stages == 1 else models.any_size_twin(
            model, models.backbone_training_mode(config.freeze_layers, config.weights))
        # With a frozen backbone, the head can train on cached backbone features instead.
        head = models.head_model(model) if config.feature_cache_blocker is None else None
        metric = ConfusionMatrixMetric(train.num_classes)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        compile_models((model, train_model) + ((head,) if head else ()),
                       make_optimizer(config, steps_per_epoch), loss, metric,
                       config.jit_compile)
    info = ModelInfo.of(model, train.class_names)

    # --- Run folder ---
    if resume and resume.completed_epochs:
        run_dir, initial_epoch = resume.run_dir, resume.completed_epochs
        temperature.uncalibrate(run_dir)  # Training goes on from the model as trained.
        log = EpochLog.restore(run_dir, train.class_names, config.monitor)
        with strategy.scope():
            if initial_epoch > config.epochs and config.finetune_epochs:  # Mid fine-tuning.
                models.unfreeze_top_blocks(models.backbone_of(model), config.unfreeze_blocks)
                compile_models((model, train_model), finetune_optimizer(config, steps_per_epoch),
                               loss, metric, config.jit_compile)
            restore_training_state(model, run_dir / "weights" / "last.keras")
            if head is not None:
                HeadCheckpoints(run_dir / "weights", model, info, head).resume(initial_epoch, log)
        print(f"resuming {run_dir} after epoch {initial_epoch}")
    else:  # A new run, or one killed before its first epoch ended: from scratch.
        if resume:
            run_dir = resume.run_dir
        elif run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            run_dir = run_folder.new_run_dir(config.save_ret)
        run_folder.write_run_files(run_dir, config, train, val, model, weights,
                                   metadata.summary if metadata else None)
        log, initial_epoch = EpochLog(train.class_names, config.monitor), 0
        print(f"restarting {run_dir} from scratch (it stopped before its first epoch ended)"
              if resume else f"run folder: {run_dir}")
    if strategy.num_replicas_in_sync > 1:
        print(f"{type(strategy).__name__}: {strategy.num_replicas_in_sync} replicas, "
              f"{config.batch_size // strategy.num_replicas_in_sync} images per replica and step")

    # --- Train ---
    callbacks = [keras.callbacks.TerminateOnNaN(),
                 keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False,
                                             profile_batch=0),
                 KnownStepsProgbar(steps_per_epoch)]
    if strategy.num_replicas_in_sync > 1:
        callbacks.append(distribute.AverageMovingStatistics(strategy, model))
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=config.monitor, mode="min" if log.minimize else "max",
            patience=config.patience, verbose=1))
    cached = None
    if head is not None and initial_epoch < config.epochs:
        cached = cached_datasets(config, model, train, val, metadata)
    elif config.freeze_layers and config.feature_cache != "none":
        print(f"feature cache not used: {config.feature_cache_blocker}")
    checkpoints = None
    try:
        for stage in stage_plan(config):
            if stage.last_epoch <= initial_epoch:
                continue
            if stage.finetune:
                if initial_epoch <= config.epochs:  # Else the resume set this phase up already.
                    with strategy.scope():
                        models.unfreeze_top_blocks(models.backbone_of(model),
                                                   config.unfreeze_blocks)
                        compile_models((model, train_model),
                                       finetune_optimizer(config, steps_per_epoch), loss, metric,
                                       config.jit_compile)
                print(f"fine-tuning: epochs {stage.first_epoch + 1}-{stage.last_epoch}, "
                      f"{models.count_params(model.trainable_weights):,} trainable parameters, "
                      f"lr {config.finetune_lr}")
            progressive = config.progressive_stages > 1 and not stage.finetune
            if progressive:
                print(f"stage: epochs {stage.first_epoch + 1}-{stage.last_epoch}, "
                      f"{stage.log_entry()}")
                model.get_layer(models.HEAD_LAYERS[1]).rate = stage.dropout
                train_model.train_function = None  # Retrace: the dropout rate is traced in.
            if cached is not None and not stage.finetune:
                fit_model, (train_dataset, validation) = head, cached
                checkpoints = HeadCheckpoints(run_dir / "weights", model, info, head,
                                              best_on_disk=log.best_epoch)
            else:
                fit_model, validation = train_model, val_dataset
                train_dataset = _stage_dataset(config, train, stage, metadata)
                checkpoints = FullModelCheckpoints(run_dir / "weights", model, info)
            recorder = RunRecorder(run_dir, log, metric, checkpoints,
                                   stage.log_entry() if progressive else None)
            with warnings.catch_warnings():
                # Keras cannot know the epoch length of a pipeline that drops undecodable files
                # and warns about "running out of data" at the end of each epoch.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                fit = (functools.partial(custom_loop.fit, fit_model)
                       if custom_loop.needs_custom_loop(strategy)
                       else functools.partial(fit_model.fit, shuffle=False))
                fit(train_dataset, validation_data=validation, epochs=stage.last_epoch,
                    initial_epoch=max(stage.first_epoch, initial_epoch),
                    callbacks=[recorder, *callbacks], verbose=verbose, class_weight=weights)
            checkpoints.finish()
            if fit_model.stop_training:  # Early stopping or a NaN loss.
                break
    except custom_loop.ClusterLost as error:
        if checkpoints is not None:
            checkpoints.finish()
        _write_reports(run_dir, log)
        where = (f"the completed epochs are in {run_dir}: start every worker again with "
                 f"--flagfile={run_dir / 'flags.cfg'} --resume={run_dir}")
        raise custom_loop.ClusterLost(
            f"{error}; {where}" if distribute.is_chief_task() else
            f"{error}; start every worker again with the run's flags and --resume=<the "
            "chief's run folder>") from None
    except KeyboardInterrupt:
        # Completed epochs are already saved; leave their reports too before giving up.
        if checkpoints is not None:
            checkpoints.finish()
        _write_reports(run_dir, log)
        print(f"\ninterrupted after {log.epochs} complete epoch(s); run folder: {run_dir}")
        raise

    # --- Report ---
    _write_reports(run_dir, log)
    _summarize(config, log, run_dir)
    if config.calibrate:
        print(temperature.describe(temperature.calibrate_run(temperature.CalibrateConfig(
            model_path=str(run_dir), batch_size=config.batch_size,
            unknown_score=config.unknown_score, unknown_coverage=config.unknown_coverage))))
    return run_dir


def _stage_dataset(config: TrainConfig, train: folders.ImageFolder, stage,
                   metadata: MetadataInputs | None):
    return input_pipeline.make_dataset(
        train.paths, train.labels, train.num_classes, stage.img_size, config.batch_size,
        training=True, seed=config.seed, sampling=config.sampling,
        augmentation=dataclasses.replace(config.augmentation,
                                         randaugment_magnitude=stage.randaugment_magnitude,
                                         mixup_alpha=stage.mixup_alpha),
        deterministic=config.deterministic, metadata=metadata and metadata.train,
        blank_metadata=metadata and metadata.blank)


def _write_reports(run_dir: Path, log: EpochLog) -> None:
    best = log.best_matrices()
    if best is not None:
        for split, matrix in zip(("train", "val"), best):
            reports.plot_confusion_matrix(
                matrix, log.class_names, run_dir / f"confusion_matrix_{split}.png",
                title=f"{split}, best epoch {log.best_epoch}")
    if log.entries:
        reports.plot_curves(log.entries, run_dir / "curves.png")


def _summarize(config: TrainConfig, log: EpochLog, run_dir: Path) -> None:
    """Prints how the run ended; raises TrainingDiverged when its model is not usable."""
    last_loss = log.last_train_loss()
    total = config.epochs + config.finetune_epochs
    if not math.isfinite(last_loss):
        kept = (f"weights/best.keras holds epoch {log.best_epoch}" if log.best_epoch
                else "no epoch finished with finite losses, so there is no weights/best.keras")
        raise TrainingDiverged(f"training diverged in epoch {log.epochs}: the loss became "
                               f"{last_loss} (lower --lr?); {kept}; run folder: {run_dir}",
                               run_dir)
    if log.epochs < total:
        print(f"early stopping after epoch {log.epochs}: {config.monitor} did not improve for "
              f"{config.patience} epochs")
    if log.best_epoch is None:
        raise TrainingDiverged(f"no epoch had finite validation outputs (loss and "
                               f"{config.monitor}), so there is no weights/best.keras; "
                               f"weights/last.keras holds epoch {log.epochs}; run folder: "
                               f"{run_dir}", run_dir)
    flagged = [name for name, entry in log.entries.items() if "non-finite" in entry]
    if flagged:
        print(f"never chosen as best, non-finite loss: {', '.join(flagged)} (see log.json)")
    best = log.entries[f"epoch:{log.best_epoch}"]["valid info"]
    print(f"best epoch {log.best_epoch}/{log.epochs} by {config.monitor}: "
          f"val accuracy {best['accuracy']:.4f}, balanced accuracy "
          f"{best['balanced accuracy']:.4f}, mean specificity {best['mean specificity']:.4f}, "
          f"mean F1 {best['mean f1 score']:.4f}")
    print(f"run folder: {run_dir}")

