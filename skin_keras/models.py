"""EfficientNetV2 classifiers: a Keras application backbone and a small head.

    image [0, 255] -> [colour constancy] -> EfficientNetV2 backbone (its own rescaling)
                   -> global average pooling -> dropout -> Dense(num_classes, softmax)

With patient metadata (`metadata_encoding`), a second input, the encoded vector, goes through a
small MLP (two Dense + BatchNorm + ReLU + dropout blocks, as in Gessert et al. 2020) and is
concatenated with the pooled image features before the head's dropout. A model without it has
exactly the one image input.

The model's input has a fixed size (`img_size`), so a saved model says at which size it was
trained; the backbone inside is built for any size, so the same layers can be called at other
sizes (progressive resizing).
"""

import logging
import os
import re
import warnings

import keras
import tensorflow as tf

from skin_keras import fused_batch_norm
from skin_keras.calibration import Temperature
from skin_keras.color_constancy import ColorConstancy
from skin_keras.config import BACKBONES
from skin_keras.errors import UserError, first_line
from skin_keras.metadata_encoding import PatientMetadata
from skin_keras.open_set import UnknownDetector, detector_of

# The layers of ours a saved model can hold; importing this module registers them with Keras,
# so `keras.models.load_model` can rebuild any model skin_keras saves.
CUSTOM_LAYERS = (ColorConstancy, PatientMetadata, Temperature, UnknownDetector)

HEAD_LAYERS = ("avg_pool", "head_dropout", "predictions")
METADATA_INPUT = "patient_metadata"
METADATA_LAYERS = (METADATA_INPUT, "metadata_dense_1", "metadata_norm_1", "metadata_relu_1",
                   "metadata_dropout_1", "metadata_dense_2", "metadata_norm_2", "metadata_relu_2",
                   "metadata_dropout_2")
CONCAT = "image_and_metadata"
METADATA_UNITS = 64
METADATA_DROPOUT = 0.3


def is_pretrained(weights: str) -> bool:
    return weights.lower() != "none"


def build_backbone(model_name: str, weights: str = "imagenet") -> keras.Model:
    """The EfficientNetV2 feature extractor (no top), for images of any size.

    Args:
      model_name: One of BACKBONES (s, m, l, b0..b3).
      weights: "imagenet" (Keras downloads and caches the file), "none" (random initialisation),
        or a path to a backbone weights file: a `.weights.h5` saved by Keras 3, or the
        `efficientnetv2-*_notop.h5` file Keras downloads, copied from a machine with internet.
    """
    if model_name not in BACKBONES:
        raise UserError(f"unknown model {model_name!r}; choose one of {', '.join(BACKBONES)}")
    constructor = getattr(keras.applications, BACKBONES[model_name][0])
    if weights.lower() in ("imagenet", "none"):
        keras_weights = None if weights.lower() == "none" else "imagenet"
    else:
        if not os.path.isfile(weights):
            raise UserError(f"--weights={weights}: no such file (use imagenet, none or a path to a "
                            "backbone weights file)")
        keras_weights = None
    try:
        backbone = constructor(include_top=False, weights=keras_weights,
                               input_shape=(None, None, 3), include_preprocessing=True)
    except Exception as error:  # Keras raises a bare Exception when the download fails.
        if "URL fetch failure" not in str(error):
            raise
        cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
        raise UserError(
            f"could not download the ImageNet weights of EfficientNetV2-{model_name.upper()} (no "
            f"internet?): copy efficientnetv2-{model_name}_notop.h5 into {cache}/ or pass "
            "--weights=PATH_TO_FILE, or --weights=none to train from scratch") from error
    if keras_weights is None and is_pretrained(weights):
        try:
            with warnings.catch_warnings():  # A mismatch raises below; spare the user its echo.
                warnings.simplefilter("ignore")
                backbone.load_weights(weights)
        except (ValueError, OSError, KeyError) as error:
            reason = first_line(error)
            raise UserError(f"--weights={weights} does not fit EfficientNetV2-{model_name.upper()}: "
                            f"{reason}") from error
    return backbone


