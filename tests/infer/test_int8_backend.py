"""--backend=onnx_int8: an int8 ONNX copy of a run's model, calibrated on the run's validation
images, cached; refused where there is nothing to calibrate on or the file is not int8."""

import shutil

import numpy as np
import onnx
import pytest

from skin_keras.core import cache
from skin_keras.core.errors import UserError
from skin_keras.infer import backend, load
from skin_keras.infer.formats import onnx_file, tflite

from conftest import probabilities


def test_onnx_int8_backend_calibrates_on_the_runs_validation_images(untrained, untrained_run,
                                                                     tmp_path, caplog):
    int8 = backend.select(untrained, "onnx_int8", images=10)
    assert isinstance(int8, onnx_file.ONNXRunner)
    assert "calibrating on 10 images of" in caplog.text  # 15 validation images: calls of 10.
    cached = cache.cache_root() / "onnx_int8" / f"{cache.file_sha1(untrained.source)}.onnx"
    graph = onnx.load(str(cached)).graph
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer) >= 20
    images = np.random.default_rng(0).uniform(0, 255, (6, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(probabilities(int8, images), probabilities(untrained, images),
                               atol=0.05)
    caplog.clear()
    assert isinstance(backend.select(untrained, "onnx_int8", images=10), onnx_file.ONNXRunner)
    assert "calibrating" not in caplog.text  # Cached: converted once.
    # A float ONNX file is not an int8 one; a model outside its run folder has nothing to
    # calibrate on.
    float_copy = backend.cached_copy(untrained, "onnx")
    float_file = cache.cache_root() / "onnx" / f"{cache.file_sha1(untrained.source)}.onnx"
    assert float_copy is not None
    with pytest.raises(UserError, match="not an int8 file"):
        backend.select(load.load(float_file), "onnx_int8", images=10)
    alone = tmp_path / "alone.keras"
    shutil.copy(untrained_run / "weights" / "best.keras", alone)
    with open(alone, "ab") as file:  # Other content, so no cached copy (a zip reads the same).
        file.write(b"\0")
    with pytest.raises(UserError, match="^--backend=onnx_int8 calibrates .* not in a run folder"):
        backend.select(load.load(alone), "onnx_int8", images=10)


def test_tflite_int8_backend_is_litert_full_integer(untrained):
    int8 = backend.select(untrained, "tflite_int8", images=10)
    assert isinstance(int8, tflite.TFLiteRunner)
    assert int8.input_details["image"]["dtype"] == np.uint8  # Full integer.
    images = np.random.default_rng(0).uniform(0, 255, (6, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(probabilities(int8, images), probabilities(untrained, images),
                               atol=0.1)
    float_copy = backend.cached_copy(untrained, "tflite")
    float_file = cache.cache_root() / "tflite" / f"{cache.file_sha1(untrained.source)}.tflite"
    assert float_copy is not None
    with pytest.raises(UserError, match="not an int8 file"):
        backend.select(load.load(float_file), "tflite_int8", images=10)
    cached = cache.cache_root() / "tflite_int8" / f"{cache.file_sha1(untrained.source)}.tflite"
    assert backend.select(load.load(cached), "tflite_int8", images=10) is not None
