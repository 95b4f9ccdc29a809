"""--model=lite0 through the whole path: ImageNet weights from the installed package, the head on
cached features then fine-tuning of the top stages, calibration and the "unknown" rule,
Grad-CAM, every export format (parity with Keras), and MediaPipe's ImageClassifier on the int8
.tflite answering as predict.py. (Metadata fusion joins after the pooled features, whatever the
backbone: test_metadata_training covers it.)"""

import contextlib
import io
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from skin_keras.export import job
from skin_keras.infer import load, predict
from skin_keras.infer.predict import PredictConfig
from skin_keras.model import parts
from skin_keras.model.backbones import efficientnet_lite
from skin_keras.workflows import training

from conftest import assert_mediapipe_answers_as_predict, tiny_config


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory, tiny_dataset):
    config = tiny_config(
        tmp_path_factory.mktemp("lite"), tiny_dataset, model="lite0", weights="imagenet",
        freeze_layers=True, img_size=64, epochs=1, finetune_epochs=1, unfreeze_blocks=2,
        calibrate=True, unknown_coverage=0.8)
    with contextlib.redirect_stdout(io.StringIO()):
        return training.run(config)  # What train.py runs.


@pytest.mark.slow
def test_a_lite_run_starts_from_imagenet_and_fine_tunes_its_top_stages(lite_run):
    loaded = load.load(lite_run)
    model = loaded.model
    assert model.name.startswith("efficientnet_lite0")
    assert loaded.temperature is not None and loaded.unknown.score == "feature_distance"
    # Stages 1-5 were frozen throughout: still the package's ImageNet weights.
    imagenet = efficientnet_lite.imagenet_backbone("lite0")
    backbone = parts.backbone_of(model)
    np.testing.assert_array_equal(backbone.get_layer("block3a_dwconv").get_weights()[0],
                                  imagenet.get_layer("block3a_dwconv").get_weights()[0])
    assert not np.array_equal(backbone.get_layer("block7a_project_conv").get_weights()[0],
                              imagenet.get_layer("block7a_project_conv").get_weights()[0])
    params = json.loads((lite_run / "train_params.json").read_text())
    trained = params["train parameters"]
    assert trained["model"] == "lite0" and trained["weights"] == "imagenet"


@pytest.mark.slow
def test_lite_grad_cam_and_every_export_answer_as_keras(lite_run, tiny_dataset, tmp_path):
    files = sorted((tiny_dataset / "val").rglob("*.jpg"))[:6]
    out = tmp_path / "explained"
    predict.predict_to_folder(PredictConfig(model_path=str(lite_run),
                                            source=tuple(map(str, files)), output=str(out),
                                            explain=True))
    assert len(list(out.rglob("*.jpg")) + list(out.rglob("*.png"))) >= len(files)

    report = job.export(job.ExportConfig(
        model_path=str(lite_run), output=str(tmp_path / "skin"),
        data_val=str(tiny_dataset / "val"), parity_images=12, calibration_images=8,
        formats=("saved_model", "tflite_fp32", "tflite_int8", "onnx", "onnx_int8")))
    for kind in ("saved_model", "tflite_fp32", "onnx"):
        assert report["artifacts"][kind]["top1 agreement"] == 1.0, kind
    # int8 ONNX quantizes each ReLU6 (Clip) with its convolution: the range after the
    # activation, within [0, 6] (zero point 0), not the pre-activation's (which cost a
    # fine-tuned Lite0 a fifth of its labels, docs/benchmarks.md).
    def nodes(fmt):
        graph = onnx.load(report["artifacts"][fmt]["path"]).graph
        return graph, {name: node for node in graph.node for name in node.input}

    float_graph, float_consumers = nodes("onnx")
    clipped = {node.name for node in float_graph.node if node.op_type == "Conv"
               and float_consumers[node.output[0]].op_type == "Clip"}
    graph, consumers = nodes("onnx_int8")
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert len(clipped) >= 10 and "Clip" not in {node.op_type for node in graph.node}
    for conv in (node for node in graph.node if node.name in clipped):
        quantize = consumers[conv.output[0]]
        assert quantize.op_type == "QuantizeLinear" and values[quantize.input[2]] == 0
        assert values[quantize.input[1]] * 255 <= 6 * 1.001

    # The int8 .tflite in MediaPipe's ImageClassifier: the labels and scores predict.py gives.
    assert_mediapipe_answers_as_predict(tmp_path / "skin" / "tflite_int8" / "skin_int8.tflite",
                                        files, tmp_path)
