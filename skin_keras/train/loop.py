"""Training: `train_and_evaluate(config)` turns a TrainConfig into a complete run folder
(run_folder.py describes its files).

The loop reads as the steps of a run: check a resume, read the data, build the session, open
(or reopen) the run folder, fit phase by phase (phases.py), write the reports and say how it
went. Cross-validation and calibration are workflows on top (workflows/training.py).
"""

import functools
import logging
import math
import sys
import warnings
from pathlib import Path

import keras

from skin_keras.core import plots
from skin_keras.core.errors import UserError
from skin_keras.core.layout import RunFolder
from skin_keras.model.metrics import matrix_title
from skin_keras.train import (custom_loop, distribute, inputs, phases, precision, resume,
                              run_folder)
from skin_keras.train import session as sessions
from skin_keras.train.checkpoints import RunRecorder
from skin_keras.train.config import TrainConfig
from skin_keras.train.epoch_log import EpochLog
from skin_keras.train.weight_average import WeightAverage

_log = logging.getLogger(__name__)
# Exit code of train.py when the run diverged (a NaN or infinite loss) or no epoch gave usable
# validation outputs: the run folder exists, but its model should not be used as it is.
DIVERGED_EXIT_CODE = 3


class TrainingDiverged(UserError):
    """The loss became NaN or infinite, or no epoch had finite validation outputs."""

    exit_code = DIVERGED_EXIT_CODE

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


class KnownStepsProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar with the epoch's length from the first epoch on (`1/Unknown`
    otherwise: the pipeline that drops a file failing to decode cannot tell its length)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def set_params(self, params):
        super().set_params(params)
        self.target = self.target or self.steps


def train_and_evaluate(config: TrainConfig, verbose: int | str = "auto",
                       run_dir: Path | None = None) -> Path:
    """Trains one classifier as `config` says and returns the run folder it wrote: `run_dir`,
    or a new <save_ret>/expN (or the --resume folder).

    Raises TrainingDiverged (after writing the run folder) when the run diverged.
    """
    if verbose == "auto":  # Keras' live bar in a terminal; one line per epoch in a log file.
        verbose = 1 if sys.stdout.isatty() else 2
    # The dtype policy and graph rewrites are global: left as they were for whatever runs next.
    with precision.restored():
        return _train(config, verbose, run_dir)


def _train(config: TrainConfig, verbose: int, run_dir: Path | None) -> Path:
    # --- Data and models ---
    # The strategy first: a multi-worker one cannot be made once TensorFlow has run an op
    # (checking the images does, on a dataset not seen before).
    strategy = distribute.make_strategy(config.strategy, config.cluster_timeout)
    point = resume.check_resumable(config) if config.resume else None
    data = inputs.read_run_data(config, point.class_names if point else None)
    if point and point.completed_epochs:
        inputs.check_vocabulary(RunFolder(point.run_dir).params, data)
    mode = precision.choose(config, data.train.num_classes, resume.recorded_precision(point),
                            custom_loop.needs_custom_loop(strategy))
    precision.apply(mode)
    session = sessions.build(config, data, strategy, mode)
    plan = phases.plan(session)

    # --- Run folder: new, or the resumed run's at its last completed epoch ---
    start, continued = 0, None
    if point and point.completed_epochs:
        start, continued = point.completed_epochs, resume.reopen(session, point, plan)
    else:  # A new run, or one killed before its first epoch ended: from scratch.
        sessions.open_folder(session, point.run_dir if point else run_dir)
        _log.info(f"restarting {session.run_dir} from scratch (it stopped before its first "
                  "epoch ended)" if point else f"run folder: {session.run_dir}")
    replicas = session.strategy.num_replicas_in_sync
    if replicas > 1:
        _log.info(f"{type(session.strategy).__name__}: {replicas} replicas, "
                  f"{config.batch_size // replicas} images per replica and step")

    # --- Train ---
    callbacks = _callbacks(session)
    checkpoints = None
    try:
        for phase in plan:
            if phase.stage.last_epoch <= start:
                continue
            if phase is not continued:
                phase.enter(session)
            train, validation = phase.datasets(session)
            checkpoints = phase.checkpoints(session)
            model = phase.fit_model(session)
            _fit(session, model, train, validation, max(phase.stage.first_epoch, start),
                 phase.stage.last_epoch, [RunRecorder(session.run_dir, session.log, session.metric,
                                                checkpoints, phase.log_entry), *callbacks],
                 verbose)
            checkpoints.finish()
            checkpoints = None
            if model.stop_training:  # Early stopping or a NaN loss.
                break
    except (custom_loop.ClusterLost, KeyboardInterrupt) as error:
        # Completed epochs are already saved; leave their reports too before giving up.
        if checkpoints is not None:
            checkpoints.finish()
        _write_reports(session.run_dir, session.log)
        _stopped(error, session)

    # --- Report ---
    _write_reports(session.run_dir, session.log)
    _summarize(config, session.log, session.run_dir)
    return session.run_dir


