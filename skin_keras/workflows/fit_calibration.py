"""Calibrating a trained run: temperature scaling and the "unknown" rule, fitted on its
validation set (`python -m skin_keras.calibrate`, or `train.py --calibrate` after training).

Temperature scaling (Guo et al. 2017): one number T, fitted on validation images by minimising
the negative log-likelihood, that turns the model's softmax into probabilities that can be taken
at their word: p' = softmax(log(p) / T) = softmax(z / T) for the logits z, so the arg-max, and
every label, is unchanged. The `Temperature` layer and the `UnknownScore` layer (the rule, as
model/layers/unknown.py describes it) are appended to the model, so the .keras file, the
SavedModel and every TFLite and ONNX file answer calibrated probabilities and the unknown score.
`calibrate_run` keeps the model as trained in weights/best_uncalibrated.keras, writes the
calibrated one to weights/best.keras and records T, the rule and the before/after figures in
train_params.json ("calibration"); running it again refits from the model as trained.
"""

import dataclasses
import logging
import math
import shutil
from pathlib import Path

import numpy as np

from skin_keras.core import atomic
from skin_keras.core.errors import UserError
from skin_keras.core.options import check_options, option
from skin_keras.core.layout import RunFolder
from skin_keras.data import patient_metadata
from skin_keras.evaluate import calibration, ood
from skin_keras.evaluate.evaluation import labelled_folder
from skin_keras.infer import files, load
from skin_keras.infer.runner import KerasRunner, keras_model
from skin_keras.model import io, parts, record
from skin_keras.model.layers import UnknownScore
from skin_keras.model.layers.temperature import scaled
from skin_keras.model.spec import UnknownOptions

_log = logging.getLogger(__name__)
UNCALIBRATED = RunFolder.UNCALIBRATED
T_RANGE = (0.05, 20.0)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in T_RANGE that minimises the NLL of `labels` (golden-section search on log T;
    the NLL is unimodal in it)."""
    def nll(log_t):
        return calibration.negative_log_likelihood(
            scaled(probabilities, math.exp(log_t)), labels)

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


@dataclasses.dataclass(frozen=True)
class CalibrateConfig(UnknownOptions):
    """What `python -m skin_keras.calibrate` does (its flags)."""

    model_path: str = option(None, "The run folder to calibrate (its weights/best.keras).",
                             required=True, path=True)
    data: str = option("", "Labelled class folders to fit T on; empty = the run's --data_val.",
                       path=True)
    metadata: str = option("none", "For a model trained with --metadata: the CSV of --data's "
                           "patient metadata; none = the run's own --metadata.", path=True,
                           keywords=("none",))
    batch_size: int = option(32, "Images per batch.", low=1, high=65536)

    def __post_init__(self):
        check_options(self)
        super().__post_init__()


def calibrate_run(config: CalibrateConfig) -> dict:
    """Fits T and the unknown rule on the run's validation set (or `config.data`), writes the
    calibrated weights/best.keras and train_params.json's "calibration" entry; returns it."""
    run_dir = Path(config.model_path)
    run = RunFolder(run_dir)
    weights, params_path = run.weights, run.params
    if not run.best.is_file() or not params_path.is_file():
        raise UserError(f"--model_path={run_dir}: give a run folder (with weights/best.keras "
                        "and train_params.json); calibration is recorded there")
    params = run.read_params()
    trained = params["train parameters"]
    source = weights / UNCALIBRATED if (weights / UNCALIBRATED).is_file() else (
        run.best)
    runner = load.load(source)
    data = config.data or trained["data_val"]
    metadata = config.metadata if config.metadata.lower() != "none" else (
        trained.get("metadata") or "none")
    if metadata.lower() == "auto":
        found = patient_metadata.resolve("auto", trained["data_train"])
        metadata = str(found) if found else "none"

    # --- Probabilities of the model as trained ---
    folder = labelled_folder(runner, data)
    present = np.unique(folder.labels)
    if len(present) < 2:
        raise UserError(f"calibrating needs images of at least two classes; {data} has "
                        f"{', '.join(runner.class_names[i] for i in present) or 'none'}")
    paths = [Path(p) for p in folder.paths]
    results, errors = files.predict_files(runner, paths, config.batch_size,
                                          inputs=files.other_inputs(runner, metadata, paths))
    ok = np.array([error is None for error in errors])
    if any(error == files.MODEL_NAN for error in errors):
        raise UserError(f"{source} produced NaN for some images of {data}: it cannot be "
                        "calibrated")
    probabilities, labels = results[io.PROBABILITIES][ok], folder.labels[ok]

    # --- Fit, write ---
    temperature = fit_temperature(probabilities, labels)
    calibrated_probabilities = scaled(probabilities, temperature)
    score, kept = fit_unknown_rule(runner, config, calibrated_probabilities, paths, ok,
                                   trained["data_train"])
    entry = {"temperature": temperature, "fitted on": str(data), "images": int(ok.sum()),
             "before": calibration.calibration_report(probabilities, labels),
             "after": calibration.calibration_report(calibrated_probabilities, labels),
             "unknown": {**score.rule.to_dict(), "validation images kept": kept},
             "uncalibrated model": f"weights/{UNCALIBRATED}"}
    if not (weights / UNCALIBRATED).is_file():
        atomic.write_atomic(weights / UNCALIBRATED,
                            lambda tmp: shutil.copyfile(run.best, tmp),
                            suffix=".keras")
    model = io.calibrated(keras_model(runner, "Calibration"), temperature, score)
    score.set_weights(score.fitted)
    info = record.ModelInfo.of(model, runner.class_names)
    atomic.write_atomic(run.best, lambda tmp: record.save_model(model, tmp, info),
                        suffix=".keras")
    atomic.write_json_atomic(params_path, {**params, "calibration": entry})
    return entry