def build_model(model_name: str, num_classes: int, img_size: int, weights: str = "imagenet",
                freeze_backbone: bool = True, dropout_rate: float = 0.2,
                color_constancy: str = "none", cc_power: float = 6.0,
                metadata_encoding: PatientMetadata | None = None) -> keras.Model:
    """Builds the classifier. Its input is a batch of RGB images in [0, 255] of `img_size`.

    A frozen backbone is excluded from training and always runs in inference mode, so its
    BatchNormalization statistics stay those of the pretrained weights. A pretrained backbone
    being fine-tuned also runs in inference mode (the Keras transfer-learning recipe: small
    fine-tuning batches would wreck the statistics). Only a backbone trained from scratch runs in
    training mode and learns its statistics. `color_constancy` (gray_world, shades_of_gray)
    puts a `ColorConstancy` layer before the backbone; `metadata_encoding` adds the metadata
    input (the model then takes [images, encoded metadata]).
    """
    if num_classes < 2:
        raise UserError(f"need at least 2 classes to train a classifier, got {num_classes}")
    if freeze_backbone and not is_pretrained(weights):
        logging.warning("Freezing a backbone that was not pretrained (--weights=none): only the "
                        "head will learn, on random features. Use --nofreeze_layers to train all.")
    backbone = build_backbone(model_name, weights)
    fused_batch_norm.use_fused_kernel(backbone)  # Same function; training steps +21-29% here.
    backbone.trainable = not freeze_backbone
    if backbone_training_mode(freeze_backbone, weights) is False:
        hold_inference_mode(backbone)

    head = [keras.layers.GlobalAveragePooling2D(name=HEAD_LAYERS[0]),
            keras.layers.Dropout(dropout_rate, name=HEAD_LAYERS[1]),
            # float32 output keeps the softmax stable under mixed precision.
            keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                               name=HEAD_LAYERS[2])]
    layers = {layer.name: layer for layer in head}
    if metadata_encoding is not None:
        layers.update(_metadata_layers(metadata_encoding))
    preprocessing = [] if color_constancy == "none" else [
        ColorConstancy(color_constancy, cc_power, name="color_constancy")]
    return _connect(_inputs(img_size, metadata_encoding), preprocessing, backbone,
                    layers.__getitem__, backbone_training_mode(freeze_backbone, weights),
                    f"efficientnetv2_{model_name}")


def _metadata_layers(encoding: PatientMetadata) -> dict:
    if encoding.name != METADATA_INPUT:
        encoding = PatientMetadata.from_config({**encoding.get_config(), "name": METADATA_INPUT})
    layers = [encoding]
    for block in (1, 2):
        layers += [keras.layers.Dense(METADATA_UNITS, name=f"metadata_dense_{block}"),
                   keras.layers.BatchNormalization(name=f"metadata_norm_{block}"),
                   keras.layers.Activation("relu", name=f"metadata_relu_{block}"),
                   keras.layers.Dropout(METADATA_DROPOUT, name=f"metadata_dropout_{block}")]
    layers.append(keras.layers.Concatenate(name=CONCAT))
    return {layer.name: layer for layer in layers}


def _inputs(img_size: int | None, encoding: PatientMetadata | None) -> list:
    image = keras.Input((img_size, img_size, 3), name="image")
    return [image] if encoding is None else [image, keras.Input((encoding.size,),
                                                                name="metadata")]


def hold_inference_mode(backbone: keras.Model) -> None:
    """Makes the backbone compute in fit() what it computes in predict().

    Keras 3 functional models pass the outer call's `training` to nested models, overriding the
    `training=False` given when the model was built, so a frozen backbone would still apply
    EfficientNetV2's stochastic depth (its Dropout layers) while the head trains. Dropout at rate
    0 and frozen BatchNormalization (which then normalises with its moving statistics) make both
    modes the same function; both settings are saved with the model.
    """
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def backbone_training_mode(freeze_backbone: bool, weights: str) -> bool | None:
    """False (inference mode) for a frozen or pretrained backbone; None (follow fit) otherwise."""
    return False if (freeze_backbone or is_pretrained(weights)) else None


