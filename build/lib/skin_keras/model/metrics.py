"""A streaming confusion matrix and the classification metrics derived from it.

Every figure is computed from the confusion matrix the way scikit-learn computes it with
`zero_division=0`, so they can be checked against `precision_recall_fscore_support`,
`balanced_accuracy_score` and `confusion_matrix` exactly:

- precision, recall, specificity, F1 per class: 0 where the denominator is 0 (a class never
  predicted, or absent from the labels), never NaN. F1 is 2·TP / (2·TP + FP + FN).
- mean precision / recall / specificity / F1: the unweighted mean over *all* classes.
- balanced accuracy (the ISIC 2019 metric): the mean recall over the classes that occur in the
  labels, as `balanced_accuracy_score`. It equals mean recall when every class occurs.
"""

import keras
import numpy as np
from keras import ops

from skin_keras.model.spec import PACKAGE, SUMMARY_KEYS


def _safe_divide(numerator, denominator):
    return ops.where(denominator > 0, numerator / ops.maximum(denominator, 1e-12), 0.0)


def confusion_stats(matrix) -> dict:
    """All metrics of a confusion matrix (rows: true class, columns: predicted class).

    Works on NumPy arrays and on tensors (it is used inside the Keras metric as well as on saved
    matrices). Per-class entries are vectors of length num_classes; the others are scalars.
    """
    matrix = ops.cast(matrix, "float32")
    true_positives = ops.diagonal(matrix)
    support = ops.sum(matrix, axis=1)
    predicted = ops.sum(matrix, axis=0)
    total = ops.sum(matrix)
    false_positives = predicted - true_positives
    false_negatives = support - true_positives
    true_negatives = total - true_positives - false_positives - false_negatives

    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    specificity = _safe_divide(true_negatives, true_negatives + false_positives)
    f1 = _safe_divide(2 * true_positives, 2 * true_positives + false_positives + false_negatives)
    present = ops.cast(support > 0, "float32")
    return {
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
        "support": support,
        "accuracy": _safe_divide(ops.sum(true_positives), total),
        "balanced_accuracy": _safe_divide(ops.sum(recall * present), ops.sum(present)),
        "mean_precision": ops.mean(precision),
        "mean_recall": ops.mean(recall),
        "mean_specificity": ops.mean(specificity),
        "mean_f1": ops.mean(f1),
    }


def stats_numpy(matrix) -> dict:
    return {key: ops.convert_to_numpy(value) for key, value in confusion_stats(matrix).items()}


def classification_info(matrix: np.ndarray, class_names) -> dict:
    """The seed's "train info"/"valid info" block for one confusion matrix: accuracy, balanced
    accuracy, per class Precision / Recall / Specificity / F1 score (four decimals), means."""
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


def matrix_title(title: str, matrix) -> str:
    """A confusion-matrix plot's title with the matrix's accuracy and balanced accuracy."""
    stats = stats_numpy(matrix)
    return (f"{title}\naccuracy {float(stats['accuracy']):.4f}, balanced accuracy "
            f"{float(stats['balanced_accuracy']):.4f}")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """NumPy confusion matrix of integer labels (rows: true, columns: predicted)."""
    index = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def class_labels(y) -> "keras.KerasTensor":
    """Integer class labels from integer labels, one-hot or soft (MixUp) label rows."""
    if len(y.shape) >= 2 and y.shape[-1] not in (None, 1):
        return ops.argmax(y, axis=-1)
    return ops.reshape(ops.cast(y, "int64"), (-1,))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Accumulates a confusion matrix over batches; reports the summary metrics.

    `result()` is a dict (accuracy, balanced_accuracy, mean_precision, mean_recall,
    mean_specificity, mean_f1), so each appears in Keras logs under its own name
    (`val_balanced_accuracy`, ...). The full matrix is in `matrix` for per-class reports. Its
    state is a sum, so under a `tf.distribute` strategy the replicas' matrices are added up.

    Labels may be integers, one-hot or soft rows (the class with the largest mass is the true
    class); predictions are scores per class (the arg-max is the predicted class).
    """

    def __init__(self, num_classes: int, name: str = "confusion_matrix", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.matrix = self.add_variable(shape=(num_classes, num_classes), initializer="zeros",
                                        dtype="float32", aggregation="sum", name="matrix")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true = ops.cast(class_labels(y_true), "int32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        index = true * self.num_classes + predicted
        # A one-hot sum, not bincount: its output size is fixed, which XLA (--jit_compile)
        # needs (bincount's depends on the largest index).
        cells = ops.one_hot(index, self.num_classes ** 2, dtype="float32")
        if sample_weight is not None:
            cells = cells * ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
        counts = ops.reshape(ops.sum(cells, axis=0), (self.num_classes, self.num_classes))
        self.matrix.assign_add(counts)

    def result(self):
        stats = confusion_stats(self.matrix)
        return {key: stats[key] for key in SUMMARY_KEYS}

    def reset_state(self):
        self.matrix.assign(ops.zeros((self.num_classes, self.num_classes), dtype="float32"))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
