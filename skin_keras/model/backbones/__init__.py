"""The backbones --model chooses from, one module per family: `efficientnet_v2` (keras.applications,
Keras' ImageNet download) and `efficientnet_lite` (built here, ImageNet weights from an installed
package). Every backbone takes [0, 255] RGB images of any size (its preprocessing is its first
layer) and names its layers as Keras' EfficientNets do (block<stage><letter>_..., top_...)."""

import keras

from skin_keras.core.errors import UserError
from skin_keras.model.backbones import efficientnet_lite, efficientnet_v2
from skin_keras.model.spec import BACKBONES

_FAMILIES = {"efficientnetv2": efficientnet_v2.backbone,
             "efficientnet_lite": efficientnet_lite.backbone}


def build(model_name: str, weights: str) -> keras.Model:
    """The feature extractor (no top) of --model=`model_name` with --weights=`weights`
    (imagenet, none, or a path to a weights file)."""
    if model_name not in BACKBONES:
        raise UserError(f"unknown model {model_name!r}; choose one of {', '.join(BACKBONES)}")
    backbone = BACKBONES[model_name]
    return _FAMILIES[backbone.family](backbone.variant, weights)
