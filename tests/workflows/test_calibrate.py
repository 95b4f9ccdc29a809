"""Calibration: ECE against a NumPy reference, NLL and Brier against scikit-learn, and
temperature scaling (the fit, the layer, a run calibrated in place)."""

import csv
import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from skin_keras.core.errors import UserError
from skin_keras.data import ood_synthesis
from skin_keras.evaluate import calibration, evaluation
from skin_keras.evaluate.evaluation import EvaluateConfig
from skin_keras.infer import load
from skin_keras.model import io
from skin_keras.model.layers import UnknownScore
from skin_keras.model.layers.temperature import scaled
from skin_keras.train import run_folder
from skin_keras.workflows import fit_calibration as temperature

from conftest import copy_run, probabilities, tiny_model


def reference_ece(probabilities, labels, bins=15):
    """Guo et al. (2017): bins (lower, upper] of the top score, |accuracy - confidence|
    weighted by the share of answers in the bin."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    total = 0.0
    for lower, upper in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:]):
        in_bin = (confidence > lower) & (confidence <= upper)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return total


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    logits = rng.normal(size=(500, 4)) + 2.5 * np.eye(4)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probabilities, labels


def test_ece_equals_the_reference_and_is_zero_when_scores_match_accuracy(predictions):
    probabilities, labels = predictions
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(
        reference_ece(probabilities, labels), abs=1e-12)
    overconfident = probabilities ** 0.3 / (probabilities ** 0.3).sum(1, keepdims=True)
    assert calibration.expected_calibration_error(overconfident, labels) > 0.05
    # Four answers at 0.75 of which three are right: calibrated.
    scores = np.array([[0.75, 0.25]] * 4)
    assert calibration.expected_calibration_error(scores, np.array([0, 0, 0, 1])) == 0.0


def test_nll_and_brier_equal_scikit_learn(predictions):
    probabilities, labels = predictions
    assert calibration.negative_log_likelihood(probabilities, labels) == pytest.approx(
        sk_metrics.log_loss(labels, probabilities, labels=range(4)), rel=1e-9)
    binary = np.stack([1 - probabilities[:, 0], probabilities[:, 0]], axis=1)
    positive = (labels == 0).astype(int)
    # Multi-class Brier sums over the classes: with two classes, twice scikit-learn's.
    assert calibration.brier_score(binary, positive) == pytest.approx(
        2 * sk_metrics.brier_score_loss(positive, probabilities[:, 0]), rel=1e-9)


def test_fitted_temperature_lowers_nll_on_held_out_images_and_keeps_every_label():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 4000)
    scores = rng.normal(size=(4000, 5)) + 1.5 * np.eye(5)[labels]
    # With unit Gaussian noise, P(label | scores) = softmax(1.5 * scores) exactly; a model
    # three times as confident as that has temperature 3.
    logits = 3 * 1.5 * scores
    overconfident = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    fit, held_out = slice(0, 2000), slice(2000, None)
    fitted = temperature.fit_temperature(overconfident[fit], labels[fit])
    assert fitted == pytest.approx(3.0, rel=0.1)
    after = scaled(overconfident[held_out], fitted)
    assert calibration.negative_log_likelihood(after, labels[held_out]) < (
        calibration.negative_log_likelihood(overconfident[held_out], labels[held_out]) - 0.1)
    assert calibration.expected_calibration_error(after, labels[held_out]) < 0.5 * (
        calibration.expected_calibration_error(overconfident[held_out], labels[held_out]))
    np.testing.assert_array_equal(after.argmax(1), overconfident[held_out].argmax(1))


def test_temperature_layer_equals_numpy_and_survives_save_and_load(tmp_path):
    model = tiny_model()
    calibrated = io.calibrated(model, 2.5, UnknownScore("max_probability", 0.5, 0.9))
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    raw = probabilities(model, images)
    np.testing.assert_allclose(probabilities(calibrated, images), scaled(raw, 2.5), atol=1e-6)
    calibrated.save(tmp_path / "c.keras")
    loaded = keras.models.load_model(tmp_path / "c.keras")
    assert io.temperature_of(loaded) == 2.5 and io.temperature_of(model) is None
    np.testing.assert_allclose(probabilities(loaded, images), probabilities(calibrated, images),
                               atol=1e-6)


def test_calibrate_a_run_in_place_and_again(untrained, calibrated_run, tiny_dataset,
                                            tmp_path):
    run = copy_run(calibrated_run, tmp_path / "run")  # calibrated_run's setup calibrated it.
    before = untrained
    entry = json.loads((run / "train_params.json").read_text())["calibration"]
    params = json.loads((run / "train_params.json").read_text())
    assert params["calibration"] == entry
    assert entry["images"] == 15 and entry["fitted on"] == str(tiny_dataset / "val")
    assert entry["after"]["negative log-likelihood"] <= entry["before"]["negative log-likelihood"]
    after = load.load(run)
    assert after.temperature == entry["temperature"] and before.temperature is None
    images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(probabilities(after, images), scaled(
        probabilities(before, images), entry["temperature"]), atol=1e-5)
    assert (run / "weights" / temperature.UNCALIBRATED).is_file()
    # (Exports of a calibrated model: test_patient_metadata's metadata_run is calibrated.)

    # The unknown rule: fitted on the training features, its threshold keeps 80% of val.
    assert after.unknown.score == "feature_distance" and after.unknown.coverage == 0.8
    assert entry["unknown"]["validation images kept"] == pytest.approx(12 / 15)
    ood = tmp_path / "ood"
    ood_synthesis.make_ood_folder(ood_synthesis.OodConfig(output=str(ood), count=2, size=48))
    report = evaluation.evaluate_model_path(EvaluateConfig(
        model_path=str(run), data=str(tiny_dataset / "val"), output=str(tmp_path / "e"),
        backend="keras", ood=str(ood)))
    assert report["unknown"]["images flagged"] == 3
    assert report["ood"]["unknown rule"]["labelled images kept"] == pytest.approx(12 / 15)
    assert set(report["ood"]["scores"]) == {"max_probability", "feature_distance", "energy"}
    assert set(report["ood"]["scores"]["energy"]) == {
        "auroc", "ood kept at 95% coverage", *(f"auroc {kind}" for kind in
                                               ood_synthesis.FAR_KINDS)}
    rows = list(csv.DictReader(open(tmp_path / "e" / "predictions.csv")))
    assert sum(row["unknown"] == "true" for row in rows) == 3
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["ood"] == report["ood"]
    with pytest.raises(UserError, match="--ood=.* is not a folder"):  # Said before any work.
        evaluation.evaluate_model_path(EvaluateConfig(
            model_path=str(run), data=str(tiny_dataset / "val"), output=str(tmp_path / "f"),
            ood=str(tmp_path / "none")))
    # Again: refitted from the model as trained, not calibrated twice.
    again = temperature.calibrate_run(temperature.CalibrateConfig(model_path=str(run)))
    assert again["temperature"] == pytest.approx(entry["temperature"], rel=1e-6)
    # One class only: a clear message.
    one_class = tmp_path / "one"
    shutil.copytree(tiny_dataset / "val" / "Melanoma", one_class / "Melanoma")
    with pytest.raises(UserError, match="at least two classes"):
        temperature.calibrate_run(temperature.CalibrateConfig(model_path=str(run),
                                                              data=str(one_class)))
    with pytest.raises(UserError, match="give a run folder"):
        temperature.calibrate_run(temperature.CalibrateConfig(
            model_path=str(run / "weights" / "best.keras")))
    # A resumed run trains on from the model as trained (best.keras put back).
    run_folder.uncalibrate(run)
    assert load.load(run).temperature is None
    assert not (run / "weights" / temperature.UNCALIBRATED).exists()
    assert "calibration" not in json.loads((run / "train_params.json").read_text())


@pytest.mark.slow
def test_calibrate_and_ood_images_scripts_end_to_end(untrained_run, tiny_dataset, tmp_path):
    run = copy_run(untrained_run, tmp_path / "run")
    result = subprocess.run([sys.executable, "-m", "skin_keras.calibrate",
                             f"--model_path={run}", "--unknown_score=max_probability"],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("temperature ") and "max_probability <" in result.stdout
    assert load.load(run).unknown.score == "max_probability"
    result = subprocess.run([sys.executable, "-m", "skin_keras.calibrate",
                             f"--model_path={run / 'weights'}"],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"calibrate.py: error: --model_path={run / 'weights'}: give a run folder (with "
        "weights/best.keras and train_params.json); calibration is recorded there")
    result = subprocess.run([sys.executable, "-m", "skin_keras.ood_images",
                             f"--output={tmp_path / 'ood'}", "--count=1", "--size=24"],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"wrote 5 images to {tmp_path / 'ood'}: noise 1")


def test_a_damaged_train_params_json_is_one_line(untrained_run, tmp_path):
    run = copy_run(untrained_run, tmp_path / "run")
    for text, message in (("{not json", "is not readable JSON"),
                          ('{"model": {}}', 'is not a run\'s train_params.json')):
        (run / "train_params.json").write_text(text)
        with pytest.raises(UserError, match=message) as error:
            temperature.calibrate_run(temperature.CalibrateConfig(model_path=str(run)))
        assert "\n" not in str(error.value)
