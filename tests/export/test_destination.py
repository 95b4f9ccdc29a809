"""Where an export writes: what it would replace is checked and said before any conversion,
another model's export is not replaced without --overwrite, report.json keeps earlier rows,
and --data_val without readable images is one line."""

import json
import os
import shutil

import pytest

from skin_keras.core.errors import UserError
from skin_keras.export import job, parity
from skin_keras.infer import load

from conftest import corrupt_files


def test_what_an_export_replaces_is_checked_and_said_before_any_conversion(
        untrained_run, tiny_dataset, tmp_path, monkeypatch, caplog):
    made = []

    def fake_export(fmt, target, *args):  # Conversions are tested above; this is the folder.
        fmt = fmt.name
        made.append(fmt)
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.mkdir() if fmt == "saved_model" else target.write_text(fmt))
        return {"path": str(target), "top1 agreement": 1.0}

    monkeypatch.setattr(job, "_export_one", fake_export)
    monkeypatch.setattr(parity, "describe", lambda report: "")

    def export(run, formats, **options):
        return job.export(job.ExportConfig(
            model_path=str(run), output=str(tmp_path / "out"), data_val=str(tiny_dataset / "val"),
            formats=formats, parity_images=2, **options))

    export(untrained_run, ("tflite_fp32",))
    # Interrupted after its first artifact: report.json already lists it.
    def interrupted_after_onnx(fmt, *args):
        if fmt != "onnx":
            raise KeyboardInterrupt
        return []

    monkeypatch.setattr(job, "_judge", interrupted_after_onnx)
    with pytest.raises(KeyboardInterrupt):
        export(untrained_run, ("onnx", "tflite_fp16"))
    assert set(json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"]) == {
        "tflite_fp32", "onnx"}
    monkeypatch.undo()
    monkeypatch.setattr(job, "_export_one", fake_export)
    monkeypatch.setattr(parity, "describe", lambda report: "")
    report = export(untrained_run, ("saved_model", "tflite_fp32"))  # The same model again.
    assert set(report["artifacts"]) == {"tflite_fp32", "onnx", "saved_model"}  # Rows kept.
    assert "replacing the earlier export of this model" in caplog.text
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(saved["artifacts"]) == {"tflite_fp32", "onnx", "saved_model"}
    other = shutil.copytree(untrained_run, tmp_path / "other_run")
    made.clear()
    for formats, options, message in [
            (("tflite_fp32",), {}, "holds the export of another model .*--overwrite"),
            (("saved_model",), {"version": 1, "overwrite": True}, "skin/1 exists already")]:
        with pytest.raises(UserError, match=message):
            export(other, formats, **options)
    assert made == [] and (tmp_path / "out" / "tflite_fp32" / "skin_fp32.tflite").read_text(
        ) == "tflite_fp32"
    report = export(other, ("onnx",), overwrite=True)
    assert set(report["artifacts"]) == {"onnx"} and "other_run" in report["model"]
    assert not (tmp_path / "out" / "tflite_fp32" / "skin_fp32.tflite").exists()
    assert not (tmp_path / "out" / "saved_model" / "skin" / "1").exists()
    with pytest.raises(UserError, match="--name=..: use letters"):
        job.ExportConfig(model_path="m", data_val="d", name="..")


def test_export_leaves_out_undecodable_parity_images_and_refuses_none(untrained_run, tmp_path,
                                                                      tiny_dataset):
    (tmp_path / "val" / "Melanoma").mkdir(parents=True)
    corrupt_files(tmp_path / "val" / "Melanoma")
    (tmp_path / "val" / "Melanoma" / "corrupt_scan.jpg").unlink()  # (It decodes, repaired.)
    with pytest.raises(UserError, match="holds no readable images to check the exports on"):
        job.export(job.ExportConfig(model_path=str(untrained_run), output=str(tmp_path / "o"),
                                    data_val=str(tmp_path / "val"), formats=("onnx",)))


@pytest.mark.slow
def test_an_output_under_a_file_is_refused_before_any_work(untrained_run, tiny_dataset, tmp_path,
                                                          monkeypatch):
    (tmp_path / "file").write_text("x")

    def no_loading(*args):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(load, "load", no_loading)
    with pytest.raises(UserError, match="file is a file, not a folder"):
        job.export(job.ExportConfig(model_path=str(untrained_run),
                                    output=str(tmp_path / "file" / "out"),
                                    data_val=str(tiny_dataset / "val")))


def test_export_ships_only_a_card_of_the_exact_model_it_exports(tmp_path):
    # Reliability 2026-12-07 S3: the newest card was another weights file's (averaged.keras).
    from skin_keras.evaluate import model_card  # pylint: disable=g-import-not-at-top
    from skin_keras.export import destination  # pylint: disable=g-import-not-at-top

    run, out = tmp_path / "run", tmp_path / "o"
    (run / "weights").mkdir(parents=True)
    out.mkdir()
    best, averaged = run / "weights" / "best.keras", run / "weights" / "averaged.keras"
    best.write_bytes(b"best v1")
    averaged.write_bytes(b"averaged")
    assert destination.ship_model_card(best, out) is None
    metrics = {"images": 3, "data": "val", "tta views": 1, "balanced accuracy": 0.5,
               "accuracy": 0.5, "calibration": {"expected calibration error": 0.1,
                                                "brier score": 0.2,
                                                "negative log-likelihood": 0.3}}
    for folder, model, figure in (("eval_val", best, 0.3), ("eval_test", averaged, 0.53)):
        (run / folder).mkdir()
        model_card.write(run / folder, {**metrics, "model": str(model), "balanced accuracy":
                                        figure}, [], None)
    os.utime(run / "eval_val" / model_card.FILE, ns=(0, 0))  # The averaged card is newer.
    shipped = destination.ship_model_card(best, out)
    assert shipped.read_text() == (run / "eval_val" / model_card.FILE).read_text()
    assert "value: 0.3" in shipped.read_text()
    best.write_bytes(b"best v2")  # Calibrated or trained again since: no card describes it.
    assert destination.ship_model_card(best, out) is None
    assert not (out / model_card.FILE).exists()  # The earlier export's card goes too.
