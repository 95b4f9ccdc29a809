"""How far a model's probabilities can be taken at their word: calibration measures and the
reliability diagram that evaluate.py writes.

A score of 0.93 is calibrated when 93% of the answers given with about that score are right.
Expected calibration error (Guo et al. 2017) bins the answers by their top score (15 equal-width
bins over [0, 1]) and averages |accuracy - mean score| over the bins, weighted by their share of
answers. The Brier score (the mean over images of the squared distance between the probability
vector and the one-hot label, 0 to 2) and the negative log-likelihood of the true class are the
two proper scoring rules beside it. `Temperature` is the layer temperature scaling appends to a
model (`temperature.py` fits it).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import keras
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from keras import ops

from skin_keras import atomic

BINS = 15
# Probabilities are clipped here before the logarithm (as scikit-learn's log_loss does).
EPSILON = 1e-15
_FLOOR = 1e-30  # Temperature: log(0) would be -inf, so probabilities are floored here first.


@keras.saving.register_keras_serializable(package="skin_keras")
class Temperature(keras.layers.Layer):
    """Probabilities [B, C] -> softmax(log(p) / T), in float32: for a softmax output p =
    softmax(z), the same as softmax(z / T) (arg-max unchanged)."""

    def __init__(self, temperature: float = 1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be positive")
        self.temperature = float(temperature)

    def call(self, probabilities):
        logits = ops.log(ops.maximum(ops.cast(probabilities, "float32"), _FLOOR))
        return ops.softmax(logits / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """What `Temperature(temperature)` does, in NumPy float64."""
    logits = np.log(np.maximum(np.asarray(probabilities, np.float64), _FLOOR)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def temperature_of(model: keras.Model) -> float | None:
    """The temperature of a calibrated model; None for one as trained."""
    for layer in model.layers:
        if isinstance(layer, Temperature):
            return layer.temperature
    return None


def _binned(probabilities: np.ndarray, labels: np.ndarray, bins: int):
    """Per bin of top score: (count, mean top score, accuracy); empty bins have count 0."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # Bin b holds scores in (b/bins, (b+1)/bins]; a score of exactly 0 goes to bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=confidence, minlength=bins)
    hits = np.bincount(index, weights=correct.astype(float), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, sums / counts, hits / counts


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = BINS) -> float:
    counts, mean_score, accuracy = _binned(probabilities, labels, bins)
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(accuracy[filled] - mean_score[filled]))
                 / counts.sum())


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    one_hot = np.eye(probabilities.shape[1])[labels]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class), with rows renormalised and clipped as scikit-learn's log_loss."""
    clipped = np.clip(probabilities, EPSILON, 1 - EPSILON)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(clipped[np.arange(len(labels)), labels])))


def calibration_report(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    return {"expected calibration error": expected_calibration_error(probabilities, labels),
            "bins": BINS,
            "brier score": brier_score(probabilities, labels),
            "negative log-likelihood": negative_log_likelihood(probabilities, labels)}


def plot_reliability(probabilities: np.ndarray, labels: np.ndarray, path: Path,
                     title: str = "") -> None:
    """reliability.png: accuracy against mean top score per bin (the diagonal is calibrated),
    and how many answers each bin holds."""
    counts, mean_score, accuracy = _binned(probabilities, labels, BINS)
    filled = counts > 0
    edges = np.linspace(0, 1, BINS + 1)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 7), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    top.bar(edges[:-1][filled], accuracy[filled], width=1 / BINS, align="edge",
            edgecolor="black", alpha=0.7, label="accuracy")
    top.plot(mean_score[filled], accuracy[filled], "o", color="darkred", label="mean score")
    top.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="calibrated")
    top.set_ylabel("accuracy of the answers in the bin")
    ece = expected_calibration_error(probabilities, labels)
    top.set_title(f"{title}{' - ' if title else ''}ECE {ece:.4f} ({BINS} bins)")
    top.legend(loc="upper left", fontsize=8)
    top.set_ylim(0, 1)
    bottom.bar(edges[:-1], counts, width=1 / BINS, align="edge", edgecolor="black")
    bottom.set_xlabel("top score (confidence)")
    bottom.set_ylabel("answers")
    bottom.set_xlim(0, 1)
    figure.tight_layout()
    atomic.write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"),
                        suffix=".png")
    plt.close(figure)
