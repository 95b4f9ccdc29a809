"""Models with a patient-metadata input, from the run folder on: predicting with and without
the CSV, evaluating with the ablation, and every export answering as Keras on both inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from skin_keras.core.errors import UserError
from skin_keras.data import patient_metadata, pipeline
from skin_keras.data.patient_metadata import MISSING, Record
from skin_keras.evaluate import evaluation
from skin_keras.evaluate.evaluation import EvaluateConfig
from skin_keras.export import job
from skin_keras.infer import backend, gradcam, load, predict
from skin_keras.infer import formats
from skin_keras.infer.formats import tflite
from skin_keras.infer.predict import PredictConfig
from skin_keras.workflows import fit_calibration

from conftest import probabilities, untrained_run_folder


def predict_to(model_path, sources, output, **options):
    return json.loads(predict.predict_to_folder(PredictConfig(
        model_path=str(model_path), source=tuple(str(s) for s in sources), output=str(output),
        **options)).read_text())


@pytest.fixture(scope="module")
def metadata_run(tmp_path_factory, metadata_data) -> Path:
    """An untrained metadata model's run folder, calibrated (a temperature and the
    feature_distance unknown rule), so the tests below also cover a Temperature layer and a
    score behind a metadata model."""
    run = untrained_run_folder(tmp_path_factory.mktemp("metadata_run"), metadata_data,
                               metadata=str(metadata_data / "train_metadata.csv"))
    fit_calibration.calibrate_run(fit_calibration.CalibrateConfig(model_path=str(run)))
    return run


def test_metadata_run_records_its_encoding_and_predicts_with_and_without_metadata(
        metadata_run, metadata_data, tmp_path, caplog):
    params = json.loads((metadata_run / "train_params.json").read_text())
    described = params["model"]["metadata"]
    assert described["vocabulary"] == {"sex": ["female", "male"],
                                       "anatom_site_general": ["site 0", "site 1", "site 2"]}
    assert described["train"]["with a row"] == 36 and described["val"]["with a row"] == 14
    assert "--metadata=" in (metadata_run / "flags.cfg").read_text()
    fitted = params["calibration"]
    assert fitted["images"] == 15  # Fitted with the run's own metadata CSV.
    assert load.load(metadata_run).temperature == fitted["temperature"]

    rows = predict_to(metadata_run, [metadata_data / "val"], tmp_path / "p",
                      metadata=str(metadata_data / "metadata.csv"), backend="keras")
    used = {Path(row["path"]).stem: row["metadata"] for row in rows}
    assert used["v0_0001"] == "missing" and used["v0_0002"] == "used"
    header = (tmp_path / "p" / "predictions.csv").read_text().splitlines()[0]
    assert header.endswith(",metadata,unknown,unknown_score,error")  # --calibrate: a rule.
    # Metadata changes the answers; no CSV runs every image as missing, like blank rows.
    blank = predict_to(metadata_run, [metadata_data / "val"], tmp_path / "b", backend="keras")
    assert {row["metadata"] for row in blank} == {"missing"}
    # Values the model does not know (categories outside its vocabulary, an age not
    # believed) are no metadata: "missing", counted, and the same answers as none.
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("image,age_approx,sex,anatom_site_general\n" + "".join(
        f"{Path(row['path']).stem},200,m,left big toe\n" for row in blank))
    caplog.clear()
    strange = predict_to(metadata_run, [metadata_data / "val"], tmp_path / "u",
                         metadata=str(unknown), backend="keras")
    assert {row["metadata"] for row in strange} == {"missing"}
    assert f"{len(blank)} image(s) whose values are all unknown to the model" in caplog.text
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in strange],
                               [list(r["probabilities"].values()) for r in blank], atol=1e-6)
    with_csv = np.array([list(row["probabilities"].values()) for row in rows])
    without = np.array([list(row["probabilities"].values()) for row in blank])
    # 1e-5, not more: a model calibrated to a high temperature has flat probabilities that
    # differ by 1e-4 (seen in CI); float noise is 1e-7.
    assert np.abs(with_csv - without).max() > 1e-5
    loaded = load.load(metadata_run)
    records, _, _ = patient_metadata.for_prediction("none", ["x"])
    images = np.stack([np.full((32, 32, 3), 120.0, np.float32)])
    np.testing.assert_allclose(probabilities(loaded, images),
                               probabilities(loaded, images, records=records))
    # (TFLite with the metadata input: test_exports_equal_keras_on_both_inputs, int8.)


def test_evaluate_reports_the_metadata_ablation_and_refuses_it_for_image_only_models(
        metadata_run, metadata_data, untrained_run, tmp_path):
    report = evaluation.evaluate_model_path(EvaluateConfig(
        model_path=str(metadata_run), data=str(metadata_data / "val"),
        output=str(tmp_path / "e"), backend="keras", metadata=str(metadata_data / "metadata.csv"),
        metadata_ablation=True))
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
        evaluation.evaluate_model_path(EvaluateConfig(
            model_path=str(untrained_run), data=str(metadata_data / "val"),
            output=str(tmp_path / "x"), metadata_ablation=True))


def test_exports_equal_keras_on_both_inputs(metadata_run, metadata_data, tmp_path,
                                           monkeypatch):
    report = job.export(job.ExportConfig(
        model_path=str(metadata_run), data_val=str(metadata_data / "val"),
        output=str(tmp_path / "x"), formats=("saved_model", "tflite_int8", "onnx"),
        parity_images=10, calibration_images=4))
    assert report["metadata"] == "varied over the vocabulary"
    artifacts_ = report["artifacts"]
    assert artifacts_["saved_model"]["max abs probability difference"] < 1e-5
    # The unknown rule (--calibrate fits one) travels: same scores, same images flagged.
    keras_model = load.load(metadata_run)
    threshold = keras_model.unknown.threshold  # About -1e3.
    assert artifacts_["saved_model"]["unknown agreement"] == 1.0
    assert artifacts_["saved_model"]["max abs score difference"] < 1e-4 * abs(threshold)
    # int8: the score is quantized too; the report says how far (a float TFLite file's score
    # output: test_cross_validation's calibrated ensemble).
    assert 0 <= artifacts_["tflite_int8"]["unknown agreement"] <= 1
    assert artifacts_["saved_model"]["image-only signature max abs difference"] < 1e-5
    described = json.loads((tmp_path / "x" / "tflite_int8" / "metadata.json").read_text())
    assert described["metadata input"]["shape"] == [1, 9]  # 2 age, 2 + 1 sex, 3 + 1 site.

    # Each exported file, loaded as predict.py loads it, answers as Keras on raw records.
    records = [Record(25.0, "male", "site 1"), MISSING, Record(None, "female", "site 2"),
               Record(70.0, "other", "site 0")]
    images = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    batch = {"image": images, "records": records}
    answer = keras_model(batch)
    expected, expected_scores = answer["probabilities"], answer["unknown_score"]
    with pytest.raises(ValueError, match="patient records as 'records'"):  # Not dropped.
        keras_model({"image": images, "metadata": records})
    assert artifacts_["onnx"]["max abs probability difference"] < 1e-5
    for path in (tmp_path / "x" / "saved_model" / "skin", tmp_path / "x" / "onnx" / "skin.onnx"):
        loaded = load.load(path)
        assert "metadata" in loaded.inputs and loaded.unknown == keras_model.unknown
        answer = loaded(batch)
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
        np.testing.assert_allclose(answer["unknown_score"], expected_scores, rtol=1e-4)
    # int8: the metadata input is uint8 too, fed with the file's own scale and zero point. How
    # close int8 comes depends on the model (an untrained one calibrated to a temperature below 1
    # sharpens every quantization error), so the check is that the scaled input is the right one:
    # nearer to Keras than the same vectors cast to uint8 unscaled.
    int8 = load.load(tmp_path / "x" / "tflite_int8" / "skin_int8.tflite")
    assert "metadata" in int8.inputs and int8.unknown == keras_model.unknown
    detail = int8.input_details["metadata"]
    assert detail["dtype"] == np.uint8 and detail["quantization"][0] > 0
    scaled_error = np.abs(int8(batch)["probabilities"] - expected).max()
    with monkeypatch.context() as patch:
        patch.setattr(tflite, "_quantize", lambda values, detail: values)
        unscaled_error = np.abs(int8(batch)["probabilities"] - expected).max()
    assert scaled_error < unscaled_error
    # A file that cannot take a batch (TFLite files of 5884882 among them) runs one image at a
    # time: each record's vector is scaled to uint8 once (it was scaled twice, ages to 255).
    int8.batch_one_only = True
    int8._set_batch(1)  # pylint: disable=protected-access
    scaled, quantize = [], tflite._quantize
    with monkeypatch.context() as patch:
        patch.setattr(tflite, "_quantize", lambda values, detail: scaled.append(values) or (
            quantize(values, detail)))
        one_at_a_time = int8(batch)["probabilities"]
    np.testing.assert_array_equal(np.concatenate(scaled),
                                  int8.about.encoding.encode_records(records))
    assert np.abs(one_at_a_time - expected).max() == pytest.approx(scaled_error, abs=1e-6)
    served = tf.saved_model.load(str(tmp_path / "x" / "saved_model" / "skin" / "1"))
    assert set(served.signatures) == {"serving_default", "serving_images", "serving_image_only"}
    # The SavedModel says how it encodes metadata (predict.py's "used"/"missing"), and its
    # labels must name as many classes as it answers.
    version = tmp_path / "x" / "saved_model" / "skin" / "1"
    assert load.load(version).about.encoding.describe() == (
        keras_model.about.encoding or parts_encoding(keras_model)).describe()
    labels = version / "assets" / "labels.txt"
    labels.write_text(labels.read_text() + "Mel\nanoma\n")
    with pytest.raises(UserError, match=r"answers 3 classes but .*labels.txt names 5"):
        load.load(version)


def parts_encoding(runner):
    from skin_keras.model import parts  # pylint: disable=g-import-not-at-top
    return parts.metadata_encoding_of(runner.model)


def test_int8_backends_calibrate_the_metadata_branch_on_every_value(metadata_run, metadata_data,
                                                                    monkeypatch):
    # predict.py --backend=tflite_int8 has no metadata CSV to calibrate on: it runs the
    # conversion on records varied over the model's vocabulary (as export.py without
    # --metadata), so every age band, sex, site and "missing" reaches the calibration.
    keras_model = load.load(metadata_run)
    seen = []
    calibration_inputs = formats.Work.calibration_inputs
    with monkeypatch.context() as patch:
        patch.setattr(formats.Work, "calibration_inputs", lambda work, runner: seen.append(
            calibration_inputs(work, runner)) or seen[-1])
        int8 = backend.select(keras_model, "tflite_int8", images=10)
    encoding = keras_model.about.encoding
    assert len(seen) == 1 and (seen[0]["metadata"][:, 1:].max(axis=0) == 1).all()  # Each value.
    assert len(np.unique(seen[0]["metadata"][:, 0])) >= 5  # Ages spread, not one value.
    assert seen[0]["metadata"].shape == (len(seen[0]["image"]), encoding.size)
    # And it answers as Keras on records it was not calibrated on: 13 of these 15 images (13
    # also with two other record sets, and with calibration on "missing" alone; 2026-12-08).
    paths = sorted(str(p) for p in (metadata_data / "val").rglob("*.jpg"))
    images = np.stack([pipeline.load_image(p, keras_model.img_size).numpy() for p in paths])
    records = [Record(float(20 + 5 * (i % 12)), ("female", "male")[i % 2],
                      ("site 0", "site 1", "site 2")[i % 3]) for i in range(len(paths))]
    batch = {"image": images, "records": records}
    expected = keras_model(batch)["probabilities"].argmax(1)
    assert (int8(batch)["probabilities"].argmax(1) == expected).mean() >= 0.8


def test_the_python_api_takes_metadata_as_predict_py_takes_the_csv(metadata_run, metadata_data,
                                                                   tmp_path):
    import csv  # pylint: disable=g-import-not-at-top

    import skin_keras  # pylint: disable=g-import-not-at-top

    rows = predict_to(metadata_run, [metadata_data / "val"], tmp_path / "p",
                      metadata=str(metadata_data / "metadata.csv"), backend="keras")
    table = {row["image"]: row for row in csv.DictReader(open(metadata_data / "metadata.csv"))}
    values = [None if Path(row["path"]).stem not in table else {
        column: table[Path(row["path"]).stem][column] for column in patient_metadata.COLUMNS}
        for row in rows]
    ours = skin_keras.load(metadata_run, backend="keras").predict(
        [row["path"] for row in rows], metadata=values)
    assert [row["metadata"] for row in ours] == [row["metadata"] for row in rows]
    def table_of(found):
        return [list(row["probabilities"].values()) for row in found]

    np.testing.assert_allclose(table_of(ours), table_of(rows), atol=1e-6)
    with pytest.raises(UserError, match="unknown key\\(s\\) age"):
        skin_keras.load(metadata_run).predict([rows[0]["path"]], metadata=[{"age": 50}])
    # explain(metadata=...): the heat map of the class predicted with the record, which the
    # sites (they name the classes here) change for some images. (At 32 px the last feature
    # map is one cell, so the maps are flat: the class explained is what is checked.)
    model = skin_keras.load(metadata_run, backend="keras")
    blind = model.predict([row["path"] for row in rows])
    changed = [i for i in range(len(rows)) if blind[i]["label"] != ours[i]["label"]]
    assert changed
    explained, grad_cam = [], gradcam.grad_cam
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gradcam, "grad_cam", lambda *args, **kwargs: explained.append(
            grad_cam(*args, **kwargs)) or explained[-1])
        for i in changed:
            model.explain(rows[i]["path"], metadata=values[i])
            model.explain(rows[i]["path"])
    assert [model.classes[int(classes[0])] for _, classes in explained] == [
        label for i in changed for label in (ours[i]["label"], blind[i]["label"])]


def test_an_edited_metadata_csv_makes_another_job(metadata_run, metadata_data, tmp_path):
    # A finished job whose files are unchanged has nothing to do: the metadata CSV is one of
    # its inputs, so an edited CSV must not leave the old answers standing with exit 0.
    import shutil  # pylint: disable=g-import-not-at-top

    table = tmp_path / "metadata.csv"
    shutil.copy(metadata_data / "metadata.csv", table)
    options = dict(metadata=str(table), backend="keras")
    predict_to(metadata_run, [metadata_data / "val"], tmp_path / "p", **options)
    with open(table, "a") as file:
        file.write("v0_0001,70,male,site 1\n")
    with pytest.raises(UserError, match="another job \\(it differs in metadata file\\)"):
        predict_to(metadata_run, [metadata_data / "val"], tmp_path / "p", **options)
