"""export.py: TF Serving SavedModel and TFLite files that give the Keras model's answers."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from skin_keras.core import cache
from skin_keras.core.errors import UserError
from skin_keras.data import folders, pipeline
from skin_keras.evaluate import evaluation
from skin_keras.evaluate.evaluation import EvaluateConfig
from skin_keras.export import job
from skin_keras.infer import backend, formats, load, predict
from skin_keras.infer.formats import onnx_file, saved_model, tflite
from skin_keras.infer.files import predict_files
from skin_keras.infer.predict import PredictConfig

from conftest import REPO, assert_mediapipe_answers_as_predict, embedded_metadata, probabilities


@pytest.fixture(scope="module")
def exported(untrained_run, tiny_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("exports") / "skin"
    config = job.ExportConfig(model_path=str(untrained_run), output=str(output),
                              data_val=str(tiny_dataset / "val"), formats=job.FORMATS,
                              parity_images=12, calibration_images=8)
    return output, job.export(config)


@pytest.mark.slow
def test_saved_model_has_tf_serving_layout_and_both_signatures(untrained, exported):
    output, report = exported
    version_dir = output / "saved_model" / "skin" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "assets" / "labels.txt").read_text().splitlines() == \
        untrained.class_names
    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli), "show", "--dir", str(version_dir), "--all"],
                           capture_output=True, text=True, check=True).stdout
    for expected in ("signature_def['serving_default']", "signature_def['serving_images']",
                     "image_bytes", "probabilities", "label", "score"):
        assert expected in shown
    assert report["artifacts"]["saved_model"]["version"] == 1


@pytest.mark.slow
def test_saved_model_signatures_equal_keras(untrained, exported, tmp_path):
    output, _ = exported
    loaded = untrained
    served = tf.saved_model.load(str(output / "saved_model" / "skin" / "1"))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 50, 40, 3), dtype=np.uint8)
    png_bytes = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        png_bytes.append(buffer.getvalue())
    # The same decode-and-resize as training, done by hand, then the float signature.
    images = np.stack([pipeline.decode_and_resize(b, loaded.img_size).numpy()
                       for b in png_bytes])
    by_images = served.signatures["serving_images"](images=tf.constant(images))
    expected = probabilities(loaded.model, images)
    np.testing.assert_allclose(by_images["probabilities"].numpy(), expected, atol=1e-5)
    by_bytes = served.signatures["serving_default"](image_bytes=tf.constant(png_bytes))
    np.testing.assert_allclose(by_bytes["probabilities"].numpy(),
                               by_images["probabilities"].numpy(), atol=1e-6)
    labels = [label.decode() for label in by_bytes["label"].numpy()]
    assert labels == [loaded.class_names[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(by_bytes["score"].numpy(), expected.max(1), atol=1e-5)
    # Each signature is a method of the loaded object too (as Keras' ExportArchive made it).
    np.testing.assert_allclose(served.serving_images(tf.constant(images))["probabilities"],
                               by_images["probabilities"].numpy(), atol=1e-6)


@pytest.mark.slow
def test_versions_count_up_and_a_taken_version_is_refused(untrained, exported, tmp_path):
    output, report = exported
    assert report["artifacts"]["saved_model"]["version"] == 1
    base = output / "saved_model" / "skin"
    assert saved_model.next_version(base) == 2
    (tmp_path / "7").mkdir()
    (tmp_path / "notes").mkdir()
    assert saved_model.next_version(tmp_path) == 8
    assert saved_model.next_version(tmp_path / "absent") == 1
    with pytest.raises(UserError, match="exists already"):
        saved_model.write_saved_model(untrained, base, 1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp32", "fp16", "dynamic", "int8"])
def test_tflite_files_use_builtin_ops_only_and_carry_labels_and_metadata(exported, kind):
    output, report = exported
    folder = output / f"tflite_{kind}"
    content = (folder / f"skin_{kind}.tflite").read_bytes()
    assert tflite.custom_ops(content) == []  # No Flex or custom ops.
    assert not any(op.startswith("Flex") for op in tflite.TFLiteRunner(content).op_names())
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["input"]["shape"][0] == 1 and metadata["input"]["value range"] == [0, 255]
    assert metadata["input"]["dtype"] == ("uint8" if kind == "int8" else "float32")
    assert (folder / "labels.txt").read_text().splitlines() == metadata["class_names"]
    detail = tflite.TFLiteRunner(content).input_details["image"]
    assert list(detail["shape"]) == metadata["input"]["shape"]
    assert detail["dtype"] == (np.uint8 if kind == "int8" else np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_tflite_files_describe_themselves_in_the_tflite_metadata_schema(exported, kind, tmp_path):
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    output, _ = exported
    path = output / f"tflite_{kind}" / f"skin_{kind}.tflite"
    metadata, model = embedded_metadata(path.read_bytes())
    subgraph = metadata.subgraphMetadata[0]
    image, = subgraph.inputTensorMetadata
    normalization = image.processUnits[0].options
    assert (normalization.mean, normalization.std) == ([0.0], [1.0])  # Takes [0, 255].
    assert image.content.contentProperties.colorSpace == fb.ColorSpaceType.RGB
    probabilities, = subgraph.outputTensorMetadata  # No unknown rule: one output.
    labels, = probabilities.associatedFiles
    assert (labels.name.decode(), labels.type) == ("labels.txt",
                                                   fb.AssociatedFileType.TENSOR_AXIS_LABELS)
    assert len(model.subgraphs[0].outputs) == 1
    # The file alone (no labels.txt or metadata.json beside it) loads with its class names.
    alone = tmp_path / path.name
    alone.write_bytes(path.read_bytes())
    expected = (output / f"tflite_{kind}" / "labels.txt").read_text().splitlines()
    assert load.load(alone).class_names == expected


# (conftest's bound: at the model's size MediaPipe's answers equal ours; docs/results_from_scratch.md.)
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_mediapipe_image_classifier_answers_as_predict_on_real_images(
        exported, ham_200px, kind, tmp_path):
    output, _ = exported
    assert_mediapipe_answers_as_predict(
        output / f"tflite_{kind}" / f"skin_{kind}.tflite",
        sorted((ham_200px / "ISIC_2019_Training_Input").glob("*.jpg"))[:24], tmp_path)


@pytest.mark.slow
def test_onnx_export_answers_as_keras_and_describes_itself(untrained, exported, untrained_run,
                                                         tiny_dataset,
                                                         tmp_path, monkeypatch, caplog):
    import onnx

    output, report = exported
    entry = report["artifacts"]["onnx"]
    assert entry["runtime"] == "onnxruntime" and entry["max abs probability difference"] < 1e-5
    path = output / "onnx" / "skin.onnx"
    properties = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    keras_model = untrained
    assert json.loads(properties["class_names"]) == keras_model.class_names
    assert json.loads(properties["skin_keras"])["input"]["value range"] == [0, 255]
    # Any batch size, images in [0, 255] as for the other formats.
    images = np.random.default_rng(1).uniform(0, 255, (5, 64, 64, 3)).astype(np.float32)
    alone = tmp_path / "alone" / "skin.onnx"  # Nothing beside it: class names from the file.
    alone.parent.mkdir()
    alone.write_bytes(path.read_bytes())
    loaded = load.load(alone)
    assert loaded.class_names == keras_model.class_names
    np.testing.assert_allclose(probabilities(loaded, images), probabilities(keras_model, images),
                               atol=1e-5)
    # --backend=onnx runs a cached ONNX copy of a .keras model; other backends refuse the file.
    # Its own cache: other tests expect auto to pick TFLite for the same run.
    # The exported file stands in for the conversion --backend=onnx would make (the conversion
    # itself: backend.cached_copy, tested with TFLite in test_predict).
    monkeypatch.setenv("SKIN_KERAS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "onnx").mkdir(parents=True)
    (tmp_path / "cache" / "onnx" / f"{cache.file_sha1(keras_model.source)}.onnx").write_bytes(
        path.read_bytes())
    converted = backend.select(keras_model, "onnx", 1)
    assert isinstance(converted, onnx_file.ONNXRunner)
    # Once an ONNX copy is cached, auto takes it (it never converts to ONNX itself); a damaged
    # copy is said and passed over.
    assert isinstance(backend.select(keras_model, "auto", 1), onnx_file.ONNXRunner)
    for cached in (tmp_path / "cache" / "onnx").glob("*.onnx"):
        cached.write_bytes(b"damaged")
    assert backend.select(keras_model, "auto", 1) is keras_model
    assert "the cached ONNX copy cannot be read" in caplog.text
    np.testing.assert_allclose(probabilities(converted, images),
                               probabilities(keras_model, images), atol=1e-5)
    with pytest.raises(UserError, match="--backend=tflite needs a run folder, .keras or .tflite"):
        backend.select(loaded, "tflite", 1)
    # A damaged file: one line that says so.
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="is not a readable ONNX model"):
        load.load(broken)
    # A model tf2onnx cannot convert: one line naming it, not tf2onnx's traceback.
    def fails(model):
        raise ValueError("unsupported op Foo\nmore detail")

    monkeypatch.setattr(onnx_file, "to_onnx", fails)
    with pytest.raises(formats.ExportError, match="tf2onnx could not convert .*: unsupported "
                       "op Foo$"):
        job.export(job.ExportConfig(
            model_path=str(untrained_run), output=str(tmp_path / "x"),
            data_val=str(tiny_dataset / "val"), formats=("onnx",), parity_images=2))


@pytest.mark.slow
def test_report_figures_can_be_recomputed(untrained, exported, tiny_dataset):
    output, report = exported
    assert json.loads((output / "report.json").read_text()) == report
    loaded = untrained
    val = folders.scan_image_folder(tiny_dataset / "val")
    chosen = folders.sample_indices(val, report["parity images"])
    images = np.stack([pipeline.load_image(val.paths[i], loaded.img_size).numpy()
                       for i in chosen])
    reference = probabilities(loaded.model, images)
    for kind in ("fp32", "fp16"):
        entry = report["artifacts"][f"tflite_{kind}"]
        answer = probabilities(tflite.TFLiteRunner(Path(entry["path"]).read_bytes()), images)
        assert entry["top1 agreement"] == np.mean(answer.argmax(1) == reference.argmax(1))
        assert entry["max abs probability difference"] == pytest.approx(
            np.max(np.abs(answer - reference)), abs=1e-6)
        assert entry["top1 agreement"] >= formats.MIN_TOP1_AGREEMENT
        assert entry["file size bytes"] == Path(entry["path"]).stat().st_size
    assert report["artifacts"]["tflite_fp32"]["max abs probability difference"] < 1e-4


@pytest.mark.slow
def test_tflite_matches_keras_on_real_dermoscopy_images(untrained, exported, ham_200px):
    output, _ = exported
    loaded = untrained
    paths = sorted((ham_200px / "ISIC_2019_Training_Input").glob("*.jpg"))[:16]
    images = np.stack([pipeline.load_image(str(p), loaded.img_size).numpy() for p in paths])
    reference = probabilities(loaded.model, images)
    tolerances = {"fp32": 1e-4, "fp16": 5e-3, "dynamic": 0.1}
    for kind, tolerance in tolerances.items():
        content = (output / f"tflite_{kind}" / f"skin_{kind}.tflite").read_bytes()
        np.testing.assert_allclose(probabilities(tflite.TFLiteRunner(content), images),
                                   reference, atol=tolerance, err_msg=kind)


@pytest.mark.slow
def test_predict_and_evaluate_accept_the_exported_models(untrained, exported, tiny_dataset,
                                                        tmp_path):
    output, _ = exported
    paths = sorted((tiny_dataset / "val").rglob("*.jpg"))[:6]
    by_keras, _ = predict_files(untrained, paths, 32, show_progress=False)
    for model_path, tolerance in ((output / "saved_model" / "skin", 1e-5),
                                  (output / "tflite_fp32" / "skin_fp32.tflite", 1e-4)):
        loaded = load.load(model_path)
        assert not hasattr(loaded, "model") and loaded.img_size == 64
        answer, errors = predict_files(loaded, paths, 32, show_progress=False)
        assert errors == [None] * len(paths)
        np.testing.assert_allclose(answer["probabilities"], by_keras["probabilities"],
                                   atol=tolerance)
    report = evaluation.evaluate_model_path(EvaluateConfig(
        model_path=str(model_path), data=str(tiny_dataset / "val"), output=str(tmp_path / "e")))
    assert report["images"] == 15
    with pytest.raises(UserError, match="Grad-CAM \\(--explain\\) needs the Keras model"):
        predict.predict_to_folder(PredictConfig(
            model_path=str(output / "tflite_int8" / "skin_int8.tflite"),
            source=(str(paths[0]),), output=str(tmp_path / "out"), explain=True))


@pytest.mark.slow
def test_export_script_errors_are_one_line(tmp_path, tiny_dataset):
    (tmp_path / "notes.txt").write_text("not a model")
    result = subprocess.run(
        [sys.executable, str(REPO / "export.py"), f"--model_path={tmp_path / 'notes.txt'}",
         f"--output={tmp_path / 'out'}", f"--data_val={tiny_dataset / 'val'}"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"export.py: error: {tmp_path / 'notes.txt'} is not a model: give a run folder, a .keras, "
        ".tflite or .onnx file or a SavedModel folder")
    # Reliability 2026-12-07 C7: a flag left out was absl's "FATAL Flags parsing error", exit 1.
    result = subprocess.run([sys.executable, str(REPO / "export.py")], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "export.py: error: --model_path is required")


def test_export_without_data_val_uses_the_runs_own_validation_folder(untrained_run, tmp_path,
                                                                     tiny_dataset):
    # Reliability 2026-12-07 C7.
    source = untrained_run / "weights" / "best.keras"
    assert job._runs_validation_folder(source) == str(tiny_dataset / "val")
    (tmp_path / "m").mkdir()
    shutil.copy(source, tmp_path / "m" / "model.keras")  # Outside any run folder.
    with pytest.raises(UserError, match="give --data_val=FOLDER .*names no validation folder"):
        job._runs_validation_folder(tmp_path / "m" / "model.keras")


@pytest.mark.slow
def test_exports_say_which_colour_constancy_and_are_readable_by_others(exported):
    output, report = exported
    umask = os.umask(0)
    os.umask(umask)
    for kind in ("fp32", "int8"):
        folder = output / f"tflite_{kind}"
        metadata = json.loads((folder / "metadata.json").read_text())
        assert metadata["preprocessing inside the model"] == (
            "shades of gray (p=6) colour constancy")
        assert "POW" in report["artifacts"][f"tflite_{kind}"]["ops"]  # The layer is in the file.
        for name in (f"skin_{kind}.tflite", "labels.txt", "metadata.json"):
            assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert (output / "report.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.slow
def test_robustness_report_works_on_exported_models(exported, tiny_dataset, tmp_path):
    output, _ = exported
    for model_path in (output / "saved_model" / "skin",
                       output / "tflite_fp32" / "skin_fp32.tflite"):
        result = evaluation.evaluate_model_path(EvaluateConfig(
            model_path=str(model_path), data=str(tiny_dataset / "val"),
            output=str(tmp_path / model_path.name), shifts=("warm", "vignette")))
        assert list(result["shifts"]) == ["clean", "warm", "vignette"]
        assert result["images"] == 15


def test_onnx_int8_quantizes_the_convolutions_and_keeps_swish_in_float(untrained, exported,
                                                                       tiny_dataset):
    import onnx

    output, report = exported
    entry = report["artifacts"]["onnx_int8"]
    path = output / "onnx" / "skin_int8.onnx"
    assert entry["path"] == str(path) and entry["calibration images"] == 8
    graph = onnx.load(str(path)).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20  # The backbone's convolutions, per output channel.
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    assert convolutions and all(made_by.get(node.input[0]) == "DequantizeLinear"
                                for node in convolutions)
    # Swish and squeeze-excitation's gates compute in float: no Sigmoid output is quantized.
    quantized = [node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"]
    assert "Sigmoid" in made_by.values()
    assert not any(made_by.get(name) == "Sigmoid" for name in quantized)
    # The classifier too: its logits are not rounded to 8 bits.
    dense = [node for node in graph.node if node.op_type in ("MatMul", "Gemm")]
    assert dense and not any(made_by.get(name) == "DequantizeLinear"
                             for node in dense for name in node.input)
    assert path.stat().st_size < 0.5 * (output / "onnx" / "skin.onnx").stat().st_size
    properties = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(properties["class_names"]) == untrained.class_names
    loaded = load.load(path)
    images = np.stack([pipeline.load_image(str(p), 64).numpy()
                       for p in sorted((tiny_dataset / "val").rglob("*.jpg"))[:6]])
    np.testing.assert_allclose(probabilities(loaded, images), probabilities(untrained, images),
                               atol=0.05)
