"""Every figure skin_keras draws, and the only module that imports matplotlib.

Each function draws what it is given (numbers computed elsewhere) into a PNG file, written
atomically. Modules that draw import this one; loading or running a model never does.
"""

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from skin_keras.core.atomic import write_atomic


def _subplots(*grid, figsize, **options):
    """A figure of its own and its axes, as pyplot.subplots makes them but outside pyplot: no
    display, and the backend of the process (a notebook's inline plots) is left as it is."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*grid, **options)


def _save(figure, path: str | Path, dpi: int = 110) -> None:
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"), suffix=".png")


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | Path,
                     title: str) -> None:
    """Counts and row-normalised rates (recall on the diagonal) with class names on both axes."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    size = max(5.0, 0.9 * len(class_names) + 2.5)
    figure, axes = _subplots(figsize=(size + 1, size))
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            axes.text(j, i, f"{int(round(matrix[i, j]))}\n{rates[i, j]:.2f}", ha="center",
                      va="center", fontsize=8, color="white" if rates[i, j] > 0.5 else "black")
    axes.set_title(title)
    _save(figure, path)


def curves(log: dict, path: str | Path) -> None:
    """Loss, accuracy, balanced accuracy and learning rate by epoch, from a `log.json` dict."""
    epochs = [int(key.split(":")[1]) for key in log]
    entries = list(log.values())
    panels = [("loss", "loss"), ("accuracy", "accuracy"),
              ("balanced accuracy", "balanced accuracy")]
    figure, axes = _subplots(1, 4, figsize=(18, 4))
    for ax, (title, key) in zip(axes, panels):
        for split, style in (("train info", "-o"), ("valid info", "-s")):
            values = [entry[split].get(key, np.nan) for entry in entries if split in entry]
            if values:
                ax.plot(epochs[:len(values)], values, style, markersize=3, label=split.split()[0])
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[3].plot(epochs, [entry["lr"] for entry in entries], "-o", markersize=3)
    axes[3].set_title("learning rate")
    axes[3].set_xlabel("epoch")
    axes[3].grid(alpha=0.3)
    _save(figure, path, dpi=100)


def roc_curves(curves_by_class: dict, path: Path) -> None:
    """One ROC curve per class: {name: (false positive rates, true positive rates, AUC)}."""
    figure, axes = _subplots(figsize=(7, 6))
    for name, (fpr, tpr, auc) in curves_by_class.items():
        axes.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    axes.set_xlabel("false positive rate (1 - specificity)")
    axes.set_ylabel("true positive rate (sensitivity)")
    axes.set_title("ROC, one class against the rest")
    if curves_by_class:  # (None for a set of one class: no legend to draw.)
        axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    _save(figure, path)


def reliability(counts: np.ndarray, mean_score: np.ndarray, accuracy: np.ndarray, path: Path,
                title: str) -> None:
    """Accuracy against mean top score per confidence bin (the diagonal is calibrated), and how
    many answers each bin holds."""
    bins = len(counts)
    filled = counts > 0
    edges = np.linspace(0, 1, bins + 1)
    figure, (top, bottom) = _subplots(2, 1, figsize=(6, 7), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    top.bar(edges[:-1][filled], accuracy[filled], width=1 / bins, align="edge",
            edgecolor="black", alpha=0.7, label="accuracy")
    top.plot(mean_score[filled], accuracy[filled], "o", color="darkred", label="mean score")
    top.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="calibrated")
    top.set_ylabel("accuracy of the answers in the bin")
    top.set_title(title)
    top.legend(loc="upper left", fontsize=8)
    top.set_ylim(0, 1)
    bottom.bar(edges[:-1], counts, width=1 / bins, align="edge", edgecolor="black")
    bottom.set_xlabel("top score (confidence)")
    bottom.set_ylabel("answers")
    bottom.set_xlim(0, 1)
    _save(figure, path)


def bars(values: dict, path: Path, title: str, ylabel: str) -> None:
    """One bar per entry, the first (the reference, e.g. "clean") in green with its level
    dashed across."""
    names = list(values)
    heights = list(values.values())
    figure, axes = _subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 4.5))
    colours = ["tab:green"] + ["tab:blue"] * (len(names) - 1)
    axes.bar(np.arange(len(names)), heights, color=colours)
    axes.axhline(heights[0], color="tab:green", linestyle="--", linewidth=0.8)
    axes.set_xticks(np.arange(len(names)), labels=names, rotation=45, ha="right")
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 1)
    axes.set_title(title, fontsize=9)
    axes.grid(axis="y", alpha=0.3)
    _save(figure, path, dpi=100)


def heat_colours(heat_map: np.ndarray) -> np.ndarray:
    """A [H, W] map in [0, 1] as RGB [H, W, 3] float32 in [0, 255] (matplotlib's jet)."""
    return (matplotlib.colormaps["jet"](heat_map)[..., :3] * 255).astype(np.float32)


def intervals(rows: Sequence[tuple[str, float, list | None]], path: Path, title: str,
              xlabel: str) -> None:
    """One row per (label, value, [low, high] or None): the value as a dot, its interval as a
    bar (a forest plot), the first row on top."""
    figure, axes = _subplots(figsize=(7, 0.32 * len(rows) + 1.4))
    for position, (_, value, interval) in enumerate(rows):
        y = len(rows) - 1 - position
        if interval is not None:
            axes.plot(interval, [y, y], color="tab:blue", linewidth=2)
        axes.plot([value], [y], "o", color="black", markersize=4)
    axes.set_yticks(range(len(rows)), labels=[label for label, _, _ in reversed(rows)])
    axes.set_xlim(0, 1)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    _save(figure, path)
