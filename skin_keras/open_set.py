"""The "unknown" answer: how far an image looks like the ones the model was trained on.

A classifier gives one of its classes to every image, also to a photo of a cat or a lesion of a
kind it never saw (ISIC 2019's test set held such a ninth class, UNK). Each image gets an
out-of-distribution score (higher = more like the training images):

    max_probability   the top calibrated probability (Hendrycks and Gimpel 2017)
    energy            T * logsumexp(logits / T), the negative free energy (Liu et al. 2020);
                      needs the logits, so only a Keras model (not a single-member ensemble
                      average or an exported file) can give it

An image is `unknown` when its score is below a threshold chosen on the validation set so that a
share `coverage` of in-distribution images is kept (`threshold_for_coverage`). The rule is
stored in the model's `Temperature` layer (calibration.py), so it travels with the .keras file,
and export.py copies it into the SavedModel (outputs `unknown`, `unknown_score`) and beside
every TFLite file (metadata.json). evaluate.py --ood=FOLDER measures how well the score tells a
labelled set from a folder of images that are none of the classes (`ood_images.py` makes one).
"""

import dataclasses

import keras
import numpy as np
from keras import ops
from sklearn import covariance
from sklearn import metrics as sk_metrics

from skin_keras.config import UNKNOWN_SCORES, check_coverage
from skin_keras.errors import UserError

# The scores a model can carry (`UnknownDetector`); "energy" is measured by evaluate.py --ood
# for comparison only (it needs the logits, which exported files do not give).
SCORES = UNKNOWN_SCORES
DEFAULT_SCORE = SCORES[0]  # feature_distance, chosen on evidence: README section 6.
# Beside an exported SavedModel (in its assets/): {"unknown": UnknownRule.to_dict()}.
RULE_FILE = "unknown.json"


@dataclasses.dataclass(frozen=True)
class UnknownRule:
    """An image is unknown when its `score` is below `threshold` (which keeps `coverage` of the
    validation images it was chosen on)."""

    threshold: float
    coverage: float
    score: str = DEFAULT_SCORE

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) < self.threshold

    def to_dict(self) -> dict:
        return {"score": self.score, "threshold": self.threshold, "coverage": self.coverage,
                "unknown when": f"{self.score} < {self.threshold:.6g}"}

    @classmethod
    def from_dict(cls, data: dict) -> "UnknownRule":
        return cls(float(data["threshold"]), float(data["coverage"]), str(data["score"]))


@keras.saving.register_keras_serializable(package="skin_keras")
class UnknownDetector(keras.layers.Layer):
    """[probabilities, pooled image features] -> the probabilities, unchanged.

    The layer sits at the model's output so that its rule and weights are saved with the model;
    `score` gives the out-of-distribution score (`scored_model` makes it a second output):
    max_probability, or feature_distance = -min over classes of the Mahalanobis distance
    (squared) of the features to the class mean, with one shared covariance (Lee et al. 2018),
    computed as || f P - c_k ||^2 with P P^T = the precision matrix and c_k = mean_k P
    (float32).
    """

    def __init__(self, score: str = DEFAULT_SCORE, threshold: float = 0.0,
                 coverage: float = 1.0, num_classes: int = 0, feature_size: int = 0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}")
        self.rule = UnknownRule(float(threshold), float(coverage), score)
        self.num_classes, self.feature_size = int(num_classes), int(feature_size)
        if score == "feature_distance":
            self.projection = self.add_weight((self.feature_size, self.feature_size),
                                              initializer="zeros", trainable=False,
                                              name="projection")
            self.centres = self.add_weight((self.num_classes, self.feature_size),
                                           initializer="zeros", trainable=False, name="centres")

    def call(self, inputs):
        return ops.cast(inputs[0], "float32")

    def score(self, probabilities, features):
        if self.rule.score == "max_probability":
            return ops.max(ops.cast(probabilities, "float32"), axis=-1)
        projected = ops.matmul(ops.cast(features, "float32"), self.projection)
        # Differences first: |a|^2 - 2ab + |b|^2 loses the digits that tell images apart.
        distances = ops.sum((projected[:, None, :] - self.centres[None]) ** 2, axis=-1)
        return -ops.min(distances, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "score": self.rule.score,
                "threshold": self.rule.threshold, "coverage": self.rule.coverage,
                "num_classes": self.num_classes, "feature_size": self.feature_size}


def fit_feature_distance(features: np.ndarray, labels: np.ndarray, num_classes: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(projection P, centres) of `UnknownDetector` from training features: class means and
    one shared covariance of the class-centred features (Ledoit-Wolf shrinkage: a stable
    inverse with fewer images than feature dimensions)."""
    features = np.asarray(features, np.float64)
    present = np.unique(labels)
    means = np.zeros((num_classes, features.shape[1]))
    for index in present:
        means[index] = features[labels == index].mean(axis=0)
    precision = covariance.LedoitWolf().fit(features - means[labels]).precision_
    projection = np.linalg.cholesky((precision + precision.T) / 2)
    centres = means @ projection
    # A class without training images can never be the nearest.
    centres[np.setdiff1d(np.arange(num_classes), present)] = 1e6
    return projection.astype(np.float32), centres.astype(np.float32)


def feature_distance(features: np.ndarray, projection: np.ndarray, centres: np.ndarray
                     ) -> np.ndarray:
    """What `UnknownDetector.score` gives for feature_distance, in NumPy."""
    projected = np.asarray(features, np.float64) @ projection
    distances = ((projected[:, None, :] - np.asarray(centres, np.float64)[None]) ** 2).sum(-1)
    return -distances.min(axis=1)


def detector_of(model: keras.Model) -> UnknownDetector | None:
    for layer in model.layers:
        if isinstance(layer, UnknownDetector):
            return layer
    return None


def max_probability(probabilities: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities, np.float64).max(axis=1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """T * logsumexp(logits / T) per row (the negative energy: higher = more familiar)."""
    scaled = np.asarray(logits, np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    return temperature * (top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1)))


def threshold_for_coverage(scores: np.ndarray, coverage: float) -> float:
    """A threshold that keeps (score >= threshold) the top ceil(coverage * n) of `scores` and
    flags the rest: half-way between the lowest kept and the highest flagged score, so that
    the same images computed in another precision (a TFLite file, a batch of another size) fall
    on the same side."""
    check_coverage(coverage)
    scores = np.sort(np.asarray(scores, np.float64))
    if not len(scores):
        raise UserError("no validation scores to choose the unknown threshold on")
    keep = max(int(np.ceil(coverage * len(scores) - 1e-9)), 1)
    lowest_kept = scores[len(scores) - keep]
    if keep == len(scores):  # Everything kept: just below the lowest score.
        return float(lowest_kept - 1e-3 * max(scores[-1] - scores[0], abs(lowest_kept), 1e-6))
    return float((lowest_kept + scores[len(scores) - keep - 1]) / 2)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """How well the score ranks in-distribution images above the others (0.5 = chance)."""
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    return float(sk_metrics.roc_auc_score(labels, np.r_[in_scores, out_scores]))


def fpr_at_coverage(in_scores: np.ndarray, out_scores: np.ndarray, coverage: float) -> float:
    """The share of out-of-distribution images kept (not flagged) at the threshold that keeps
    `coverage` of the in-distribution ones (FPR at 95% TPR for coverage 0.95)."""
    threshold = threshold_for_coverage(in_scores, coverage)
    return float(np.mean(np.asarray(out_scores) >= threshold))
