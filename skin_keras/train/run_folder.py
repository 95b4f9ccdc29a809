"""The run folder: a new `<save_ret>/expN` and the files that describe the run, written
(core/layout.py's RunFolder names them and reads them back; resume.py decides whether an
interrupted run can be continued).

    <save_ret>/expN/
      weights/best.keras, weights/last.keras   full models (raw [0, 255] images in, probabilities
                                               out; each carries its class names, model_info)
      class_indices.json                       {"0": "Actinic keratosis", ...}
      flags.cfg                                replays the run: train.py --flagfile=flags.cfg
      train_params.json                        "train parameters", "dataset", "model" (as the seed)
      log.json, confusion_matrices.json        per epoch (epoch_log)
      confusion_matrix_train.png, confusion_matrix_val.png, curves.png, tensorboard/
"""

import logging
import os
import re
from pathlib import Path

import keras
import tensorflow as tf

from skin_keras.core import atomic, cache
from skin_keras.core.errors import UserError
from skin_keras.core.layout import RunFolder
from skin_keras.model import parts
from skin_keras.train.config import TrainConfig

_log = logging.getLogger(__name__)



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


def write_class_indices(run_dir: Path, class_names) -> None:
    atomic.write_json_atomic(RunFolder(run_dir).class_indices,
                             {str(i): name for i, name in enumerate(class_names)})


def write_run_files(run_dir: Path, config: TrainConfig, data, model: keras.Model,
                    weights: dict[int, float] | None, precision: str = "float32") -> None:
    """class_indices.json, flags.cfg and train_params.json of a new run (`data`: its
    inputs.RunData)."""
    train, val, run = data.train, data.val, RunFolder(run_dir)
    run.weights.mkdir(exist_ok=True)
    write_class_indices(run_dir, train.class_names)
    atomic.write_text_atomic(run.flags, config.to_flagfile())
    preprocessing = parts.describe_preprocessing(model)
    atomic.write_json_atomic(run.params, {
        "train parameters": config.to_dict(),
        "dataset": {
            "trainset number": len(train.paths),
            "valset number": len(val.paths),
            "number classes": train.num_classes,
            "trainset per class": dict(zip(train.class_names, map(int, train.class_counts()))),
            "valset per class": dict(zip(val.class_names, map(int, val.class_counts()))),
            "bad files": [f"{path}: {reason}" for path, reason in train.bad_files + val.bad_files],
            "decode warnings": [f"{path}: {warning}" for path, warning
                                in train.decode_warnings + val.decode_warnings],
            "skipped non-image files": len(train.skipped) + len(val.skipped),
            "class weights": None if weights is None else {
                name: round(weights[i], 6) for i, name in enumerate(train.class_names)},
        },
        "model": {
            "total parameters": model.count_params(),
            "train parameters": parts.count_params(model.trainable_weights),
            "preprocessing": preprocessing,
            "metadata": data.metadata,
            "precision": precision,  # The mode it trains in (what --precision=auto chose).
            # Counting takes seconds for the large models: once per architecture and size.
            "flops": cache.memoized("flops", f"{model.name}/{parts.image_size(model)}/"
                                    f"{model.outputs[0].shape}/{preprocessing}/"
                                    f"{sorted(model.input)}/tf{tf.__version__}",
                                    lambda: parts.count_flops(model)),
        },
    })


def uncalibrate(run_dir: Path) -> None:
    """Puts the model as trained back into weights/best.keras (a run resumed after calibration
    may find a better epoch; a stale best_uncalibrated.keras would then be refitted later)."""
    run = RunFolder(run_dir)
    if run.uncalibrated.is_file():
        os.replace(run.uncalibrated, run.best)
        params = run.read_params()
        params.pop("calibration", None)
        atomic.write_json_atomic(run.params, params)
        _log.info("the run was calibrated: weights/best.keras is the model as trained again "
                  "(calibrate after training: --calibrate or python -m skin_keras.calibrate)")
