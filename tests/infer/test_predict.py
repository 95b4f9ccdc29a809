"""predict.py and evaluate.py on folders: exact predictions, bad files, TTA, metrics, Grad-CAM."""

import csv
import json
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk_metrics

from conftest import REPO
from skin_keras.infer import load as artifacts, gradcam, predict as inference, litert
from skin_keras.evaluate import evaluation
from skin_keras.data import folders, pipeline as input_pipeline
from skin_keras.model import record as model_info
from skin_keras.core.errors import UserError


@pytest.fixture(scope="module")
def loaded(trained_run):
    return artifacts.load_model(trained_run)


@pytest.fixture
def mixed_source(tmp_path, tiny_dataset):
    """Six good images in two folders, plus a truncated, an empty and a text file."""
    source = tmp_path / "inference" / "img"
    (source / "more").mkdir(parents=True)
    good = sorted((tiny_dataset / "val").rglob("*.jpg"))[::2][:6]
    for index, path in enumerate(good):
        shutil.copy(path, (source if index < 3 else source / "more") / path.name)
    data = good[0].read_bytes()
    (source / "broken.jpg").write_bytes(data[:len(data) // 2])
    (source / "empty.png").write_bytes(b"")
    (source / "notes.txt").write_text("not an image")
    return source


def keras_probabilities(loaded, paths):
    dataset = input_pipeline.make_dataset([str(p) for p in paths], None, 0, loaded.img_size, 4)
    return loaded.model.predict(dataset, verbose=0)


@pytest.mark.slow
def test_predictions_equal_model_predict_and_bad_files_get_error_rows(loaded, mixed_source,
                                                                       tmp_path):
    rows = inference.predict_to_folder(loaded.source, [mixed_source], tmp_path / "out", topk=2)
    errors = {row["path"].rsplit("/", 1)[1]: row["error"] for row in rows if row["error"]}
    assert set(errors) == {"broken.jpg", "empty.png", "notes.txt"}
    good = [row for row in rows if not row["error"]]
    assert len(good) == 6
    expected = keras_probabilities(loaded, [row["path"] for row in good])
    actual = np.array([list(row["probabilities"].values()) for row in good])
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    assert [row["label"] for row in good] == [loaded.class_names[i] for i in expected.argmax(1)]
    for row in good:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["score"] == max(row["probabilities"].values())
        assert [t["label"] for t in row["top"]][0] == row["label"] and len(row["top"]) == 2

    with open(tmp_path / "out" / "predictions.csv", newline="") as file:
        table = list(csv.reader(file))
    assert table[0] == ["path", "label", "score", *loaded.class_names, "top1", "top2", "error"]
    assert len(table) == 1 + 9
    broken = next(r for r in table if r[0].endswith("broken.jpg"))
    assert broken[1] == "" and broken[-1]
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [row["path"] for row in saved] == [row["path"] for row in rows]


@pytest.mark.slow
def test_tflite_backend_predicts_what_keras_predicts_and_auto_reuses_the_conversion(
        loaded, mixed_source, capsys):
    assert inference.select_backend(loaded, "auto", images=10) is loaded  # Small, not cached.
    tflite = inference.select_backend(loaded, "tflite", images=10)
    assert "converting" in capsys.readouterr().out
    assert isinstance(tflite.forward, litert.TFLiteRunner)
    paths = inference.list_sources([mixed_source])
    # Two TTA views (the first is the image as it is).
    by_keras, keras_errors = inference.predict_files(loaded, paths, 4, 2, False)
    by_tflite, tflite_errors = inference.predict_files(tflite, paths, 4, 2, False)
    assert tflite_errors == keras_errors and sum(e is None for e in keras_errors) == 6
    np.testing.assert_allclose(by_tflite, by_keras, atol=1e-5)  # NaN rows match too.
    # Batches larger than TFLiteRunner.CHUNK run in several calls, the last one smaller.
    images = np.random.default_rng(0).uniform(0, 255, (11, loaded.img_size, loaded.img_size, 3))
    np.testing.assert_allclose(tflite.predict_images(images), loaded.predict_images(images),
                               atol=1e-5)
    auto = inference.select_backend(loaded, "auto", images=10)  # Now cached: TFLite.
    assert isinstance(auto.forward, litert.TFLiteRunner)
    assert auto.model is loaded.model  # Grad-CAM still has the Keras model.
    assert "converting" not in capsys.readouterr().out


@pytest.mark.slow
def test_run_folder_and_keras_file_give_the_same_predictions(trained_run, mixed_source,
                                                             tmp_path):
    from_run = inference.predict_to_folder(trained_run, [mixed_source], tmp_path / "a")
    from_file = inference.predict_to_folder(trained_run / "weights" / "best.keras",
                                            [mixed_source / "more"], tmp_path / "b")
    by_path = {row["path"]: row["probabilities"] for row in from_run}
    assert len(from_file) == 3
    for row in from_file:  # Other batches: equal up to float rounding.
        if not row["error"]:
            np.testing.assert_allclose(list(row["probabilities"].values()),
                                       list(by_path[row["path"]].values()), atol=1e-5)


@pytest.mark.slow
def test_tta_averages_the_eight_flips_and_rotations(loaded, tiny_dataset):
    paths = sorted((tiny_dataset / "val").rglob("*.jpg"))[:5]
    plain, _ = inference.predict_files(loaded, paths, batch_size=2, tta=1, show_progress=False)
    np.testing.assert_allclose(plain, keras_probabilities(loaded, paths), atol=1e-5)
    averaged, _ = inference.predict_files(loaded, paths, batch_size=2, tta=8, show_progress=False)
    images = np.stack([input_pipeline.load_image(str(p), loaded.img_size).numpy() for p in paths])
    views = [np.rot90(flipped, k, axes=(1, 2)) for flipped in (images, images[:, :, ::-1])
             for k in range(4)]
    expected = np.mean([loaded.model.predict(v, verbose=0) for v in views], axis=0)
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    with pytest.raises(UserError, match="--tta=9"):
        inference.predict_files(loaded, paths, tta=9, show_progress=False)


@pytest.mark.slow
def test_evaluate_figures_equal_sklearn(loaded, tiny_dataset, tmp_path):
    report = evaluation.evaluate(loaded, tiny_dataset / "val", tmp_path / "eval", batch_size=4)
    folder = folders.scan_image_folder(tiny_dataset / "val")
    # predictions.json keeps full precision (the CSV's 6 decimals can tie and move an AUC).
    rows = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    probabilities = np.array([[row["probabilities"][name] for name in loaded.class_names]
                              for row in rows])
    y_true, y_pred = folder.labels, probabilities.argmax(1)
    labels = list(range(len(loaded.class_names)))
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    assert report["accuracy"] == pytest.approx(sk_metrics.accuracy_score(y_true, y_pred))
    assert report["balanced accuracy"] == pytest.approx(
        sk_metrics.balanced_accuracy_score(y_true, y_pred))
    for index, name in enumerate(loaded.class_names):
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


@pytest.mark.slow
def test_evaluate_accepts_a_test_set_without_some_class_but_not_unknown_ones(loaded,
                                                                            tiny_dataset,
                                                                            tmp_path):
    shutil.copytree(tiny_dataset / "val", tmp_path / "test")
    shutil.rmtree(tmp_path / "test" / "Melanoma")
    report = evaluation.evaluate(loaded, tmp_path / "test", tmp_path / "eval", tta=2)
    assert report["Melanoma"]["Support"] == 0 and report["Melanoma"]["ROC AUC"] is None
    assert report["tta views"] == 2
    (tmp_path / "test" / "Unknown").mkdir()
    with pytest.raises(UserError, match="differ from the model's classes: unexpected Unknown"):
        evaluation.evaluate(loaded, tmp_path / "test", tmp_path / "eval")


@pytest.mark.slow
def test_grad_cam_map_has_the_image_size_and_is_not_constant(loaded, tiny_dataset):
    path = sorted((tiny_dataset / "val").rglob("*.jpg"))[0]
    image = input_pipeline.load_image(str(path), loaded.img_size).numpy()[None]
    heat_maps, classes = gradcam.grad_cam(loaded.model, image)
    assert heat_maps.shape == (1, loaded.img_size, loaded.img_size)
    assert classes[0] == loaded.model.predict(image, verbose=0).argmax()
    with Image.open(path) as original:
        size = original.size
        figure = gradcam.overlay_figure(original, heat_maps[0], "caption")
    full = gradcam.resize_map(heat_maps[0], size)
    assert full.shape == (size[1], size[0])
    assert full.min() >= 0.0 and full.max() == pytest.approx(1.0) and full.std() > 0.01
    assert figure.size == (2 * size[0] + 10, size[1] + 28)


def _tflite_file(tmp):
    (tmp / "model.tflite").write_bytes(b"x")
    return tmp / "model.tflite"


def _saved_model_folder(tmp):
    (tmp / "saved").mkdir()
    (tmp / "saved" / "saved_model.pb").write_bytes(b"")
    return tmp / "saved"


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "does not exist"),
    (_tflite_file, "is not a readable TFLite model"),
    (_saved_model_folder, "could not be loaded as a SavedModel"),
    (lambda tmp: (tmp / "notes.txt").write_text("x") and tmp / "notes.txt", "is not a model"),
    (lambda tmp: tmp, "is not a run folder"),
])
def test_model_paths_that_are_not_keras_models_are_clear_errors(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        artifacts.load_model(make(tmp_path))


@pytest.mark.slow
def test_predict_script_end_to_end(trained_run, mixed_source, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "predict.py"), f"--model_path={trained_run}",
               f"--source={mixed_source}", f"--output={out}", "--save_images", "--explain"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^unreadable +3$", result.stdout, re.MULTILINE), result.stdout
    assert len(list((out / "images").glob("*.jpg"))) == 6
    assert len(list((out / "explain").glob("*.png"))) == 6
    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    (bad_only / "x.jpg").write_bytes(b"junk")
    command[3] = f"--source={bad_only}"
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "predict.py: error: none of the 1 files could be read as an image")
    result = subprocess.run(command + ["--batch_size=0"], capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "predict.py: error: --batch_size=0 is out of range [1, 65536]")


