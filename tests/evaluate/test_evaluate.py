"""evaluate.py's report: every figure equal to scikit-learn's, the files it writes, test sets
without a class, a broken model blamed, and evaluate.py end to end."""

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
from skin_keras.data import folders
from skin_keras.evaluate import evaluation
from skin_keras.evaluate.evaluation import EvaluateConfig
from skin_keras.model import record

from conftest import REPO


def evaluate(model_path, data, output, **options):
    return evaluation.evaluate_model_path(EvaluateConfig(
        model_path=str(model_path), data=str(data), output=str(output), **options))


def test_evaluate_figures_equal_sklearn(untrained, untrained_run, tiny_dataset, tmp_path):
    report = evaluate(untrained_run, tiny_dataset / "val", tmp_path / "eval", batch_size=4)
    class_names = untrained.class_names
    folder = folders.scan_image_folder(tiny_dataset / "val")
    # predictions.json keeps full precision (the CSV's 6 decimals can tie and move an AUC).
    rows = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    probabilities = np.array([[row["probabilities"][name] for name in class_names]
                              for row in rows])
    y_true, y_pred = folder.labels, probabilities.argmax(1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    assert report["accuracy"] == pytest.approx(sk_metrics.accuracy_score(y_true, y_pred))
    assert report["balanced accuracy"] == pytest.approx(
        sk_metrics.balanced_accuracy_score(y_true, y_pred))
    for index, name in enumerate(class_names):
        assert report[name]["Precision"] == pytest.approx(precision[index], abs=5e-5)
        assert report[name]["Recall"] == pytest.approx(recall[index], abs=5e-5)
        assert report[name]["F1 score"] == pytest.approx(f1[index], abs=5e-5)
        assert report[name]["Support"] == support[index]
        assert report[name]["ROC AUC"] == pytest.approx(
            sk_metrics.roc_auc_score(y_true == index, probabilities[:, index]), abs=5e-5)
    assert report["tta views"] == 1
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["accuracy"] == report["accuracy"] and saved["misclassified"] == report[
        "misclassified"]
    with open(tmp_path / "eval" / "misclassified.csv", newline="") as file:
        wrong = list(csv.DictReader(file))
    assert len(wrong) == int((y_true != y_pred).sum()) == report["misclassified"]
    for row in wrong:
        assert row["true"] != row["predicted"]
    calibrated = saved["calibration"]
    assert calibrated["negative log-likelihood"] == pytest.approx(
        sk_metrics.log_loss(y_true, probabilities, labels=labels), rel=1e-5)
    assert calibrated["brier score"] == pytest.approx(
        np.mean(np.sum((probabilities - np.eye(len(labels))[y_true]) ** 2, axis=1)), rel=1e-5)
    for png in ("confusion_matrix.png", "roc_curves.png", "reliability.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_accepts_a_test_set_without_some_class_but_not_unknown_ones(untrained_run,
                                                                            tiny_dataset,
                                                                            tmp_path):
    shutil.copytree(tiny_dataset / "val", tmp_path / "test")
    shutil.rmtree(tmp_path / "test" / "Melanoma")
    report = evaluate(untrained_run, tmp_path / "test", tmp_path / "eval", tta=2)
    assert report["Melanoma"]["Support"] == 0 and report["Melanoma"]["ROC AUC"] is None
    assert report["tta views"] == 2
    (tmp_path / "test" / "Unknown").mkdir()
    with pytest.raises(UserError, match="differ from the model's classes: unexpected Unknown"):
        evaluate(untrained_run, tmp_path / "test", tmp_path / "eval")


def test_a_model_that_answers_nan_cannot_be_evaluated(untrained, tiny_dataset, tmp_path):
    model = untrained.model
    broken = keras.models.clone_model(model)
    broken.set_weights(model.get_weights())
    bias = broken.get_layer("predictions").bias
    bias.assign(np.full(bias.shape, np.nan, np.float32))
    (tmp_path / "run" / "weights").mkdir(parents=True)
    record.save_model(broken, tmp_path / "run" / "weights" / "best.keras",
                      record.ModelInfo.of(broken, untrained.class_names))
    with pytest.raises(UserError, match="produced NaN for 15 of the images"):
        evaluate(tmp_path / "run", tiny_dataset / "val", tmp_path / "eval")


@pytest.mark.slow
def test_evaluate_script_end_to_end(untrained_run, tiny_dataset, tmp_path):
    command = [sys.executable, str(REPO / "evaluate.py"), f"--model_path={untrained_run}",
               f"--data={tiny_dataset / 'val'}", f"--output={tmp_path / 'eval'}", "--explain"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "15 images, 1 TTA view(s): accuracy" in result.stdout
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["images"] == 15
    assert len(list((tmp_path / "eval" / "explain").glob("*.png"))) == 15
    result = subprocess.run(command[:3] + [f"--data={tmp_path / 'absent'}"],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"evaluate.py: error: dataset folder {tmp_path / 'absent'} does not exist")


def test_evaluations_never_overwrite_or_mix_with_another(untrained_run, tiny_dataset, tmp_path):
    run = shutil.copytree(untrained_run, tmp_path / "run")
    other = shutil.copytree(tiny_dataset / "val", tmp_path / "other" / "val")

    def default(data):
        return evaluation.evaluate_model_path(EvaluateConfig(
            model_path=str(run), data=str(data), batch_size=8))

    default(tiny_dataset / "val")
    default(other)  # Another folder named val: its own report folder.
    first, second = (json.loads((run / name / "metrics.json").read_text())["data"]
                     for name in ("eval_val", "eval_val_2"))
    assert (first, second) == (str(tiny_dataset / "val"), str(other))
    default(other)  # The same evaluation again: replaces its own.
    assert sorted(p.name for p in run.glob("eval_*")) == ["eval_val", "eval_val_2"]
    # An explicit folder: another evaluation's is refused; the same one's leftovers go.
    with pytest.raises(UserError, match="holds the evaluation of .* on .*other/val: choose"):
        evaluate(run, tiny_dataset / "val", run / "eval_val_2")
    (run / "eval_val" / "robustness.json").write_text(json.dumps(
        {"model": str(run / "weights" / "best.keras"), "data": str(tiny_dataset / "val")}))
    evaluate(run, tiny_dataset / "val", run / "eval_val")
    assert not (run / "eval_val" / "robustness.json").exists()
    with pytest.raises(UserError, match="--metadata_ablation and --shifts: run them one at a "
                                        "time"):
        evaluate(run, tiny_dataset / "val", tmp_path / "e", shifts=("warm",),
                 metadata_ablation=True)


def test_an_ood_folder_without_images_is_refused_before_the_labelled_evaluation(
        untrained_run, tiny_dataset, tmp_path):
    (tmp_path / "ood").mkdir()
    (tmp_path / "ood" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="none of the 1 files could be read"):
        evaluate(untrained_run, tiny_dataset / "val", tmp_path / "e", ood=str(tmp_path / "ood"))
    assert not (tmp_path / "e").exists()  # Nothing was evaluated first.