def _connect(inputs, preprocessing, backbone, layer, backbone_training, name) -> keras.Model:
    """The model from its inputs ([image] or [image, metadata]); `layer(name)` gives the head's
    layers."""
    features = inputs[0]
    for step in preprocessing:
        features = step(features)
    features = backbone(features, training=backbone_training)
    outputs = _head(layer(HEAD_LAYERS[0])(features), inputs[1:], layer)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=name)


def _head(pooled, metadata: list, layer):
    """Pooled image features (and the metadata input) -> probabilities."""
    features = pooled
    if metadata:
        branch = metadata[0]
        for name in METADATA_LAYERS:
            branch = layer(name)(branch)
        features = layer(CONCAT)([pooled, branch])
    for name in HEAD_LAYERS[1:]:
        features = layer(name)(features)
    return features


def dense_input(model: keras.Model, pooled, metadata=None):
    """What the output Dense layer sees in inference mode for pooled image features (Grad-CAM
    multiplies it by the layer's kernel)."""
    if metadata_encoding_of(model) is None:
        return pooled
    branch = model_inputs(model, pooled, metadata)[1]
    for name in METADATA_LAYERS:
        branch = model.get_layer(name)(branch, training=False)
    return model.get_layer(CONCAT)([pooled, branch])


def metadata_encoding_of(model: keras.Model) -> PatientMetadata | None:
    """The metadata encoding of a model with a metadata input (an ensemble's: its first
    member's); None for an image-only model."""
    members = ensemble_members(model)
    if members:
        return metadata_encoding_of(members[0])
    try:
        layer = model.get_layer(METADATA_INPUT)
    except ValueError:
        return None
    return layer if isinstance(layer, PatientMetadata) else None


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The member classifiers of an ensemble (cross_validation.ensemble_model); [] for one
    classifier."""
    return [layer for layer in model.layers if isinstance(layer, keras.Model) and any(
        inner.name == HEAD_LAYERS[2] for inner in layer.layers)]


def model_inputs(model: keras.Model, images, metadata=None):
    """What to call `model` with: the images, or [images, metadata vectors] for a metadata
    model (all rows "missing" when `metadata` is None)."""
    encoding = metadata_encoding_of(model)
    if encoding is None:
        return images
    if metadata is None:
        metadata = tf.repeat(tf.constant(encoding.missing_vector())[None], tf.shape(images)[0],
                             axis=0)
    return [images, metadata]


def _rebuilt(model: keras.Model, outputs, name: str | None = None) -> keras.Model:
    """A model of the same inputs (and layers, weights shared) with other outputs."""
    return keras.Model(model.inputs if len(model.inputs) > 1 else model.inputs[0], outputs,
                       name=name or model.name)


def has_pooled_features(model: keras.Model) -> bool:
    """Whether the model has the one backbone's pooled features (not an ensemble)."""
    return any(layer.name == HEAD_LAYERS[0] for layer in model.layers)


def with_detector(model: keras.Model, detector: UnknownDetector | None) -> keras.Model:
    """The same layers with `detector` (open_set) at the output in place of any earlier one;
    None: without one. The detector reads the pooled image features (the probabilities where
    there are none)."""
    previous = detector_of(model)
    output = previous.input[0] if previous is not None else model.outputs[0]
    if detector is None:
        return model if previous is None else _rebuilt(model, output)
    features = model.get_layer(HEAD_LAYERS[0]).output if has_pooled_features(model) else output
    return _rebuilt(model, detector([output, features]))


def scored_model(model: keras.Model) -> keras.Model | None:
    """inputs -> [probabilities, out-of-distribution score [B]]; None without a detector."""
    detector = detector_of(model)
    if detector is None:
        return None
    return _rebuilt(model, [model.outputs[0], _Score(detector, name="unknown_score")(
        detector.input)], f"{model.name}_scored")


