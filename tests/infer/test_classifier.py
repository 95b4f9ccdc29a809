"""The Python API (skin_keras.load): the rows predict.py writes, for files, arrays and PIL
images, with patient metadata and the unknown rule; Grad-CAM; bad input as UserError."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import skin_keras
from skin_keras.core.errors import UserError
from skin_keras.infer import load
from skin_keras.infer.predict import PredictConfig, predict_to_folder


def same_rows(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for mine, row in zip(ours, theirs):
        assert {k: v for k, v in mine.items() if k not in ("probabilities", "score",
                                                           "unknown_score", "path")} == {
            k: v for k, v in row.items() if k not in ("probabilities", "score",
                                                      "unknown_score", "path")}
        for key in ("score", "unknown_score"):
            assert (mine.get(key) is None) == (row.get(key) is None)
            if mine.get(key) is not None:
                assert mine[key] == pytest.approx(row[key], rel=1e-5, abs=1e-5)
        for name, value in row["probabilities"].items():
            assert (value is None and mine["probabilities"][name] is None) or (
                mine["probabilities"][name] == pytest.approx(value, abs=1e-6))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, tiny_dataset):
    """Four images as PNG files, uint8 arrays and PIL images, and a file that is no image."""
    folder = tmp_path_factory.mktemp("api_pictures")
    arrays = [np.asarray(Image.open(path).convert("RGB"))
              for path in sorted((tiny_dataset / "val").rglob("*.jpg"))[:4]]
    for index, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"{index}.png")
    (folder / "9_notes.png").write_text("not an image")
    return folder, arrays


def test_the_api_answers_as_predict_py(calibrated_run, pictures, tmp_path):
    folder, arrays = pictures
    expected = json.loads(predict_to_folder(PredictConfig(
        model_path=str(calibrated_run), source=(str(folder),), output=str(tmp_path / "out"),
        backend="keras")).read_text())
    model = skin_keras.load(calibrated_run, backend="keras")
    assert model.classes == load.load(calibrated_run).class_names
    paths = sorted(folder.iterdir())
    rows = model.predict(paths)
    assert [row["path"] for row in rows] == [str(path) for path in paths]
    same_rows(rows, expected)
    assert rows[-1]["error"] and rows[-1]["label"] == ""  # The text file: an error row.
    assert "unknown" in rows[0] and isinstance(rows[0]["unknown"], bool)
    same_rows(model.predict(np.stack(arrays)), expected[:4])  # One [N, H, W, 3] array.
    same_rows(model.predict([Image.fromarray(a) for a in arrays]), expected[:4])
    same_rows(model.predict(arrays[0]), expected[:1])


def converted_file(run, backend_name, target):
    """A plain conversion of the run's model (predict.py's cached copy for `backend_name`), as
    a file."""
    from skin_keras.core import cache  # pylint: disable=g-import-not-at-top
    from skin_keras.infer import backend, formats  # pylint: disable=g-import-not-at-top

    keras_file = run / "weights" / "best.keras"
    backend.cached_copy(load.load(keras_file), backend_name)
    suffix = formats.BY_BACKEND[backend_name].suffix
    shutil.copy(cache.cache_root() / backend_name / f"{cache.file_sha1(keras_file)}{suffix}",
                target)
    return target


def test_every_artifact_kind_answers_as_predict_py(untrained_run, pictures, tmp_path):
    from skin_keras.infer.formats import saved_model  # pylint: disable=g-import-not-at-top

    folder, _ = pictures
    keras_file = untrained_run / "weights" / "best.keras"
    served = saved_model.write_saved_model(load.load(keras_file), tmp_path / "served", 1)
    for model_path in (untrained_run, keras_file, served,
                       converted_file(untrained_run, "tflite", tmp_path / "model.tflite"),
                       converted_file(untrained_run, "onnx", tmp_path / "model.onnx")):
        expected = json.loads(predict_to_folder(PredictConfig(
            model_path=str(model_path), source=(str(folder),),
            output=str(tmp_path / f"out_{model_path.name}"))).read_text())
        model = skin_keras.load(model_path)
        assert type(model.loaded).__name__ == type(load.load(model_path)).__name__
        same_rows(model.predict(sorted(folder.iterdir())), expected)


def test_grad_cam_and_bad_input(untrained_run, pictures, tmp_path):
    folder, arrays = pictures
    model = skin_keras.load(untrained_run)
    heat = model.explain(folder / "0.png")
    assert heat.shape == arrays[0].shape[:2] and 0 <= heat.min() and heat.max() <= 1
    np.testing.assert_allclose(model.explain(arrays[0]), heat, atol=1e-6)
    for images, message in (([], "no images given"),
                            ([arrays[0].astype(np.float32)], "give uint8 RGB values"),
                            ([np.zeros((4, 4, 5), np.uint8)], "is not \\[H, W, 3\\]"),
                            ([folder / "0.png", arrays[0]], "not both at once")):
        with pytest.raises(UserError, match=message):
            model.predict(images)
    with pytest.raises(UserError, match="trained without metadata"):
        model.predict([arrays[0]], metadata=[{"sex": "male"}])
    with pytest.raises(UserError, match="backend='gpu'"):
        skin_keras.load(untrained_run, backend="gpu")
    with pytest.raises(UserError, match="Grad-CAM"):
        skin_keras.load(converted_file(untrained_run, "tflite", tmp_path / "m.tflite")).explain(
            arrays[0])
