"""ONNX: converting a Keras model, and running a file with ONNX Runtime.

Used by export (`--formats=onnx` and its parity row) and by inference (the cached copy
`--backend=onnx` runs). The file takes images [B, H, W, 3] float32 RGB in [0, 255] (any batch)
as "image" (and "metadata" [B, size] for a metadata model) and answers "probabilities"
(and "unknown_score" [B] for a model with an unknown rule); the class names and export.py's
description of the model are in the model's metadata properties ("class_names",
"skin_keras").

Converted with tf2onnx from the model traced once as a SavedModel, the way its command line
converts SavedModels. Keras 3's own `model.export(format="onnx")` (also tf2onnx underneath) was
tried first: its traced function keeps constants of EfficientNetV2's Normalization layer as
graph inputs, so ONNX Runtime refuses the file ("Required inputs ... normalization/Sub/y:0 are
missing").
"""

import json
import os
import tempfile
from pathlib import Path

import keras
import numpy as np

from skin_keras import atomic, cache, litert

CLASS_NAMES_KEY = "class_names"
DESCRIPTION_KEY = "skin_keras"
OPSET = 17  # ONNX Runtime 1.32 (requirements.txt) runs it; tf2onnx 1.17 would pick 15.


def convert(model: keras.Model, description: dict | None = None) -> bytes:
    """A serialized ONNX model of `model` (probabilities, and the unknown score if it has a
    rule), with the class names and `description` in its metadata properties."""
    from keras.src.export.tf2onnx_lib import patch_tf2onnx  # pylint: disable=g-import-not-at-top
    patch_tf2onnx()  # tf2onnx 1.17 still refers to NumPy 1 names; Keras' own export patches them.
    import tf2onnx  # pylint: disable=g-import-not-at-top

    with tempfile.TemporaryDirectory() as folder:
        litert.traced_source(model, folder, batch=None, named_outputs=True)
        graph_def, inputs, outputs, renames = tf2onnx.tf_loader.from_saved_model(
            folder, None, None, tag="serve", signatures=["serve"], return_tensors_to_rename=True)
    proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs,
                                              output_names=outputs, opset=OPSET,
                                              tensors_to_rename=renames)
    if description is not None:
        for key, value in ((CLASS_NAMES_KEY, description["class_names"]),
                           (DESCRIPTION_KEY, description)):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
    return proto.SerializeToString()


class ONNXRunner:
    """Runs an .onnx classifier written by `convert` with ONNX Runtime on the CPU (images
    [B, H, W, 3] in [0, 255], and encoded metadata [B, size] for a metadata model)."""

    CHUNK = 32

    def __init__(self, model_content: bytes):
        import onnxruntime  # pylint: disable=g-import-not-at-top

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.log_severity_level = 3  # Errors only.
        # Its threads sleep between calls instead of spinning, leaving the cores to the tf.data
        # decoder and other processes; the same speed either way here (benchmarks/README.md,
        # session 9: the 19.9 img/s once blamed on spinning was tf.data's autotuner).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(model_content, options,
                                                    providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        image = next((i for i in inputs if len(i.shape) == 4), None)
        outputs = self.session.get_outputs()
        probabilities = next((o for o in outputs if len(o.shape) == 2), None)
        if image is None or probabilities is None or not isinstance(image.shape[1], int):
            raise ValueError("not an image classifier: it needs an input [B, H, W, 3] and an "
                             "output [B, classes]")
        self.image_name, self.img_size = image.name, int(image.shape[1])
        self.metadata_input = next((i for i in inputs if len(i.shape) == 2), None)
        self.output_names = [probabilities.name] + [o.name for o in outputs if len(o.shape) == 1]
        self.classes = probabilities.shape[1]
        self.properties = self.session.get_modelmeta().custom_metadata_map

    @property
    def scores(self) -> bool:
        """Whether calls return (probabilities, out-of-distribution scores)."""
        return len(self.output_names) > 1

    @property
    def metadata_size(self) -> int | None:
        return None if self.metadata_input is None else int(self.metadata_input.shape[1])

    def description(self) -> dict | None:
        """export.py's description of the model from the metadata properties (None without)."""
        text = self.properties.get(DESCRIPTION_KEY)
        return None if text is None else json.loads(text)

    def __call__(self, images, metadata=None):
        images = np.asarray(images, np.float32)
        if self.metadata_input is not None and metadata is None:
            raise ValueError("this ONNX model takes encoded metadata beside the images")
        answers = []
        for start in range(0, len(images), self.CHUNK):
            feed = {self.image_name: images[start:start + self.CHUNK]}
            if self.metadata_input is not None:
                feed[self.metadata_input.name] = np.asarray(
                    metadata[start:start + self.CHUNK], np.float32)
            answers.append(self.session.run(self.output_names, feed))
        probabilities = np.concatenate([answer[0] for answer in answers])
        if not self.scores:
            return probabilities
        return probabilities, np.concatenate([answer[1] for answer in answers])


def cached_copy(keras_file: Path, model: keras.Model, convert_if_missing: bool = True,
                digest: str | None = None) -> ONNXRunner | None:
    """A runner for an ONNX copy of a .keras file, converted once per file content and kept in
    <cache>/onnx; None when not cached and `convert_if_missing` is False. `digest`: the
    file's SHA-1 when the caller has it."""
    path = cache.cache_root() / "onnx" / f"{digest or cache.file_sha1(keras_file)}.onnx"
    if not path.exists():
        if not convert_if_missing:
            return None
        print(f"converting {keras_file} to ONNX (once; cached in {path.parent})")
        content = convert(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_atomic(path, lambda tmp: Path(tmp).write_bytes(content))
    return ONNXRunner(path.read_bytes())
