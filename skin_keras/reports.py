"""What a run leaves for people to read: JSON reports, confusion matrices and curves.

The per-class report keeps the seed's schema (class name -> Precision / Recall / Specificity /
F1 score, four decimals) and adds balanced accuracy next to accuracy.
"""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only: never needs a display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from keras import ops

from skin_keras.atomic import write_atomic
from skin_keras.metrics import confusion_stats


def stats_numpy(matrix) -> dict:
    return {key: ops.convert_to_numpy(value) for key, value in confusion_stats(matrix).items()}


def classification_info(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """The seed's "train info"/"valid info" block for one confusion matrix."""
    stats = stats_numpy(matrix)
    info = {"accuracy": float(stats["accuracy"]),
            "balanced accuracy": float(stats["balanced_accuracy"])}
    for index, name in enumerate(class_names):
        info[name] = {
            "Precision": round(float(stats["precision"][index]), 4),
            "Recall": round(float(stats["recall"][index]), 4),
            "Specificity": round(float(stats["specificity"][index]), 4),
            "F1 score": round(float(stats["f1"][index]), 4),
        }
    info["mean precision"] = float(stats["mean_precision"])
    info["mean recall"] = float(stats["mean_recall"])
    info["mean specificity"] = float(stats["mean_specificity"])
    info["mean f1 score"] = float(stats["mean_f1"])
    return info


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | Path,
                          title: str) -> None:
    """Counts and row-normalised rates (recall on the diagonal) with class names on both axes."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    size = max(5.0, 0.9 * len(class_names) + 2.5)
    figure, axes = plt.subplots(figsize=(size + 1, size))
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
    stats = stats_numpy(matrix)
    axes.set_title(f"{title}\naccuracy {float(stats['accuracy']):.4f}, balanced accuracy "
                   f"{float(stats['balanced_accuracy']):.4f}")
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"), suffix=".png")
    plt.close(figure)


def plot_curves(log: dict, path: str | Path) -> None:
    """Loss, accuracy, balanced accuracy and learning rate by epoch, from a `log.json` dict."""
    epochs = [int(key.split(":")[1]) for key in log]
    entries = list(log.values())
    panels = [("loss", "loss"), ("accuracy", "accuracy"),
              ("balanced accuracy", "balanced accuracy")]
    figure, axes = plt.subplots(1, 4, figsize=(18, 4))
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
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"), suffix=".png")
    plt.close(figure)
