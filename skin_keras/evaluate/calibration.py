"""How far a model's probabilities can be taken at their word: calibration measures and the
reliability diagram that evaluate.py writes.

A score of 0.93 is calibrated when 93% of the answers given with about that score are right.
Expected calibration error (Guo et al. 2017) bins the answers by their top score (15 equal-width
bins over [0, 1]) and averages |accuracy - mean score| over the bins, weighted by their share of
answers. The Brier score (the mean over images of the squared distance between the probability
vector and the one-hot label, 0 to 2) and the negative log-likelihood of the true class are the
two proper scoring rules beside it. `model.layers.Temperature` is the layer temperature scaling
appends to a model (workflows/fit_calibration.py fits it).
"""

from pathlib import Path

import numpy as np

from skin_keras.core import plots

BINS = 15
# Probabilities are clipped here before the logarithm (as scikit-learn's log_loss does).
EPSILON = 1e-15


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
    ece = expected_calibration_error(probabilities, labels)
    plots.reliability(*_binned(probabilities, labels, BINS), path,
                      f"{title}{' - ' if title else ''}ECE {ece:.4f} ({BINS} bins)")