def saved_run(folder, model, class_names, record=True, indices=None):
    """A run-like folder holding `model` as weights/best.keras (with or without its record)."""
    (folder / "weights").mkdir(parents=True)
    if record:
        model_info.save_model(model, folder / "weights" / "best.keras",
                              model_info.ModelInfo.of(model, class_names))
    else:
        model.save(folder / "weights" / "best.keras")
    if indices is not None:
        (folder / "class_indices.json").write_text(indices)
    return folder


@pytest.mark.slow
def test_a_model_that_answers_nan_is_blamed_not_the_images(loaded, mixed_source, tmp_path,
                                                           tiny_dataset):
    broken = keras.models.clone_model(loaded.model)
    broken.set_weights(loaded.model.get_weights())
    bias = broken.get_layer("predictions").bias
    bias.assign(np.full(bias.shape, np.nan, np.float32))
    run = saved_run(tmp_path / "run", broken, loaded.class_names)
    with pytest.raises(UserError, match="produced NaN for all 6 readable images: the model is "
                                        "broken"):
        inference.predict_to_folder(run, [mixed_source], tmp_path / "out")
    with open(tmp_path / "out" / "predictions.csv", newline="") as file:
        errors = [row["error"] for row in csv.DictReader(file)]
    assert errors.count(inference.MODEL_NAN) == 6 and "could not be decoded" not in errors
    with pytest.raises(UserError, match="produced NaN for 15 of the images"):
        evaluation.evaluate(artifacts.load_model(run), tiny_dataset / "val", tmp_path / "eval")


