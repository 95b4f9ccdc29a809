"""Temperature scaling (Guo et al. 2017): one number T, fitted on validation images by
minimising the negative log-likelihood, that turns the model's softmax into probabilities that
can be taken at their word. p' = softmax(log(p) / T) = softmax(z / T) for the logits z: the
arg-max, so every label, is unchanged.

`calibration.Temperature` is a layer appended to the model, so the .keras file, the SavedModel and every
TFLite kind output calibrated probabilities. `calibrate_run` (`python -m skin_keras.calibrate`,
or `train.py --calibrate` after training) fits T on a run's validation set, keeps the model as
trained in weights/best_uncalibrated.keras, writes the calibrated one to weights/best.keras and
records T with the before/after figures in train_params.json ("calibration").
"""

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from skin_keras import (atomic, calibration, evaluation, inference, model_info, models,
                        open_set, run_folder)
from skin_keras.artifacts import load_model
from skin_keras.config import check_coverage, unknown_options
from skin_keras.errors import UserError
from skin_keras.options import check_options, option

UNCALIBRATED = "best_uncalibrated.keras"
T_RANGE = (0.05, 20.0)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in T_RANGE that minimises the NLL of `labels` (golden-section search on log T;
    the NLL is unimodal in it)."""
    def nll(log_t):
        return calibration.negative_log_likelihood(
            calibration.scaled(probabilities, math.exp(log_t)), labels)

    low, high = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return float(math.exp((low + high) / 2))


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """The same layers (shared weights) with a Temperature layer after the softmax."""
    outputs = calibration.Temperature(temperature, name="temperature")(model.outputs[0])
    return keras.Model(model.inputs if len(model.inputs) > 1 else model.inputs[0], outputs,
                       name=model.name)


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    """What `python -m skin_keras.calibrate` does (its flags)."""

    model_path: str = option(None, "The run folder to calibrate (its weights/best.keras).",
                             required=True, path=True)
    data: str = option("", "Labelled class folders to fit T on; empty = the run's --data_val.",
                       path=True)
    metadata: str = option("none", "For a model trained with --metadata: the CSV of --data's "
                           "patient metadata; none = the run's own --metadata.", path=True,
                           keywords=("none",))
    batch_size: int = option(32, "Images per batch.", low=1, high=65536)
    unknown_score: str = unknown_options()["unknown_score"]
    unknown_coverage: float = unknown_options()["unknown_coverage"]

    def __post_init__(self):
        check_options(self)
        check_coverage(self.unknown_coverage)


def calibrate_run(config: CalibrateConfig) -> dict:
    """Fits T on the run's validation set (or `config.data`), writes the calibrated
    weights/best.keras and train_params.json's "calibration" entry; returns that entry."""
    run_dir = Path(config.model_path)
    weights = run_dir / "weights"
    params_path = run_dir / run_folder.PARAMS_FILE
    if not (weights / "best.keras").is_file() or not params_path.is_file():
        raise UserError(f"--model_path={run_dir}: give a run folder (with weights/best.keras "
                        "and train_params.json); calibration is recorded there")
    params = json.loads(params_path.read_text())
    trained = params["train parameters"]
    source = weights / UNCALIBRATED if (weights / UNCALIBRATED).is_file() else (
        weights / "best.keras")
    loaded = load_model(source)
    data = config.data or trained["data_val"]
    metadata = config.metadata if config.metadata.lower() != "none" else (
        trained.get("metadata") or "none")
    if metadata.lower() == "auto":
        from skin_keras import patient_metadata  # pylint: disable=g-import-not-at-top
        found = patient_metadata.resolve("auto", trained["data_train"])
        metadata = str(found) if found else "none"

    # --- Probabilities of the model as trained ---
    folder = evaluation.labelled_folder(loaded, data)
    present = np.unique(folder.labels)
    if len(present) < 2:
        raise UserError(f"calibrating needs images of at least two classes; {data} has "
                        f"{', '.join(loaded.class_names[i] for i in present) or 'none'}")
    paths = [Path(p) for p in folder.paths]
    records, _ = inference.metadata_records(loaded, metadata, paths)
    loaded = inference.select_backend(loaded, "keras", len(paths))
    probabilities, errors = inference.predict_files(loaded, paths, config.batch_size,
                                                    records=records)
    ok = np.array([error is None for error in errors])
    if any(error == inference.MODEL_NAN for error in errors):
        raise UserError(f"{source} produced NaN for some images of {data}: it cannot be "
                        "calibrated")
    probabilities, labels = probabilities[ok], folder.labels[ok]

    # --- Fit, write ---
    temperature = fit_temperature(probabilities, labels)
    calibrated_probabilities = calibration.scaled(probabilities, temperature)
    detector, kept = fit_unknown_rule(loaded, config, calibrated_probabilities, paths, ok,
                                      trained["data_train"])
    entry = {"temperature": temperature, "fitted on": str(data), "images": int(ok.sum()),
             "before": calibration.calibration_report(probabilities, labels),
             "after": calibration.calibration_report(calibrated_probabilities, labels),
             "unknown": {**detector.rule.to_dict(), "validation images kept": kept},
             "uncalibrated model": f"weights/{UNCALIBRATED}"}
    if not (weights / UNCALIBRATED).is_file():
        atomic.write_atomic(weights / UNCALIBRATED,
                            lambda tmp: shutil.copyfile(weights / "best.keras", tmp),
                            suffix=".keras")
    calibrated = models.with_detector(with_temperature(loaded.require_keras("Calibration"),
                                                       temperature), detector)
    detector.set_weights(detector.fitted)
    info = model_info.ModelInfo.of(calibrated, loaded.class_names)
    atomic.write_atomic(weights / "best.keras",
                        lambda tmp: model_info.save_model(calibrated, tmp, info),
                        suffix=".keras")
    atomic.write_json_atomic(params_path, {**params, "calibration": entry})
    return entry