class _Score(keras.layers.Layer):
    """The detector's score as a layer of the (never saved) two-output model."""

    def __init__(self, detector: UnknownDetector, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.detector = detector

    def call(self, inputs):
        return self.detector.score(*inputs)

    def compute_output_shape(self, input_shape):
        return input_shape[0][:1]


def logits_model(model: keras.Model) -> keras.Model | None:
    """inputs -> the output Dense layer's logits (before its softmax); None for a model without
    one (an ensemble)."""
    try:
        dense = model.get_layer(HEAD_LAYERS[2])
    except ValueError:
        return None
    return _rebuilt(model, _Logits(dense, name="logits")(dense.input), f"{model.name}_logits")


class _Logits(keras.layers.Layer):
    def __init__(self, dense: keras.layers.Dense, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.dense = dense

    def call(self, inputs):
        return keras.ops.matmul(keras.ops.cast(inputs, "float32"), self.dense.kernel) + (
            self.dense.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.dense.units)


def any_size_twin(model: keras.Model, backbone_training: bool | None) -> keras.Model:
    """The same layers (shared weights) behind an input of any size, for progressive resizing."""
    return _connect(_inputs(None, metadata_encoding_of(model)), preprocessing_layers(model),
                    backbone_of(model), model.get_layer, backbone_training,
                    f"{model.name}_any_size")


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


def feature_model(model: keras.Model) -> keras.Model:
    """Images -> pooled backbone features (image features only: metadata joins after them)."""
    return keras.Model(model.inputs[0], model.get_layer(HEAD_LAYERS[0]).output)


def head_model(model: keras.Model) -> keras.Model:
    """Pooled features (and metadata) -> probabilities, through the same (shared) head layers as
    `model`: the model the cached-feature epochs train."""
    pooled = model.get_layer(HEAD_LAYERS[0]).output
    features = keras.Input(pooled.shape[1:], name="features")
    metadata = model.inputs[1:]
    metadata = [keras.Input(metadata[0].shape[1:], name="metadata")] if metadata else []
    outputs = _head(features, metadata, model.get_layer)
    return keras.Model([features, *metadata] if metadata else features, outputs,
                       name=f"{model.name}_head")


def _block_number(layer_name: str) -> int | None:
    """EfficientNetV2 layers are named block<stage><letter>_...; None for stem and top."""
    match = re.match(r"block(\d+)[a-z]_", layer_name)
    return int(match.group(1)) if match else None


def unfreeze_top_blocks(backbone: keras.Model, blocks: int) -> None:
    """Makes the top `blocks` stages of the backbone (0: all of it) trainable.

    BatchNormalization layers stay frozen, so they keep running in inference mode with the
    statistics they have (the Keras fine-tuning recipe).
    """
    numbers = [n for n in (_block_number(layer.name) for layer in backbone.layers) if n]
    first = max(numbers) - blocks + 1 if blocks else 0
    backbone.trainable = True
    for layer in backbone.layers:
        number = _block_number(layer.name)
        in_top = blocks == 0 or (number is not None and number >= first) or (
            number is None and layer.name.startswith("top_"))
        layer.trainable = in_top and not isinstance(layer, keras.layers.BatchNormalization)


def backbone_of(model: keras.Model) -> keras.Model:
    """The EfficientNetV2 backbone nested in a model built by `build_model`."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError(f"model {model.name} has no nested backbone")


def image_size(model: keras.Model) -> int:
    """The input size a model was built for (its image input is [None, size, size, 3])."""
    return int(model.inputs[0].shape[1])


def count_params(weights) -> int:
    return int(sum(keras.ops.size(w) for w in weights))


def count_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass on one image at the model's input size.

    Counted by TensorFlow's profiler on the frozen inference graph (a multiply-add is two FLOPs;
    PyTorch counters such as thop count it as one, hence about half this figure).
    """
    from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-direct-tensorflow-import

    size = image_size(model)
    forward = tf.function(lambda images: model(model_inputs(model, images), training=False))
    concrete = forward.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
    _, graph_def = convert_to_constants.convert_variables_to_constants_v2_as_graph(concrete)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        profile = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    return int(profile.total_float_ops)
