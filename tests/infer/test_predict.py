"""Prediction on files with any runner: exact answers, bad files named, TTA, the rows and the
files predict.py writes, Grad-CAM, the backends, and predict.py end to end."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from skin_keras.core import cache
from skin_keras.core.errors import UserError
from skin_keras.data import folders, pipeline
from skin_keras.infer import backend, files, formats, gradcam, load, predict
from skin_keras.infer.formats.tflite import TFLiteRunner
from skin_keras.infer.predict import PredictConfig
from skin_keras.infer.runner import About, Runner
from skin_keras.model import record
from skin_keras.model.layers.unknown import UnknownRule

from conftest import REPO, copy_run, probabilities


@pytest.fixture(scope="module")
def loaded(untrained):
    return untrained


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


def keras_probabilities(runner, paths):
    dataset = pipeline.make_dataset([str(p) for p in paths], None, 0, runner.img_size, 4)
    return runner.model.predict(dataset, verbose=0)["probabilities"]


def predict_to(model_path, sources, output, **options):
    return json.loads(predict.predict_to_folder(PredictConfig(
        model_path=str(model_path), source=tuple(str(s) for s in sources), output=str(output),
        **options)).read_text())


def test_predictions_equal_model_predict_and_bad_files_get_error_rows(loaded, mixed_source,
                                                                       tmp_path):
    rows = predict_to(loaded.source, [mixed_source], tmp_path / "out", topk=2)
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


def test_tflite_backend_predicts_what_keras_predicts_and_auto_reuses_the_conversion(
        loaded, mixed_source, caplog, tmp_path, monkeypatch):
    assert backend.select(loaded, "auto", images=10) is loaded  # Small, not cached.
    tflite = backend.select(loaded, "tflite", images=10)
    assert "converting" in caplog.text
    assert isinstance(tflite, TFLiteRunner)
    assert (tflite.class_names, tflite.source) == (loaded.class_names, loaded.source)
    paths = files.list_sources([mixed_source])
    # Two TTA views (the first is the image as it is).
    by_keras, keras_errors = files.predict_files(loaded, paths, 4, 2, show_progress=False)
    by_tflite, tflite_errors = files.predict_files(tflite, paths, 4, 2, show_progress=False)
    assert tflite_errors == keras_errors and sum(e is None for e in keras_errors) == 6
    np.testing.assert_allclose(by_tflite["probabilities"], by_keras["probabilities"],
                               atol=1e-5)  # NaN rows match too.
    # Batches larger than TFLiteRunner.chunk run in several calls, the last one smaller.
    images = np.random.default_rng(0).uniform(0, 255, (11, loaded.img_size, loaded.img_size, 3))
    np.testing.assert_allclose(probabilities(tflite, images), probabilities(loaded, images),
                               atol=1e-5)
    caplog.clear()
    auto = backend.select(loaded, "auto", images=10)  # Now cached: TFLite.
    assert isinstance(auto, TFLiteRunner)
    assert "converting" not in caplog.text
    # A cache that cannot be written (read-only): converted, used, not kept.
    cached_bytes = (cache.cache_root() / "tflite" / f"{cache.file_sha1(loaded.source)}.tflite"
                    ).read_bytes()
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("SKIN_KERAS_CACHE", str(tmp_path / "a_file" / "cache"))
    monkeypatch.setattr(formats.BY_BACKEND["tflite"], "convert", lambda runner, work: cached_bytes)
    uncached = backend.select(loaded, "tflite", images=10)
    np.testing.assert_allclose(probabilities(uncached, images), probabilities(tflite, images))
    assert "is not cached" in caplog.text


def test_a_plain_converted_tflite_file_predicts_with_labels_beside_or_indices(
        loaded, tmp_path, caplog):
    # The copy --backend=tflite converts is such a file: no labels, no description inside.
    backend.cached_copy(loaded, "tflite")  # Converted once per process (the test above).
    plain = tmp_path / "plain.tflite"
    plain.write_bytes((cache.cache_root() / "tflite" / f"{cache.file_sha1(loaded.source)}.tflite"
                       ).read_bytes())
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    by_index = load.load(plain)
    assert by_index.class_names == ["class 0", "class 1", "class 2"]
    assert "named by their index" in caplog.text
    np.testing.assert_allclose(probabilities(by_index, images), probabilities(loaded, images),
                               atol=1e-4)
    (tmp_path / "labels.txt").write_text("\n".join(loaded.class_names) + "\n")
    assert load.load(plain).class_names == loaded.class_names
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match="answers 3 classes but its labels name 2"):
        load.load(plain)
    (tmp_path / "labels.txt").write_text("NV\nNV\nMEL\n")  # Columns could not be told apart.
    with pytest.raises(UserError, match="names the class\\(es\\) NV twice"):
        load.load(plain)


def test_run_folder_and_keras_file_give_the_same_predictions(untrained_run, mixed_source,
                                                             tmp_path):
    from_run = predict_to(untrained_run, [mixed_source], tmp_path / "a")
    from_file = predict_to(untrained_run / "weights" / "best.keras", [mixed_source / "more"],
                           tmp_path / "b")
    by_path = {row["path"]: row["probabilities"] for row in from_run}
    assert len(from_file) == 3
    for row in from_file:  # Other batches: equal up to float rounding.
        if not row["error"]:
            np.testing.assert_allclose(list(row["probabilities"].values()),
                                       list(by_path[row["path"]].values()), atol=1e-5)


def test_tta_averages_the_eight_flips_and_rotations(loaded, tiny_dataset):
    paths = sorted((tiny_dataset / "val").rglob("*.jpg"))[:5]
    plain, _ = files.predict_files(loaded, paths, batch_size=2, tta=1, show_progress=False)
    np.testing.assert_allclose(plain["probabilities"], keras_probabilities(loaded, paths),
                               atol=1e-5)
    averaged, _ = files.predict_files(loaded, paths, batch_size=2, tta=8, show_progress=False)
    images = np.stack([pipeline.load_image(str(p), loaded.img_size).numpy() for p in paths])
    views = [np.rot90(flipped, k, axes=(1, 2)) for flipped in (images, images[:, :, ::-1])
             for k in range(4)]
    expected = np.mean([probabilities(loaded.model, v) for v in views], axis=0)
    np.testing.assert_allclose(averaged["probabilities"], expected, atol=1e-5)
    with pytest.raises(UserError, match="--tta=9"):
        files.predict_files(loaded, paths, 4, tta=9, show_progress=False)


def test_listing_sources_for_prediction_follows_each_real_file_once(tmp_path, tiny_dataset):
    for index, path in enumerate(sorted((tiny_dataset / "val").rglob("*.jpg"))[:4]):
        (tmp_path / "img").mkdir(exist_ok=True)
        shutil.copy(path, tmp_path / "img" / f"{index}.jpg")
    os.symlink("..", tmp_path / "img" / "loop")
    os.symlink(str(tmp_path / "img"), tmp_path / "img" / "twice")
    listed = files.list_sources([tmp_path / "img", tmp_path / "img" / "0.jpg"])
    assert sorted(p.name for p in listed) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert len(folders.walk_files(tmp_path / "img")) == 4  # Not walked ~40 links deep.


def test_grad_cam_map_has_the_image_size_and_is_not_constant(loaded, tiny_dataset):
    path = sorted((tiny_dataset / "val").rglob("*.jpg"))[0]
    image = pipeline.load_image(str(path), loaded.img_size).numpy()[None]
    heat_maps, classes = gradcam.grad_cam(loaded.model, image)
    assert heat_maps.shape == (1, loaded.img_size, loaded.img_size)
    assert classes[0] == probabilities(loaded.model, image).argmax()
    with Image.open(path) as original:
        size = original.size
        figure = gradcam.overlay_figure(original, heat_maps[0], "caption")
    full = gradcam.resize_map(heat_maps[0], size)
    assert full.shape == (size[1], size[0])
    assert full.min() >= 0.0 and full.max() == pytest.approx(1.0) and full.std() > 0.01
    assert figure.size == (2 * size[0] + 10, size[1] + 28)


@pytest.mark.slow
def test_predict_script_end_to_end(untrained_run, mixed_source, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "predict.py"), f"--model_path={untrained_run}",
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
    assert result.returncode == 2 and "Traceback" not in result.stderr  # Another job's output.
    assert "holds a finished prediction of another job" in result.stderr.strip().splitlines()[-1]
    command[4] = f"--output={tmp_path / 'bad_out'}"
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "predict.py: error: none of the 1 files could be read as an image")
    result = subprocess.run(command + ["--batch_size=0"], capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "predict.py: error: --batch_size=0 is out of range [1, 65536]")


def saved_run(folder, model, class_names, with_record=True, indices=None):
    """A run-like folder holding `model` as weights/best.keras (with or without its record)."""
    (folder / "weights").mkdir(parents=True)
    if with_record:
        record.save_model(model, folder / "weights" / "best.keras",
                          record.ModelInfo.of(model, class_names))
    else:
        model.save(folder / "weights" / "best.keras")
    if indices is not None:
        (folder / "class_indices.json").write_text(indices)
    return folder


def test_a_model_that_answers_nan_is_blamed_not_the_images(loaded, mixed_source, tmp_path):
    broken = keras.models.clone_model(loaded.model)
    broken.set_weights(loaded.model.get_weights())
    bias = broken.get_layer("predictions").bias
    bias.assign(np.full(bias.shape, np.nan, np.float32))
    run = saved_run(tmp_path / "run", broken, loaded.class_names)
    with pytest.raises(UserError, match="produced NaN for all 6 readable images: the model is "
                                        "broken"):
        predict_to(run, [mixed_source], tmp_path / "out")
    with open(tmp_path / "out" / "predictions.csv", newline="") as file:
        errors = [row["error"] for row in csv.DictReader(file)]
    assert errors.count(files.MODEL_NAN) == 6 and "could not be decoded" not in errors


def test_a_nan_score_is_the_model_s_error_not_a_known_image(tiny_dataset):
    paths = sorted((tiny_dataset / "val").rglob("*.jpg"))[:4]

    class Scored(Runner):  # A model whose score is NaN for the first image of each batch.
        def _run(self, feed):
            scores = np.zeros(len(feed["image"]), np.float32)
            scores[0] = np.nan
            return {"probabilities": np.full((len(scores), 3), 1 / 3, np.float32),
                    "unknown_score": scores}

    runner = Scored(About(["a", "b", "c"], 32, Path("m"), UnknownRule(-1.0, 0.95)),
                    ("image",), ("probabilities", "unknown_score"))
    results, errors = files.predict_files(runner, paths, batch_size=2, show_progress=False)
    assert errors == [files.MODEL_NAN, None, files.MODEL_NAN, None]
    rows = predict.prediction_rows(paths, results, errors, runner)
    assert [row["unknown"] for row in rows] == [None, False, None, False]


def test_a_keras_file_carries_its_class_names(untrained, untrained_run, tmp_path):
    copy = tmp_path / "alone.keras"  # Far from its run folder.
    shutil.copy(untrained_run / "weights" / "best.keras", copy)
    assert record.read_from(copy) == record.ModelInfo(
        ("Basal cell carcinoma", "Melanocytic nevus", "Melanoma"), 64, "efficientnetv2_b0",
        "shades of gray (p=6) colour constancy")
    assert load.load(copy).class_names == untrained.class_names
    # A run folder whose class list is not the model's: same count, other names.
    run = copy_run(untrained_run, tmp_path / "run")
    (run / "class_indices.json").write_text('{"0": "Melanoma", "1": "Melanocytic nevus", '
                                            '"2": "Basal cell carcinoma"}')
    with pytest.raises(UserError, match="was trained on the classes .* but .* lists"):
        load.load(run)


@pytest.mark.parametrize("indices, message", [
    ('{"0": "a", "1": "b"', "is not a class index file .*: Expecting"),
    ('{"a": "x", "b": "y", "c": "z"}', "is not a class index file .*: no key '0'"),
    ('["a", "b", "c"]', "is not a class index file .*: not a non-empty JSON object"),
])
def test_a_damaged_class_index_file_beside_a_model_is_one_line(loaded, tmp_path, indices, message):
    bad = saved_run(tmp_path / "bad", loaded.model, loaded.class_names, indices=indices)
    with pytest.raises(UserError, match=message) as error:
        load.load(bad)
    assert "\n" not in str(error.value)


def test_a_keras_file_without_our_record_is_refused_whatever_lies_beside_it(loaded, tmp_path):
    # Every .keras file skin_keras wrote since before the redesign (5884882) has its record; one
    # without is somebody else's model, whose classes a class_indices.json cannot vouch for.
    plain = saved_run(tmp_path / "plain", loaded.model, loaded.class_names, with_record=False,
                      indices='{"0": "a", "1": "b", "2": "c"}')
    with pytest.raises(UserError, match=r"has no record of its classes \(skin_keras.json in the "
                                        r"archive\): it was not saved by skin_keras") as error:
        load.load(plain)
    assert "\n" not in str(error.value)