def fit_unknown_rule(loaded, config: CalibrateConfig, probabilities: np.ndarray, paths: list,
                     ok: np.ndarray, data_train: str) -> tuple[open_set.UnknownDetector, float]:
    """The detector of the "unknown" answer (its weights in `.fitted`): for feature_distance,
    class means and covariance of the training images' pooled features; the threshold keeps
    config.unknown_coverage of the validation images (`probabilities`, calibrated, of
    paths[ok]). Returns it with the share of validation images it keeps."""
    model = loaded.require_keras("Calibration")
    score, fitted = config.unknown_score, []
    if score == "feature_distance" and not models.has_pooled_features(model):
        print("note: this model has no single backbone (an ensemble): the unknown rule uses "
              "max_probability")
        score = "max_probability"
    if score == "max_probability":
        scores = open_set.max_probability(probabilities)
    else:
        if not Path(data_train).is_dir():
            raise UserError(f"the feature_distance unknown rule is fitted on the run's training "
                            f"images, and {data_train} is not there any more: restore it, or "
                            "--unknown_score=max_probability")
        train = evaluation.labelled_folder(loaded, data_train)
        print(f"unknown rule: pooled features of the {len(train.paths)} training images")
        train_features, errors = inference.predict_features(loaded, [Path(p) for p in train.paths],
                                                            config.batch_size)
        good = np.array([error is None for error in errors])
        fitted = open_set.fit_feature_distance(train_features[good], train.labels[good],
                                               len(loaded.class_names))
        val_features, _ = inference.predict_features(loaded, paths, config.batch_size)
        scores = open_set.feature_distance(val_features[ok], *fitted)
    if not np.isfinite(scores).all():
        raise UserError(f"the model gave non-finite {score} scores for some validation images: "
                        "no unknown threshold can be chosen")
    threshold = open_set.threshold_for_coverage(scores, config.unknown_coverage)
    detector = open_set.UnknownDetector(score, threshold, config.unknown_coverage,
                                        len(loaded.class_names), fitted[0].shape[0] if fitted
                                        else 0, name="unknown_detector")
    detector.fitted = list(fitted)
    return detector, float(np.mean(scores >= threshold))


def uncalibrate(run_dir: Path) -> None:
    """Puts the model as trained back into weights/best.keras (a run resumed after calibration
    may find a better epoch; a stale best_uncalibrated.keras would then be refitted later)."""
    weights = Path(run_dir) / "weights"
    if (weights / UNCALIBRATED).is_file():
        os.replace(weights / UNCALIBRATED, weights / "best.keras")
        params_path = Path(run_dir) / run_folder.PARAMS_FILE
        params = json.loads(params_path.read_text())
        params.pop("calibration", None)
        atomic.write_json_atomic(params_path, params)
        print("the run was calibrated: weights/best.keras is the model as trained again "
              "(calibrate after training: --calibrate or python -m skin_keras.calibrate)")


def describe(entry: dict) -> str:
    before, after = entry["before"], entry["after"]
    return (f"temperature {entry['temperature']:.4f} fitted on {entry['images']} images of "
            f"{entry['fitted on']}\n"
            f"  before: ECE {before['expected calibration error']:.4f}, NLL "
            f"{before['negative log-likelihood']:.4f}, Brier {before['brier score']:.4f}\n"
            f"  after:  ECE {after['expected calibration error']:.4f}, NLL "
            f"{after['negative log-likelihood']:.4f}, Brier {after['brier score']:.4f}\n"
            + (f"  unknown: {entry['unknown']['unknown when']} (keeps "
               f"{entry['unknown']['validation images kept']:.1%} of the validation images)\n"
               if "unknown" in entry else "")
            + f"  weights/best.keras is calibrated (labels unchanged); the model as trained is "
            f"{entry['uncalibrated model']}")
