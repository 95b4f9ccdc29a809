"""Patient metadata (issue 15): reading the CSV, the encoding saved with the model, training,
resuming, predicting, evaluating and exporting a model with a metadata input."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, Killed, kill_at_log_write, tiny_config
from skin_keras.infer import load as artifacts, predict as inference
from skin_keras.evaluate import evaluation
from skin_keras.export import exporting
from skin_keras.data import isic, patient_metadata, synthetic
from skin_keras.model.layers import metadata as metadata_encoding
from skin_keras.model import builder as models
from skin_keras.train import loop as training
from skin_keras.core.errors import UserError
from skin_keras.model.layers.metadata import PatientMetadata
from skin_keras.data.patient_metadata import MISSING, Record

HEADER = ["image", "age_approx", "sex", "anatom_site_general"]


def write_csv(path: Path, rows) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


# --- Encoding ---

def test_encoding_of_missing_values_unseen_categories_and_bad_ages():
    encoding = PatientMetadata.fit([Record(40.0, "male", "back"), Record(None, "female", ""),
                                    Record(60.0, "", "face")])
    assert encoding.sexes == ("female", "male") and encoding.sites == ("back", "face")
    assert encoding.feature_names() == [
        "age_approx / 100", "age_approx missing", "sex=female", "sex=male", "sex missing",
        "anatom_site_general=back", "anatom_site_general=face", "anatom_site_general missing"]
    vectors = encoding.encode(
        np.array([45.0, np.nan, 400.0, -3.0, 120.0], np.float32),
        np.array([" Male ", "", "other", "UNKNOWN", "female"], object),
        np.array(["face", "palms/soles", "", "BACK", "nan"], object)).numpy()
    np.testing.assert_allclose(vectors, [
        [0.45, 0, 0, 1, 0, 0, 1, 0],
        [0, 1, 0, 0, 1, 0, 0, 1],    # NaN age; empty sex; a site training never saw.
        [0, 1, 0, 0, 1, 0, 0, 1],    # Age 400 is not believed; "other" is unknown.
        [0, 1, 0, 0, 1, 1, 0, 0],    # Negative age; "UNKNOWN" is missing; case ignored.
        [1, 0, 1, 0, 0, 0, 0, 1]], atol=1e-6)
    np.testing.assert_array_equal(encoding.missing_vector(), encoding.encode_records([MISSING])[0])
    # Exactly one hot per categorical column, whatever comes in.
    assert (vectors[:, 2:5].sum(1) == 1).all() and (vectors[:, 5:].sum(1) == 1).all()


def test_training_blanks_whole_rows_at_the_rate_and_the_model_never_does():
    encoding = PatientMetadata(("female", "male"), ("back",))
    vectors = np.repeat(encoding.encode_records([Record(50.0, "male", "back")]), 4000, axis=0)
    np.testing.assert_array_equal(encoding(vectors, training=True), vectors)
    dataset = tf.data.Dataset.from_tensor_slices(vectors).map(
        metadata_encoding.row_blanker(encoding, 0.3, seed=1))
    out = np.stack(list(dataset.as_numpy_iterator()))
    blanked = (out == encoding.missing_vector()).all(axis=1)
    kept = (out == vectors).all(axis=1)
    assert (blanked | kept).all()  # Whole rows, never parts of one.
    assert 0.27 < blanked.mean() < 0.33


def test_a_fused_model_saves_and_reloads_with_its_vocabulary(tmp_path):
    encoding = PatientMetadata(("female", "male"), ("back", "face"))
    model = models.build_model("b0", 3, 32, "none", freeze_backbone=False,
                               metadata_encoding=encoding)
    assert [tensor.name for tensor in model.inputs] == ["image", "metadata"]
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    vectors = encoding.encode_records([Record(30.0, "male", "face"), MISSING,
                                       Record(80.0, "female", "back"), Record(None, "x", "")])
    before = model([images, vectors], training=False).numpy()
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded([images, vectors], training=False), before, atol=1e-6)
    reloaded = models.metadata_encoding_of(loaded)
    assert (reloaded.sexes, reloaded.sites) == (encoding.sexes, encoding.sites)
    # The metadata reaches the output (the branch is wired), and an image-only model has none.
    assert not np.allclose(before[0], model([images[:1], vectors[1:2]], training=False)[0])
    plain = models.build_model("b0", 3, 32, "none", freeze_backbone=False)
    assert len(plain.inputs) == 1 and models.metadata_encoding_of(plain) is None


# --- Reading the CSV ---

@pytest.mark.parametrize("rows, header, message", [
    ([["a", "40", "male", "back"]], ["name", "age_approx", "sex", "anatom_site_general"],
     r"lacks column\(s\) image"),
    ([["a", "40", "male", "back"], ["b", "", "", ""], ["a", "50", "", ""]], HEADER,
     r"image a has two rows \(lines 2 and 4\)"),
    ([["a", "x", "y"]], ["image", "age", "gender"], "has none of the metadata columns"),
])
def test_bad_metadata_csv_is_one_clear_line(tmp_path, rows, header, message):
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows([header, *rows])
    with pytest.raises(UserError, match=message):
        patient_metadata.read_table(path)


def test_ages_not_believed_stop_training_and_run_as_missing_in_prediction(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["a", "abc", "Male", ""], ["b", "400", "", "back"],
                                          ["c.jpg", "35", " FEMALE", "Face"]])
    table = patient_metadata.read_table(path)
    assert [image for _, image, _ in table.bad_ages] == ["a", "b"]
    with pytest.raises(UserError, match=r"2 age_approx value\(s\).*'abc' for a \(line 2\)"):
        patient_metadata.check_for_training(table, ["t/a.jpg"], [])
    records, found, note = patient_metadata.for_prediction(
        str(path), [Path("x/a.png"), Path("x/c.jpg"), Path("x/zz.jpg")])
    assert records == [Record(None, "male", ""), Record(35.0, "female", "face"), MISSING]
    assert found.tolist() == [True, True, False]
    assert "2 of 3 images have a row" in note and "1 age(s) not a number" in note


def test_a_csv_covering_no_training_image_is_refused(tmp_path):
    table = patient_metadata.read_table(write_csv(tmp_path / "m.csv", [["other", "40", "", ""]]))
    with pytest.raises(UserError, match="no row for any of the 2 training images"):
        patient_metadata.check_for_training(table, ["d/a.jpg", "d/b.jpg"], [])


def test_prepare_isic_writes_metadata_csv_with_missing_counts(tmp_path):
    from test_prepare_isic import write_isic_layout  # pylint: disable=g-import-not-at-top

    root = tmp_path / "isic"
    rng = np.random.default_rng(0)
    rows, lesions = [], {}
    for number in range(12):
        image = f"ISIC_{number:07d}"
        rows.append((image, ["MEL" if number % 2 else "NV"]))
        lesions[image] = f"IL_{number}"
        (root / "ISIC_2019_Training_Input").mkdir(parents=True, exist_ok=True)
        synthetic.lesion_image(number % 2, 2, (40, 30), rng).save(
            root / "ISIC_2019_Training_Input" / f"{image}.jpg")
    write_isic_layout(root, rows, lesions)
    with open(root / "meta.csv", "w", newline="") as file:  # Some cells empty, one row absent.
        writer = csv.writer(file)
        writer.writerow(["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
        for number in range(11):
            writer.writerow([f"ISIC_{number:07d}", "" if number < 3 else f"{number}5.0",
                             "" if number == 4 else "back", f"IL_{number}",
                             "female" if number % 3 else ""])
    audit = isic.prepare(isic.PrepareConfig(
        images=str(root / "ISIC_2019_Training_Input"), ground_truth=str(root / "gt.csv"),
        metadata=str(root / "meta.csv"), out_dir=str(tmp_path / "data"), val_fraction=0.3))
    with open(tmp_path / "data" / "metadata.csv", newline="") as file:
        written = list(csv.DictReader(file))
    assert list(written[0]) == HEADER
    assert sorted(row["image"] for row in written) == [f"ISIC_{n:07d}" for n in range(12)]
    by_image = {row["image"]: row for row in written}
    assert by_image["ISIC_0000005"] == {"image": "ISIC_0000005", "age_approx": "55.0",
                                        "sex": "female", "anatom_site_general": "back"}
    assert by_image["ISIC_0000011"] == {"image": "ISIC_0000011", "age_approx": "", "sex": "",
                                        "anatom_site_general": ""}
    # Ages missing: 0-2 and 11; sites: 4 and 11; sex: 0, 3, 6, 9 and 11.
    assert audit["metadata missing"] == {"age_approx": 4, "sex": 5, "anatom_site_general": 2}
    assert "metadata.csv, missing values: age_approx 4, sex 5" in isic.describe_audit(audit)


# --- Training, resuming, predicting, evaluating, exporting ---

@pytest.fixture(scope="session")
def metadata_run(tmp_path_factory, metadata_data) -> Path:
    # Calibrated after training (train.py --calibrate), so the prediction and export tests
    # below also cover a Temperature layer behind a metadata model.
    config = tiny_config(tmp_path_factory.mktemp("metadata_run"), metadata_data, epochs=3,
                         lr=3e-3, metadata=str(metadata_data / "train_metadata.csv"),
                         calibrate=True)
    return training.train_and_evaluate(config, verbose=0)


@pytest.mark.slow
def test_metadata_run_records_its_encoding_and_predicts_with_and_without_metadata(
        metadata_run, metadata_data, tmp_path):
    params = json.loads((metadata_run / "train_params.json").read_text())
    described = params["model"]["metadata"]
    assert described["vocabulary"] == {"sex": ["female", "male"],
                                       "anatom_site_general": ["site 0", "site 1", "site 2"]}
    assert described["train"]["with a row"] == 36 and described["val"]["with a row"] == 14
    assert "--metadata=" in (metadata_run / "flags.cfg").read_text()
    fitted = params["calibration"]
    assert fitted["images"] == 15  # Fitted with the run's own metadata CSV.
    assert artifacts.load_model(metadata_run).temperature == fitted["temperature"]

    rows = inference.predict_to_folder(metadata_run, [metadata_data / "val"], tmp_path / "p",
                                       metadata=str(metadata_data / "metadata.csv"),
                                       backend="keras")
    used = {Path(row["path"]).stem: row["metadata"] for row in rows}
    assert used["v0_0001"] == "missing" and used["v0_0002"] == "used"
    header = (tmp_path / "p" / "predictions.csv").read_text().splitlines()[0]
    assert header.endswith(",metadata,unknown,unknown_score,error")  # --calibrate: a rule.
    # Metadata changes the answers; no CSV runs every image as missing, like blank rows.
    blank = inference.predict_to_folder(metadata_run, [metadata_data / "val"], tmp_path / "b",
                                        backend="keras")
    assert {row["metadata"] for row in blank} == {"missing"}
    with_csv = np.array([list(row["probabilities"].values()) for row in rows])
    without = np.array([list(row["probabilities"].values()) for row in blank])
    # 1e-5, not more: a run that learned little is calibrated to a high temperature, whose
    # flat probabilities differ by 1e-4 (seen in CI); float noise is 1e-7.
    assert np.abs(with_csv - without).max() > 1e-5
    loaded = artifacts.load_model(metadata_run)
    records, _, _ = patient_metadata.for_prediction("none", ["x"])
    images = np.stack([np.full((32, 32, 3), 120.0, np.float32)])
    np.testing.assert_allclose(loaded.predict_images(images), loaded.predict_images(images,
                                                                                    records))
    # (TFLite with the metadata input: test_exports_equal_keras_on_both_inputs, int8.)


@pytest.mark.slow
def test_evaluate_reports_the_metadata_ablation_and_refuses_it_for_image_only_models(
        metadata_run, metadata_data, trained_run, tmp_path):
    report = evaluation.evaluate_model_path(
        metadata_run, metadata_data / "val", tmp_path / "e", backend="keras",
        metadata=str(metadata_data / "metadata.csv"), metadata_ablation=True)
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    ablation = saved["metadata ablation"]
    assert ablation["with metadata"]["balanced accuracy"] == report["balanced accuracy"]
    blanked = json.loads((tmp_path / "e" / "metadata_blanked" / "metrics.json").read_text())
    assert ablation["metadata blanked"]["balanced accuracy"] == blanked["balanced accuracy"]
    # The blanked run really ran without metadata: its answers differ from the fed ones.
    fed, blank = (np.array([list(row["probabilities"].values()) for row in json.loads(
        (folder / "predictions.json").read_text())]) for folder in (
            tmp_path / "e", tmp_path / "e" / "metadata_blanked"))
    assert np.abs(fed - blank).max() > 1e-5  # (see the test above)
    assert saved["metadata"]["images with a row"] == 14
    with pytest.raises(UserError, match="has no metadata input"):
        evaluation.evaluate_model_path(trained_run, metadata_data / "val", tmp_path / "x",
                                       metadata_ablation=True)


@pytest.mark.slow
def test_exports_equal_keras_on_both_inputs(metadata_run, metadata_data, tmp_path):
    report = exporting.export(exporting.ExportConfig(
        model_path=str(metadata_run), data_val=str(metadata_data / "val"),
        output=str(tmp_path / "x"), formats=("saved_model", "tflite_int8", "onnx"),
        parity_images=10, calibration_images=4))
    assert report["metadata"] == "varied over the vocabulary"
    artifacts_ = report["artifacts"]
    assert artifacts_["saved_model"]["max abs probability difference"] < 1e-5
    # The unknown rule (--calibrate fits one) travels: same scores, same images flagged.
    threshold = artifacts.load_model(metadata_run).unknown.threshold  # About -1e3.
    assert artifacts_["saved_model"]["unknown agreement"] == 1.0
    assert artifacts_["saved_model"]["max abs score difference"] < 1e-4 * abs(threshold)
    # int8: the score is quantized too; the report says how far (a float TFLite file's score
    # output: test_cross_validation's calibrated ensemble).
    assert 0 <= artifacts_["tflite_int8"]["unknown agreement"] <= 1
    assert artifacts_["saved_model"]["image-only signature max abs difference"] < 1e-5
    # int8: the metadata input is uint8 too (quantized with the file's scale by the runner).
    assert artifacts_["tflite_int8"]["max abs probability difference"] < 0.05
    described = json.loads((tmp_path / "x" / "tflite_int8" / "metadata.json").read_text())
    assert described["metadata input"]["shape"] == [1, 9]  # 2 age, 2 + 1 sex, 3 + 1 site.

    # Each exported file, loaded as predict.py loads it, answers as Keras on raw records.
    keras_model = artifacts.load_model(metadata_run)
    records = [Record(25.0, "male", "site 1"), MISSING, Record(None, "female", "site 2"),
               Record(70.0, "other", "site 0")]
    images = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    expected, expected_scores = keras_model.predict_scored(images, records)
    assert artifacts_["onnx"]["max abs probability difference"] < 1e-5
    for path, tolerance in ((tmp_path / "x" / "saved_model" / "skin", 1e-5),
                            (tmp_path / "x" / "onnx" / "skin.onnx", 1e-5),
                            (tmp_path / "x" / "tflite_int8" / "skin_int8.tflite", 0.05)):
        loaded = artifacts.load_model(path)
        assert loaded.takes_metadata and loaded.unknown == keras_model.unknown
        probabilities, scores = loaded.predict_scored(images, records)
        np.testing.assert_allclose(probabilities, expected, atol=tolerance)
        if tolerance < 0.01:
            np.testing.assert_allclose(scores, expected_scores, rtol=1e-4)
    served = tf.saved_model.load(str(tmp_path / "x" / "saved_model" / "skin" / "1"))
    assert set(served.signatures) == {"serving_default", "serving_images", "serving_image_only"}


@pytest.mark.slow
def test_metadata_run_resumes_only_with_the_same_vocabulary(
        metadata_data, tmp_path, monkeypatch):
    csv_path = str(tmp_path / "metadata.csv")
    original = (metadata_data / "train_metadata.csv").read_text()
    Path(csv_path).write_text(original)
    config = tiny_config(tmp_path, metadata_data, epochs=2, metadata=csv_path)
    with monkeypatch.context() as patch:
        kill_at_log_write(patch, 2)
        with pytest.raises(Killed):
            training.train_and_evaluate(config, verbose=0)
    run_dir = tmp_path / "runs" / "exp1"
    # The CSV edited in place so that its vocabulary differs: refused, naming why.
    Path(csv_path).write_text(original.replace("site 2", "site 9"))
    resumed = tiny_config(tmp_path, metadata_data, epochs=2, metadata=csv_path,
                          resume=str(run_dir))
    with pytest.raises(UserError, match="other categories than the run was started with"):
        training.train_and_evaluate(resumed, verbose=0)
    Path(csv_path).write_text(original)
    training.train_and_evaluate(resumed, verbose=0)
    log = json.loads((run_dir / "log.json").read_text())
    assert len(log) == 2

    # (The frozen backbone's cached-feature head with metadata: test_cross_validation.)


@pytest.mark.slow
def test_train_py_auto_finds_metadata_csv_and_reports_bad_ages_in_one_line(
        metadata_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        (data / split).symlink_to(metadata_data / split)
    (data / "metadata.csv").write_text((metadata_data / "metadata.csv").read_text())
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"--data_train={data / 'train'}",
         f"--data_val={data / 'val'}", f"--save_ret={tmp_path / 'runs'}", "--model=b0",
         "--weights=none", "--img_size=32", "--epochs=1", "--metadata=auto"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "age_approx value(s) that are not a number in [0, 120], the first 'abc'" in (
        result.stderr)
    assert "Traceback" not in result.stderr


def test_grad_cam_of_a_metadata_model_explains_the_image_path():
    from skin_keras.infer import gradcam  # pylint: disable=g-import-not-at-top

    encoding = PatientMetadata(("female", "male"), ("back",))
    model = models.build_model("b0", 3, 64, "none", freeze_backbone=False,
                               metadata_encoding=encoding)
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    vectors = encoding.encode_records([Record(30.0, "male", "back"), MISSING])
    maps, classes = gradcam.grad_cam(model, images, metadata=vectors)
    assert maps.shape == (2, 64, 64) and 0 <= maps.min() and maps.max() <= 1
    # Without a class given it explains the model's prediction (metadata included) ...
    np.testing.assert_array_equal(classes, model([images, vectors]).numpy().argmax(1))
    # ... and for a given class the map does not depend on the metadata (the head is linear).
    fixed = np.array([2, 0])
    np.testing.assert_allclose(gradcam.grad_cam(model, images, fixed, metadata=vectors)[0],
                               gradcam.grad_cam(model, images, fixed)[0], atol=1e-5)
