"""The "unknown" answer a calibrated model carries: its rule and the layer that scores it.

A classifier gives one of its classes to every image, also to a photo of a cat or a lesion of a
kind it never saw (ISIC 2019's test set held such a ninth class, UNK). A calibrated model has a
second output, `unknown_score` (higher = more like the training images), computed by
`UnknownScore` from its probabilities and pooled image features:

    max_probability    the top calibrated probability (Hendrycks and Gimpel 2017)
    feature_distance   -min over classes of the Mahalanobis distance (squared) of the pooled
                       features to the class mean, one shared covariance (Lee et al. 2018)

An image is unknown when its score is below the rule's threshold, chosen on the validation set
so that a share `coverage` of in-distribution images is kept. The layer holds the rule and its
weights, so both travel with the .keras file and into every export. Fitting them is the
calibrate workflow's job (evaluate/ood.py has the NumPy side).
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from skin_keras.model.spec import PACKAGE, UNKNOWN_SCORES

# Beside an exported SavedModel (in its assets/): {"unknown": UnknownRule.to_dict()}.
RULE_FILE = "unknown.json"


@dataclasses.dataclass(frozen=True)
class UnknownRule:
    """An image is unknown when its `score` is below `threshold` (which keeps `coverage` of the
    validation images it was chosen on). `percentiles`: the 0th to 100th percentile of those
    images' scores (rules fitted before they were recorded have none), which say how typical
    of them an image is (`typicality`), in words a person can read."""

    threshold: float
    coverage: float
    score: str = UNKNOWN_SCORES[0]
    percentiles: tuple[float, ...] = ()

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) < self.threshold

    def typicality(self, scores: np.ndarray) -> np.ndarray | None:
        """The share (0-1) of validation images with a lower score, per score; None without
        percentiles."""
        if len(self.percentiles) < 2:
            return None
        below = np.searchsorted(np.asarray(self.percentiles), np.asarray(scores), side="left")
        return below / len(self.percentiles)

    def to_dict(self) -> dict:
        return {"score": self.score, "threshold": self.threshold, "coverage": self.coverage,
                "unknown when": f"{self.score} < {self.threshold:.6g}",
                "in words": f"less typical of the training images than {self.coverage:.0%} of "
                            f"the validation images (it flags {1 - self.coverage:.0%} of them)",
                **({"validation percentiles": list(self.percentiles)}
                   if self.percentiles else {})}

    @classmethod
    def from_dict(cls, data: dict) -> "UnknownRule":
        return cls(float(data["threshold"]), float(data["coverage"]), str(data["score"]),
                   tuple(float(v) for v in data.get("validation percentiles", ())))


@keras.saving.register_keras_serializable(package=PACKAGE)
class UnknownScore(keras.layers.Layer):
    """[probabilities, pooled image features] -> the out-of-distribution score [B] (float32).

    feature_distance is computed as || f P - c_k ||^2 with P P^T the precision matrix and
    c_k = mean_k P; max_probability ignores the features.
    """

    def __init__(self, score: str, threshold: float, coverage: float, num_classes: int = 0,
                 feature_size: int = 0, percentiles=(), **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if score not in UNKNOWN_SCORES:
            raise ValueError(f"unknown score {score!r}")
        self.rule = UnknownRule(float(threshold), float(coverage), score,
                                tuple(float(v) for v in percentiles))
        self.num_classes, self.feature_size = int(num_classes), int(feature_size)
        if score == "feature_distance":
            self.projection = self.add_weight((self.feature_size, self.feature_size),
                                              initializer="zeros", trainable=False,
                                              name="projection")
            self.centres = self.add_weight((self.num_classes, self.feature_size),
                                           initializer="zeros", trainable=False, name="centres")

    def call(self, inputs):
        return self.score(*inputs)

    def score(self, probabilities, features):
        if self.rule.score == "max_probability":
            return ops.max(ops.cast(probabilities, "float32"), axis=-1)
        projected = ops.matmul(ops.cast(features, "float32"), self.projection)
        # Differences first: |a|^2 - 2ab + |b|^2 loses the digits that tell images apart.
        distances = ops.sum((projected[:, None, :] - self.centres[None]) ** 2, axis=-1)
        return -ops.min(distances, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[0][:1]

    def get_config(self):
        return {**super().get_config(), "score": self.rule.score,
                "threshold": self.rule.threshold, "coverage": self.rule.coverage,
                "num_classes": self.num_classes, "feature_size": self.feature_size,
                "percentiles": list(self.rule.percentiles)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class UnknownDetector(UnknownScore):
    """How models calibrated before named outputs held the rule: the same config and weights,
    passing the probabilities through (its `score` was a second output built at load time).
    Loading such a file gives a model with named outputs (model/io.py `named`)."""

    def call(self, inputs):
        return ops.cast(inputs[0], "float32")

    def compute_output_shape(self, input_shape):
        return input_shape[0]