def fit_unknown_rule(runner: KerasRunner, config: CalibrateConfig, probabilities: np.ndarray,
                     paths: list, ok: np.ndarray, data_train: str) -> tuple[UnknownScore, float]:
    """The layer of the "unknown" rule (its weights in `.fitted`): for feature_distance, class
    means and covariance of the training images' pooled features; the threshold keeps
    config.unknown_coverage of the validation images (`probabilities`, calibrated, of
    paths[ok]). Returns it with the share of validation images it keeps."""
    model = keras_model(runner, "Calibration")
    kind, fitted = config.unknown_score, []
    if kind == "feature_distance" and io.pooled_features(model) is None:
        _log.info("note: this model has no single backbone (an ensemble): the unknown rule uses "
                  "max_probability")
        kind = "max_probability"
    if kind == "max_probability":
        scores = ood.max_probability(probabilities)
    else:
        if not Path(data_train).is_dir():
            raise UserError(f"the feature_distance unknown rule is fitted on the run's training "
                            f"images, and {data_train} is not there any more: restore it, or "
                            "--unknown_score=max_probability")
        train = labelled_folder(runner, data_train)
        _log.info(f"unknown rule: pooled features of the {len(train.paths)} training images")
        features = runner.derived(parts.feature_model(model))
        train_features, errors = files.predict_files(
            features, [Path(p) for p in train.paths], config.batch_size)
        good = np.array([error is None for error in errors])
        fitted = ood.fit_feature_distance(train_features[io.FEATURES][good], train.labels[good],
                                          len(runner.class_names))
        val_features, _ = files.predict_files(features, paths, config.batch_size)
        scores = ood.feature_distance(val_features[io.FEATURES][ok], *fitted)
    if not np.isfinite(scores).all():
        raise UserError(f"the model gave non-finite {kind} scores for some validation images: "
                        "no unknown threshold can be chosen")
    threshold = ood.threshold_for_coverage(scores, config.unknown_coverage)
    layer = UnknownScore(kind, threshold, config.unknown_coverage, len(runner.class_names),
                         fitted[0].shape[0] if fitted else 0,
                         percentiles=np.percentile(scores, np.arange(101)).tolist(),
                         name=io.UNKNOWN_SCORE)
    layer.fitted = list(fitted)
    return layer, float(np.mean(scores >= threshold))


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
