"""What a built or loaded model is made of, and the models derived from its layers (weights
shared): the backbone, the pooled features, the head alone, a twin of any input size, the
logits. Each knows the layer names builder.py gives; an ensemble (ensemble.py) is recognised
by its member models."""

import dataclasses

import keras
import tensorflow as tf

from skin_keras.model import io
from skin_keras.model.builder import (
    CONCAT,
    HEAD,
    HeadNames,
    METADATA_LAYER,
    METADATA_LAYERS,
    connect,
    head,
    inputs,
)
from skin_keras.model.layers import ColorConstancy, PatientMetadata


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The member classifiers of an ensemble (ensemble.py); [] for one classifier."""
    return [layer for layer in model.layers if isinstance(layer, keras.Model) and any(
        inner.name == HEAD.classifier for inner in layer.layers)]


def head_of(model: keras.Model) -> HeadNames:
    """The head's layers of a model built by `builder.build_model`, by name: `.pooling`,
    `.dropout`, `.classifier` (the output Dense layer)."""
    return HeadNames(*(model.get_layer(name) for name in dataclasses.astuple(HEAD)))


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone nested in a model built by `builder.build_model`."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError(f"model {model.name} has no nested backbone")


def metadata_encoding_of(model: keras.Model) -> PatientMetadata | None:
    """The metadata encoding of a model with a metadata input (an ensemble's: its first
    member's); None for an image-only model."""
    members = ensemble_members(model)
    if members:
        return metadata_encoding_of(members[0])
    layer = next((layer for layer in model.layers if layer.name == METADATA_LAYER), None)
    return layer if isinstance(layer, PatientMetadata) else None


def model_inputs(model: keras.Model, given: dict) -> dict:
    """The named inputs to call `model` with: those of `given` it takes (always the image),
    and each one it takes that `given` lacks as unknown (encoded metadata: every row
    missing)."""
    inputs = {name: given[name] for name in io.input_names(model) if name in given}
    encoding = metadata_encoding_of(model)
    if encoding is not None and io.METADATA not in inputs:
        inputs[io.METADATA] = tf.repeat(tf.constant(encoding.missing_vector())[None],
                                        tf.shape(given[io.IMAGE])[0], axis=0)
    return inputs


def image_size(model: keras.Model) -> int:
    """The input size a model was built for (its image input is [None, size, size, 3])."""
    return int(io.input_dict(model)[io.IMAGE].shape[1])


def preprocessing_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers between the image input and the backbone (colour constancy), in order (an
    ensemble's: its first member's)."""
    members = ensemble_members(model)
    if members:
        return preprocessing_layers(members[0])
    return [layer for layer in model.layers if isinstance(layer, ColorConstancy)]


def backbone_input(model: keras.Model, images):
    """What the backbone of `model` sees for `images` (Grad-CAM starts here)."""
    for layer in preprocessing_layers(model):
        images = layer(images)
    return images


def describe_preprocessing(model: keras.Model) -> str:
    """How the model treats its [0, 255] RGB input before the backbone, in words."""
    steps = [layer.describe() + " colour constancy" for layer in preprocessing_layers(model)]
    return ", then ".join(steps) or "none"


def dense_input(model: keras.Model, pooled, given: dict):
    """What the output Dense layer sees in inference mode for pooled image features (Grad-CAM
    multiplies it by the layer's kernel), with the model's other inputs as in `model_inputs`
    (`given` without its image)."""
    if metadata_encoding_of(model) is None:
        return pooled
    branch = model_inputs(model, {**given, io.IMAGE: pooled})[io.METADATA]
    for name in METADATA_LAYERS:
        branch = model.get_layer(name)(branch, training=False)
    return model.get_layer(CONCAT)([pooled, branch])


def feature_model(model: keras.Model) -> keras.Model:
    """{"image"} -> {"features"}: the pooled backbone features (image features only: metadata
    joins after them)."""
    return keras.Model({io.IMAGE: io.input_dict(model)[io.IMAGE]},
                       {io.FEATURES: model.get_layer(HEAD.pooling).output},
                       name=f"{model.name}_features")


def head_model(model: keras.Model) -> keras.Model:
    """{"features"[, "metadata"]} -> {"probabilities"} through the same (shared) head layers
    as `model`: the model the cached-feature epochs train."""
    pooled = model.get_layer(HEAD.pooling).output
    named = {io.FEATURES: keras.Input(pooled.shape[1:], name=io.FEATURES)}
    metadata = io.input_dict(model).get(io.METADATA)
    if metadata is not None:
        named[io.METADATA] = keras.Input(metadata.shape[1:], name=io.METADATA)
    return keras.Model(named, {io.PROBABILITIES: head(named[io.FEATURES], named, model.get_layer)},
                       name=f"{model.name}_head")


def any_size_twin(model: keras.Model, backbone_training: bool | None) -> keras.Model:
    """The same layers (shared weights) behind an input of any size, for progressive resizing."""
    return connect(inputs(None, metadata_encoding_of(model)), preprocessing_layers(model),
                   backbone_of(model), model.get_layer, backbone_training,
                   f"{model.name}_any_size")


def logits_model(model: keras.Model) -> keras.Model | None:
    """The same inputs -> {"logits"}: the output Dense layer's logits (before its softmax); None
    for a model without one (an ensemble)."""
    try:
        dense = model.get_layer(HEAD.classifier)
    except ValueError:
        return None
    return io.rebuilt(model, {"logits": _Logits(dense, name="logits")(dense.input)},
                      f"{model.name}_logits")


class _Logits(keras.layers.Layer):
    def __init__(self, dense: keras.layers.Dense, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.dense = dense

    def call(self, inputs):
        return keras.ops.matmul(keras.ops.cast(inputs, "float32"), self.dense.kernel) + (
            self.dense.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.dense.units)


def count_params(weights) -> int:
    return int(sum(keras.ops.size(w) for w in weights))


def count_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass on one image at the model's input size.

    Counted by TensorFlow's profiler on the traced inference graph (a multiply-add is two FLOPs;
    PyTorch counters such as thop count it as one, hence about half this figure). Freezing the
    variables into constants first gives the same count (B0 at 32 and 64 px, 2026-12-05) in
    twice the time.
    """
    size = image_size(model)
    forward = tf.function(lambda images: model(model_inputs(model, {io.IMAGE: images}),
                                               training=False))
    graph = forward.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    return int(profile.total_float_ops)
