"""EfficientNet classifiers: a backbone (backbones/: EfficientNetV2 or EfficientNet-Lite) and a
small head.

    {"image": [0, 255]} -> [colour constancy] -> backbone (its own rescaling)
                        -> global average pooling -> dropout -> Dense(num_classes, softmax)
                        -> {"probabilities"}

With patient metadata (layers.PatientMetadata), a second input, "metadata" (the encoded vector),
goes through a small MLP (two Dense + BatchNorm + ReLU + dropout blocks, as in Gessert et al.
2020) and is concatenated with the pooled image features before the head's dropout. A model
without it has exactly the one image input (io.py names both).

The model's input has a fixed size (`img_size`), so a saved model says at which size it was
trained; the backbone inside is built for any size, so the same layers can be called at other
sizes (progressive resizing: parts.any_size_twin).
"""

import dataclasses
import logging
import re

import keras

from skin_keras.core.errors import UserError
from skin_keras.model import backbones, fused_batch_norm, io
from skin_keras.model.layers import ColorConstancy, PatientMetadata
from skin_keras.model.spec import BACKBONES, ModelSpec

_log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class HeadNames:
    """The head's layers after the backbone, by role: their names here (HEAD), the layers
    themselves from `parts.head_of(model)`."""

    pooling: str = io.POOLED
    dropout: str = "head_dropout"
    classifier: str = "predictions"  # The Dense layer whose softmax is the output.


HEAD = HeadNames()
METADATA_LAYER = "patient_metadata"
METADATA_LAYERS = (METADATA_LAYER, "metadata_dense_1", "metadata_norm_1", "metadata_relu_1",
                   "metadata_dropout_1", "metadata_dense_2", "metadata_norm_2", "metadata_relu_2",
                   "metadata_dropout_2")
CONCAT = "image_and_metadata"
METADATA_UNITS = 64
METADATA_DROPOUT = 0.3


def build_backbone(model_name: str, weights: str) -> keras.Model:
    """The feature extractor of --model=`model_name` (no top), for images of any size, with
    --weights=`weights`: imagenet, none, or a path to a weights file (backbones/)."""
    return backbones.build(model_name, weights)


def build_model(spec: ModelSpec, num_classes: int,
                metadata: PatientMetadata | None = None) -> keras.Model:
    """The classifier `spec` describes, for `num_classes` classes; with `metadata` (the encoding
    fitted on the training rows), a metadata model.

    A frozen backbone is excluded from training and always runs in inference mode, so its
    BatchNormalization statistics stay those of the pretrained weights. A pretrained backbone
    being fine-tuned also runs in inference mode (the Keras transfer-learning recipe: small
    fine-tuning batches would wreck the statistics). Only a backbone trained from scratch runs in
    training mode and learns its statistics.
    """
    if num_classes < 2:
        raise UserError(f"need at least 2 classes to train a classifier, got {num_classes}")
    if spec.freeze_layers and not spec.pretrained:
        _log.warning("warning: freezing a backbone that was not pretrained (--weights=none): "
                     "only the head will learn, on random features. Use --nofreeze_layers to "
                     "train all.")
    backbone = build_backbone(spec.model, spec.weights)
    if spec.batch_norm == "fused":
        fused_batch_norm.use_fused_kernel(backbone)
    backbone.trainable = not spec.freeze_layers
    if spec.backbone_training is False:
        hold_inference_mode(backbone)

    head = [keras.layers.GlobalAveragePooling2D(name=HEAD.pooling),
            keras.layers.Dropout(spec.dropout, name=HEAD.dropout),
            # float32 output keeps the softmax stable under mixed precision.
            keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                               name=HEAD.classifier)]
    layers = {layer.name: layer for layer in head}
    if metadata is not None:
        layers.update(_metadata_layers(metadata))
    preprocessing = [] if spec.color_constancy == "none" else [
        ColorConstancy(spec.color_constancy, spec.cc_power, name="color_constancy")]
    return connect(inputs(spec.img_size, metadata), preprocessing, backbone,
                   layers.__getitem__, spec.backbone_training, BACKBONES[spec.model].model_name)


def _metadata_layers(encoding: PatientMetadata) -> dict:
    if encoding.name != METADATA_LAYER:
        encoding = PatientMetadata.from_config({**encoding.get_config(), "name": METADATA_LAYER})
    layers = [encoding]
    for block in (1, 2):
        layers += [keras.layers.Dense(METADATA_UNITS, name=f"metadata_dense_{block}"),
                   keras.layers.BatchNormalization(name=f"metadata_norm_{block}"),
                   keras.layers.Activation("relu", name=f"metadata_relu_{block}"),
                   keras.layers.Dropout(METADATA_DROPOUT, name=f"metadata_dropout_{block}")]
    layers.append(keras.layers.Concatenate(name=CONCAT))
    return {layer.name: layer for layer in layers}


def inputs(img_size: int | None, encoding: PatientMetadata | None) -> dict:
    """The named inputs of a model of `img_size` (None: any size), with the metadata vector of
    `encoding` for a metadata model."""
    named = {io.IMAGE: keras.Input((img_size, img_size, 3), name=io.IMAGE)}
    if encoding is not None:
        named[io.METADATA] = keras.Input((encoding.size,), name=io.METADATA)
    return named


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


def connect(named_inputs: dict, preprocessing, backbone, layer, backbone_training,
            name: str) -> keras.Model:
    """The model from its named inputs; `layer(name)` gives the head's layers."""
    features = named_inputs[io.IMAGE]
    for step in preprocessing:
        features = step(features)
    features = backbone(features, training=backbone_training)
    pooled = layer(HEAD.pooling)(features)
    return keras.Model(named_inputs, {io.PROBABILITIES: head(pooled, named_inputs, layer)},
                       name=name)


def head(pooled, named_inputs: dict, layer):
    """Pooled image features (and the metadata input, when `named_inputs` has one) ->
    probabilities, through the layers `layer(name)` gives."""
    features = pooled
    if io.METADATA in named_inputs:
        branch = named_inputs[io.METADATA]
        for name in METADATA_LAYERS:
            branch = layer(name)(branch)
        features = layer(CONCAT)([pooled, branch])
    for name in (HEAD.dropout, HEAD.classifier):
        features = layer(name)(features)
    return features


def _block_number(layer_name: str) -> int | None:
    """Backbone layers are named block<stage><letter>_...; None for stem and top."""
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
