"""Continuing a killed run (`--resume=runs/expN`): whether the folder can be resumed with this
config, and reopening it at its last completed epoch.

A run killed at any moment continues from its last completed epoch: log.json is written last,
after the epoch's weights, so every epoch it lists is on disk. `check_resumable` refuses other
flags, other classes or a damaged folder before any work; `reopen` restores the log, puts a
calibrated model back as trained, and sets the phase the run was in up again with its weights
and optimizer state (phases.py: the cached-head phase also takes up its head checkpoint). A run
killed before its first epoch ended starts again in its folder.
"""

import dataclasses
import json
import logging
from pathlib import Path

import keras

from skin_keras.core.errors import UserError, first_line
from skin_keras.core.layout import RunFolder, read_class_indices
from skin_keras.train import run_folder
from skin_keras.train.config import TrainConfig
from skin_keras.train.epoch_log import LOG_FILE, MATRICES_FILE, EpochLog

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted run continues: its folder, class names and completed epochs."""
    run_dir: Path
    class_names: tuple[str, ...]
    completed_epochs: int


def check_resumable(config: TrainConfig) -> ResumePoint:
    """UserError unless config.resume is an interrupted run of the same config.

    A run killed before its first epoch ended (no log.json yet) is resumed from scratch in its
    folder; one killed before it wrote its parameters cannot be, and says so.
    """
    run_dir = Path(config.resume)
    if not run_dir.is_dir():
        raise UserError(f"--resume={run_dir} is not a folder")
    if not all((run_dir / name).exists()
               for name in (RunFolder.PARAMS, RunFolder.CLASS_INDICES)):
        raise UserError(f"--resume={run_dir} is not a run folder, or one stopped before it "
                        f"started training (no {RunFolder.PARAMS}): start a new run instead")
    saved = RunFolder(run_dir).read_params()["train parameters"]
    # Runs written before paths were resolved at the start stored them as typed; the config
    # resolves them relative to the current folder, and so does this comparison.
    there = dataclasses.replace(config, **{name: value for name, value in saved.items()
                                           if name in config.to_dict() and name != "resume"})
    current = config.to_dict()
    differing = [f"{name} ({saved.get(name)!r} there, {current[name]!r} now)"
                 for name, value in there.to_dict().items()
                 if name != "resume" and name in saved and value != current[name]]
    if differing:
        raise UserError(f"--resume needs the run's own flags; these differ: {'; '.join(differing)}"
                        f" (use --flagfile={RunFolder(run_dir).flags} --resume={run_dir})")
    class_names = tuple(read_class_indices(RunFolder(run_dir).class_indices))
    if not (run_dir / LOG_FILE).exists():
        return ResumePoint(run_dir, class_names, 0)
    missing = [name for name in (MATRICES_FILE, "weights/last.keras")
               if not (run_dir / name).exists()]
    if missing:
        raise UserError(f"--resume={run_dir} lacks {', '.join(missing)} although log.json lists "
                        "epochs: the run folder is damaged")
    completed = len(_read_json(run_dir / LOG_FILE))
    return ResumePoint(run_dir, class_names, completed)


def recorded_precision(point: ResumePoint | None) -> str | None:
    """The mode a resumed run trained in (what --precision=auto chose for it); None for a new
    run or one recorded before the mode was."""
    if point is None:
        return None
    return RunFolder(point.run_dir).read_params().get("model", {}).get("precision")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not readable JSON: {str(error).splitlines()[0]}") from None


def load_for_resume(path: Path) -> keras.Model:
    """The compiled model saved in a run folder, loaded safely (one line if it cannot be)."""
    import skin_keras.model.layers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (registers them)

    try:
        return keras.models.load_model(path)
    except (ValueError, OSError, TypeError) as error:
        reason = first_line(error)
        raise UserError(f"{path} could not be loaded to resume from: {reason}") from None


def reopen(session, point: ResumePoint, plan: list):
    """Reopens the killed run in `session` at its last completed epoch: its log, the model as
    trained (a calibrated run is put back when an epoch is left to train), the phase it was in set up again with its saved
    state. Returns that phase. (The run's metadata vocabulary is checked before the session's
    model is built: inputs.check_vocabulary.)"""
    session.run_dir = point.run_dir
    if point.completed_epochs < plan[-1].stage.last_epoch:  # (A finished run: nothing trains.)
        run_folder.uncalibrate(point.run_dir)  # Training goes on from the model as trained.
    session.log = EpochLog.restore(point.run_dir, session.data.train.class_names,
                                   session.config.monitor)
    phase = next(phase for phase in plan
                 if phase.stage.first_epoch < point.completed_epochs <= phase.stage.last_epoch)
    phase.enter(session)
    phase.resume(session)
    _log.info(f"resuming {point.run_dir} after epoch {point.completed_epochs}")
    return phase
