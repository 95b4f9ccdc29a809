"""The model traced once, with its named inputs and outputs, as a SavedModel: what the TFLite
and ONNX converters read and what the SavedModel format writes."""

from pathlib import Path

import keras
import tensorflow as tf

from skin_keras.model import io

SOURCE_SIGNATURE = "serving_default"  # The converted TFLite file's one signature is named so.


def traced_source(model: keras.Model, folder: str, batch: int | None = 1) -> str:
    """Writes `model` with its named inputs, "image" [batch, H, W, 3] float32 (and "metadata"
    [batch, size] for a metadata model), and its named outputs as a SavedModel for the TFLite
    or ONNX converter (tracing it once serves every kind of conversion); returns `folder`.
    TFLite takes batch 1; None leaves the batch free (ONNX)."""
    model = io.named(model)
    specs = {name: tf.TensorSpec([batch, *tensor.shape[1:]], tf.float32, name=name)
             for name, tensor in io.input_dict(model).items()}
    serve = tf.function(lambda named: model(named, training=False), input_signature=[specs])
    save_signatures({SOURCE_SIGNATURE: serve}, folder)
    return folder


def save_signatures(signatures: dict, folder: str | Path, endpoints: bool = False) -> None:
    """Writes a SavedModel of `signatures` (name: a tf.function with an input signature) and
    the variables they capture, for inference only: each function traced once, no gradients of
    ops with custom gradients (nothing that serves or converts it differentiates). Three times
    faster than Keras' ExportArchive, which retraces every endpoint (docs/benchmarks.md). The
    captured tf.Variables are kept, not their Keras wrappers: only then do the converters
    freeze them into constants. `endpoints`: each signature is also a method of the loaded
    object, as ExportArchive made it (`tf.saved_model.load(path).serving_images(...)`)."""
    concrete = {name: function.get_concrete_function() for name, function in signatures.items()}
    holder = tf.Module()
    for name, function in signatures.items() if endpoints else ():
        setattr(holder, name, function)
    holder.captured_variables = list({id(variable): variable for function in concrete.values()
                                      for variable in function.variables}.values())
    tf.saved_model.save(holder, str(folder), signatures=concrete,
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