@pytest.mark.slow
def test_a_keras_file_carries_its_class_names(trained_run, tmp_path):
    copy = tmp_path / "alone.keras"  # Far from its run folder.
    shutil.copy(trained_run / "weights" / "best.keras", copy)
    assert model_info.read_from(copy) == model_info.ModelInfo(
        ("Basal cell carcinoma", "Melanocytic nevus", "Melanoma"), 64, "efficientnetv2_b0",
        "shades of gray (p=6) colour constancy")
    assert artifacts.load_model(copy).class_names == artifacts.load_model(trained_run).class_names
    # A run folder whose class list is not the model's: same count, other names.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "class_indices.json").write_text('{"0": "Melanoma", "1": "Melanocytic nevus", '
                                            '"2": "Basal cell carcinoma"}')
    with pytest.raises(UserError, match="was trained on the classes .* but .* lists"):
        artifacts.load_model(run)


@pytest.mark.slow
@pytest.mark.parametrize("indices, message", [
    ('{"0": "a", "1": "b"', "is not a class index file .*: Expecting"),
    ('{"a": "x", "b": "y", "c": "z"}', "is not a class index file .*: no key '0'"),
    ('["a", "b", "c"]', "is not a class index file .*: not a non-empty JSON object"),
    (None, "no class_indices.json beside"),
])
def test_older_keras_files_take_their_class_names_from_the_run_folder(loaded, tmp_path, indices,
                                                                      message):
    good = saved_run(tmp_path / "good", loaded.model, loaded.class_names, record=False,
                     indices='{"0": "a", "1": "b", "2": "c"}')
    assert artifacts.load_model(good).class_names == ["a", "b", "c"]  # Runs before records.
    bad = saved_run(tmp_path / "bad", loaded.model, loaded.class_names, record=False,
                    indices=indices)
    with pytest.raises(UserError, match=message) as error:
        artifacts.load_model(bad)
    assert "\n" not in str(error.value)


# (A 32 px model, whose graph XNNPACK cannot resize, runs in LiteRT one image at a time:
# test_cross_validation's exported ensemble.)
