"""train.py's job: one training run as the config asks, with what goes around the loop:
K-fold cross-validation and its ensemble (--folds), then calibration (--calibrate), and on a
multi-worker cluster a scratch run folder for the workers that are not the chief."""

import logging
from pathlib import Path

from skin_keras.core.errors import UserError
from skin_keras.train import distribute, loop, precision
from skin_keras.train.config import TrainConfig
from skin_keras.workflows import cross_validation, fit_calibration

_log = logging.getLogger(__name__)


def run(config: TrainConfig, verbose: int | str = "auto") -> Path:
    """Trains (a model, or with --folds its K members and their ensemble), calibrates with
    --calibrate, and returns the run folder."""
    if config.fold_by and not config.folds and not config.resume:
        raise UserError(f"--fold_by={config.fold_by} needs --folds (the number of "
                        f"{config.fold_by} values in the training images)")
    note = precision.precision_note(precision.resolve(config.precision))
    if note:
        _log.info(f"note: {note}")
    # A worker of a cluster other than the chief writes its run folder into a scratch folder.
    with distribute.worker_scratch(config) as config:
        if config.folds:
            run_dir = cross_validation.train_folds(config, verbose)
        else:
            run_dir = loop.train_and_evaluate(config, verbose)
        if config.calibrate:
            entry = fit_calibration.calibrate_run(fit_calibration.CalibrateConfig(
                model_path=str(run_dir), batch_size=config.batch_size,
                unknown_score=config.unknown_score, unknown_coverage=config.unknown_coverage))
            _log.info(fit_calibration.describe(entry))
    return run_dir
