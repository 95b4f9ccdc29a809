"""The run folder: a new `<save_ret>/expN` and the files that describe the run (resume.py
decides whether an interrupted one can be continued).

    <save_ret>/expN/
      weights/best.keras, weights/last.keras   full models (raw [0, 255] images in, probabilities
                                               out; each carries its class names, model_info)
      class_indices.json                       {"0": "Actinic keratosis", ...}
      flags.cfg                                replays the run: train.py --flagfile=flags.cfg
      train_params.json                        "train parameters", "dataset", "model" (as the seed)
      log.json, confusion_matrices.json        per epoch (epoch_log)
      confusion_matrix_train.png, confusion_matrix_val.png, curves.png, tensorboard/
"""

import json
import logging
import os
import re
from pathlib import Path

import keras
import tensorflow as tf

from skin_keras.core import atomic, cache
from skin_keras.core.errors import UserError
from skin_keras.model import parts
from skin_keras.train.config import TrainConfig

_log = logging.getLogger(__name__)

CLASS_INDICES = "class_indices.json"
PARAMS_FILE = "train_params.json"
FLAGS_FILE = "flags.cfg"
# Calibration keeps the model as trained here (workflows/calibrate.py).
UNCALIBRATED = "best_uncalibrated.keras"


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


def read_class_indices(path: str | Path) -> list[str]:
    """The class names of a class_indices.json ({"0": name, ...}); one-line UserError when the
    file is not that."""
    path = Path(path)
    try:
        indices = json.loads(path.read_text())
        if not isinstance(indices, dict) or not indices:
            raise ValueError("not a non-empty JSON object")
        names = [indices[str(i)] for i in range(len(indices))]
        if not all(isinstance(name, str) and name for name in names):
            raise ValueError("class names must be non-empty strings")
    except (OSError, ValueError, KeyError) as error:
        reason = f"no key {error}" if isinstance(error, KeyError) else str(error).splitlines()[0]
        raise UserError(f"{path} is not a class index file ({{\"0\": \"class name\", ...}}): "
                        f"{reason}") from None
    return names


def write_class_indices(run_dir: Path, class_names) -> None:
    atomic.write_json_atomic(run_dir / CLASS_INDICES,
                             {str(i): name for i, name in enumerate(class_names)})


def write_run_files(run_dir: Path, config: TrainConfig, data, model: keras.Model,
                    weights: dict[int, float] | None, precision: str = "float32") -> None:
    """class_indices.json, flags.cfg and train_params.json of a new run (`data`: its
    inputs.RunData)."""
    train, val = data.train, data.val
    (run_dir / "weights").mkdir(exist_ok=True)
    write_class_indices(run_dir, train.class_names)
    atomic.write_text_atomic(run_dir / FLAGS_FILE, config.to_flagfile())
    preprocessing = parts.describe_preprocessing(model)
    atomic.write_json_atomic(run_dir / PARAMS_FILE, {
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


def read_params(run_dir: str | Path) -> dict:
    """A run's train_params.json; UserError (one line) when it is not what training wrote."""
    path = Path(run_dir) / PARAMS_FILE
    try:
        params = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not readable JSON: {str(error).splitlines()[0]}") from None
    if not isinstance(params, dict) or not isinstance(params.get("train parameters"), dict):
        raise UserError(f"{path} is not a run's train_params.json (no \"train parameters\")")
    return params


def uncalibrate(run_dir: Path) -> None:
    """Puts the model as trained back into weights/best.keras (a run resumed after calibration
    may find a better epoch; a stale best_uncalibrated.keras would then be refitted later)."""
    weights = Path(run_dir) / "weights"
    if (weights / UNCALIBRATED).is_file():
        os.replace(weights / UNCALIBRATED, weights / "best.keras")
        params_path = Path(run_dir) / PARAMS_FILE
        params = read_params(run_dir)
        params.pop("calibration", None)
        atomic.write_json_atomic(params_path, params)
        _log.info("the run was calibrated: weights/best.keras is the model as trained again "
                  "(calibrate after training: --calibrate or python -m skin_keras.calibrate)")
