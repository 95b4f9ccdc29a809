"""Files predict.py is pointed at that are not models it can run (each one line), and the
files it writes: names that never collide, cells a spreadsheet never runs."""

from pathlib import Path

import pytest
import tensorflow as tf

from skin_keras.core.errors import UserError
from skin_keras.data.csv_table import safe_cell
from skin_keras.infer import load, outputs


def _tflite_file(tmp):
    (tmp / "model.tflite").write_bytes(b"x")
    return tmp / "model.tflite"


def _saved_model_folder(tmp):
    (tmp / "saved").mkdir()
    (tmp / "saved" / "saved_model.pb").write_bytes(b"")
    return tmp / "saved"


def _nchw_onnx(tmp):
    """A PyTorch-layout classifier: images [N, 3, 16, 16] in, [N, 3] out."""
    import onnx  # pylint: disable=g-import-not-at-top
    from onnx import TensorProto, helper  # pylint: disable=g-import-not-at-top

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["probabilities"])], "nchw",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp / "nchw.onnx")
    return tmp / "nchw.onnx"


def _vector_tflite(tmp):
    """A .tflite that is not an image classifier: a vector [1, 10] in."""
    layer = tf.Variable(tf.ones((10, 3)))
    function = tf.function(lambda x: {"out": tf.nn.softmax(x @ layer)},
                           input_signature=[tf.TensorSpec([1, 10], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function)
    (tmp / "vector.tflite").write_bytes(converter.convert())
    return tmp / "vector.tflite"


@pytest.mark.parametrize("make, message", [
    (_nchw_onnx, r"not an NHWC image classifier: its image input is \['N', 3, 16, 16\] "
                 r"\(channels first"),
    (_vector_tflite, "is not a readable TFLite model: not an image classifier"),
    (lambda tmp: tmp / "missing", "does not exist"),
    (_tflite_file, "is not a readable TFLite model"),
    (_saved_model_folder, "could not be loaded as a SavedModel"),
    (lambda tmp: (tmp / "notes.txt").write_text("x") and tmp / "notes.txt", "is not a model"),
    (lambda tmp: tmp, "is not a run folder"),
])
def test_model_paths_that_are_not_keras_models_are_clear_errors(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        load.load(make(tmp_path))


def test_output_names_never_collide_and_cells_never_run_as_formulas(tmp_path):
    paths = [Path("s/a.jpg"), Path("s/a.png"), Path("s/a_1.jpg"), Path("t/a.jpg")]
    names = outputs.unique_names(paths)
    assert names[0] == "a" and names[2] == "a_1" and len(set(names)) == 4
    rows = [{"path": "=HYPERLINK(1).jpg", "label": "", "score": None,
             "probabilities": {"x": None}, "error": "-1 bad"}]
    outputs.write_predictions(rows, ["x"], tmp_path)
    line = (tmp_path / "predictions.csv").read_text().splitlines()[1]
    assert line == "'=HYPERLINK(1).jpg,,,,'-1 bad"
    assert safe_cell("=SUM(A1)") == "'=SUM(A1)" and safe_cell("s/=a.jpg") == "s/=a.jpg"
