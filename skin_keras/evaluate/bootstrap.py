"""95% confidence intervals of the headline figures, by bootstrap resampled by lesion.

A test set's figures are estimates: the same model on another sample of patients scores
differently. The percentile bootstrap draws the test set again, with replacement, `resamples`
times, and reports the 2.5th and 97.5th percentiles of each figure. It draws lesions, not
images (Efron's clustered bootstrap): the images of one lesion are not independent, and drawing
them one by one would give intervals that are too narrow. A draw is a weight per image (how
often its lesion was drawn), and every figure is computed on the weighted set, which equals
computing it on the set with the images repeated (tests/evaluate/test_bootstrap.py checks this
against scikit-learn on the explicitly repeated sets, draw by draw).

Figures: balanced accuracy (the mean recall of the classes in the draw), recall and ROC AUC
(one class against the rest) per class, expected calibration error. A class with fewer than
MIN_IMAGES images in the set is flagged as too small to judge: its interval is wide or absent.
"""

import numpy as np

from skin_keras.evaluate import calibration

MIN_IMAGES = 10
LEVEL = 95


class _Weighted:
    """A test set prepared once for weighted figures: per class the images ordered by score
    with their ties grouped (for AUC), the calibration bin of each image (for ECE)."""

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray, num_classes: int):
        self.labels, self.num_classes = np.asarray(labels), num_classes
        self.predicted = probabilities.argmax(axis=1)
        self.ranked = []
        for index in range(num_classes):
            order = np.argsort(probabilities[:, index], kind="mergesort")
            scores = probabilities[order, index]
            starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
            self.ranked.append((order, starts, self.labels[order] == index))
        confidence = probabilities.max(axis=1)
        self.bin = np.clip(np.ceil(confidence * calibration.BINS).astype(int) - 1, 0,
                           calibration.BINS - 1)
        self.confidence = confidence
        self.correct = (self.predicted == self.labels).astype(float)

    def figures(self, weights: np.ndarray) -> np.ndarray:
        """[balanced accuracy, ECE, recall per class..., ROC AUC per class...] of the set with
        image i counted weights[i] times; NaN where a figure is undefined."""
        k = self.num_classes
        support = np.bincount(self.labels, weights=weights, minlength=k)
        hits = np.bincount(self.labels, weights=weights * self.correct, minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, hits / support, np.nan)
        balanced = np.nanmean(recall) if np.any(support > 0) else np.nan
        aucs = [self._auc(index, weights) for index in range(k)]
        return np.array([balanced, self._ece(weights), *recall, *aucs])

    def _auc(self, index: int, weights: np.ndarray) -> float:
        order, starts, positive = self.ranked[index]
        ordered = weights[order]
        positives, negatives = ordered * positive, ordered * ~positive
        total_pos, total_neg = positives.sum(), negatives.sum()
        if total_pos == 0 or total_neg == 0:
            return np.nan
        pos_tied = np.add.reduceat(positives, starts)
        neg_tied = np.add.reduceat(negatives, starts)
        below = np.cumsum(neg_tied) - neg_tied  # Negatives scored lower than the tie group.
        return float(np.sum(pos_tied * (below + 0.5 * neg_tied)) / (total_pos * total_neg))

    def _ece(self, weights: np.ndarray) -> float:
        bins = calibration.BINS
        counts = np.bincount(self.bin, weights=weights, minlength=bins)
        scores = np.bincount(self.bin, weights=weights * self.confidence, minlength=bins)
        right = np.bincount(self.bin, weights=weights * self.correct, minlength=bins)
        return float(np.sum(np.abs(right - scores)) / counts.sum())


def draws(clusters: np.ndarray, resamples: int, seed: int):
    """Per draw, the weight of each image: how often its cluster (lesion) was drawn."""
    names, of_image = np.unique(np.asarray(clusters), return_inverse=True)
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        chosen = rng.integers(0, len(names), len(names))
        yield np.bincount(chosen, minlength=len(names))[of_image].astype(float)


def _interval(values: np.ndarray) -> list | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    low, high = np.percentile(values, [(100 - LEVEL) / 2, 100 - (100 - LEVEL) / 2])
    return [round(float(low), 4), round(float(high), 4)]


def intervals(labels: np.ndarray, probabilities: np.ndarray, clusters: np.ndarray,
              class_names, resamples: int, seed: int) -> dict:
    """The 95% interval of every headline figure, and per class its image count and whether
    it is too small to judge."""
    k = len(class_names)
    weighted = _Weighted(labels, probabilities, k)
    table = np.array([weighted.figures(w) for w in draws(clusters, resamples, seed)])
    counts = np.bincount(np.asarray(labels), minlength=k)
    return {
        "balanced accuracy": _interval(table[:, 0]),
        "expected calibration error": _interval(table[:, 1]),
        "per class": {name: {"images": int(counts[i]), "recall": _interval(table[:, 2 + i]),
                             "ROC AUC": _interval(table[:, 2 + k + i]),
                             "too small to judge": bool(counts[i] < MIN_IMAGES)}
                      for i, name in enumerate(class_names)}}


def point_figures(labels: np.ndarray, probabilities: np.ndarray, num_classes: int) -> np.ndarray:
    """`_Weighted.figures` of the set itself (every image once)."""
    return _Weighted(labels, probabilities, num_classes).figures(np.ones(len(labels)))