def _callbacks(session: sessions.Session) -> list:
    config = session.config
    callbacks = [keras.callbacks.TerminateOnNaN(),
                 keras.callbacks.TensorBoard(str(session.run_dir / "tensorboard"),
                                             write_graph=False, profile_batch=0),
                 KnownStepsProgbar(session.steps_per_epoch)]
    if session.strategy.num_replicas_in_sync > 1:
        callbacks.append(distribute.AverageMovingStatistics(session.strategy, session.model))
    if config.average_epochs:
        callbacks.append(WeightAverage(session, config.average_epochs,
                                       config.epochs + config.finetune_epochs))
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=config.monitor, mode="min" if session.log.minimize else "max",
            patience=config.patience, verbose=1))
    return callbacks


def _fit(session, model, train, validation, first_epoch, last_epoch, callbacks, verbose):
    with warnings.catch_warnings():
        # Keras cannot know the epoch length of a pipeline that drops undecodable files and
        # warns about "running out of data" at the end of each epoch.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        fit = (functools.partial(custom_loop.fit, model)
               if custom_loop.needs_custom_loop(session.strategy)
               else functools.partial(model.fit, shuffle=False))
        fit(train, validation_data=validation, epochs=last_epoch, initial_epoch=first_epoch,
            callbacks=callbacks, verbose=verbose, class_weight=session.class_weights)


def _stopped(error: BaseException, session: sessions.Session) -> None:
    """Re-raises a lost cluster or Ctrl-C with what to do next."""
    run_dir = session.run_dir
    if isinstance(error, KeyboardInterrupt):
        _log.info(f"\ninterrupted after {session.log.epochs} complete epoch(s); run folder: "
                  f"{run_dir}")
        raise error
    raise custom_loop.ClusterLost(
        f"{error}; the completed epochs are in {run_dir}: start every worker again with "
        f"--flagfile={run_dir / 'flags.cfg'} --resume={run_dir}" if distribute.is_chief_task()
        else f"{error}; start every worker again with the run's flags and --resume=<the "
        "chief's run folder>") from None


def _write_reports(run_dir: Path, log: EpochLog) -> None:
    best = log.best_matrices()
    if best is not None:
        for split, matrix in zip(("train", "val"), best):
            plots.confusion_matrix(
                matrix, log.class_names, run_dir / f"confusion_matrix_{split}.png",
                title=matrix_title(f"{split}, best epoch {log.best_epoch}", matrix))
    if log.entries:
        plots.curves(log.entries, run_dir / "curves.png")


def _summarize(config: TrainConfig, log: EpochLog, run_dir: Path) -> None:
    """Logs how the run ended; raises TrainingDiverged when its model is not usable."""
    last_loss = log.last_train_loss()
    total = config.epochs + config.finetune_epochs
    if not math.isfinite(last_loss):
        kept = (f"weights/best.keras holds epoch {log.best_epoch}" if log.best_epoch
                else "no epoch finished with finite losses, so there is no weights/best.keras")
        raise TrainingDiverged(f"training diverged in epoch {log.epochs}: the loss became "
                               f"{last_loss} (lower --lr?); {kept}; run folder: {run_dir}",
                               run_dir)
    if log.epochs < total:
        _log.info(f"early stopping after epoch {log.epochs}: {config.monitor} did not improve "
                  f"for {config.patience} epochs")
    if log.best_epoch is None:
        raise TrainingDiverged(f"no epoch had finite validation outputs (loss and "
                               f"{config.monitor}), so there is no weights/best.keras; "
                               f"weights/last.keras holds epoch {log.epochs}; run folder: "
                               f"{run_dir}", run_dir)
    flagged = [name for name, entry in log.entries.items() if "non-finite" in entry]
    if flagged:
        _log.info(f"never chosen as best, non-finite loss: {', '.join(flagged)} (see log.json)")
    best = log.entries[f"epoch:{log.best_epoch}"]["valid info"]
    _log.info(f"best epoch {log.best_epoch}/{log.epochs} by {config.monitor}: "
              f"val accuracy {best['accuracy']:.4f}, balanced accuracy "
              f"{best['balanced accuracy']:.4f}, mean specificity "
              f"{best['mean specificity']:.4f}, mean F1 {best['mean f1 score']:.4f}")
    _log.info(f"run folder: {run_dir}")
