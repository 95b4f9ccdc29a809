"""The metrics report of a labelled set: metrics.json's figures, the printed table, the ROC
plot and the list of mistakes.

metrics.json has the schema of the training log's "valid info" (accuracy, balanced accuracy,
per-class Precision / Recall / Specificity / F1 score and their means) plus, per class, its ROC
AUC (one class against the rest, from the probabilities) and support, and how calibrated the
probabilities are (calibration.py). Every figure equals scikit-learn's (tested).
"""

import csv
from pathlib import Path

import numpy as np
from sklearn import metrics as sk_metrics

from skin_keras.core import atomic, plots
from skin_keras.data.csv_table import safe_cell
from skin_keras.evaluate import calibration
from skin_keras.model import metrics


def roc_auc_per_class(labels: np.ndarray, probabilities: np.ndarray, num_classes: int) -> list:
    """One-vs-rest ROC AUC per class; None where a class is absent (or alone) in the labels."""
    aucs = []
    for index in range(num_classes):
        positive = labels == index
        if positive.all() or not positive.any():
            aucs.append(None)
        else:
            aucs.append(float(sk_metrics.roc_auc_score(positive, probabilities[:, index])))
    return aucs


def metrics_report(labels: np.ndarray, probabilities: np.ndarray, class_names, tta: int) -> dict:
    num_classes = len(class_names)
    matrix = metrics.confusion_matrix(labels, probabilities.argmax(axis=1), num_classes)
    report = metrics.classification_info(matrix, class_names)
    aucs = roc_auc_per_class(labels, probabilities, num_classes)
    support = matrix.sum(axis=1)
    for name, auc, count in zip(class_names, aucs, support):
        report[name]["ROC AUC"] = None if auc is None else round(auc, 4)
        report[name]["Support"] = int(count)
    defined = [auc for auc in aucs if auc is not None]
    report["mean roc auc"] = float(np.mean(defined)) if defined else None
    report["images"] = int(len(labels))
    report["tta views"] = tta
    report["confusion matrix"] = matrix.tolist()
    report["calibration"] = calibration.calibration_report(probabilities, labels)
    return report


def plot_roc_curves(labels: np.ndarray, probabilities: np.ndarray, class_names,
                    path: Path) -> None:
    curves = {}
    for index, name in enumerate(class_names):
        positive = labels == index
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = sk_metrics.roc_curve(positive, probabilities[:, index])
        curves[name] = (fpr, tpr, sk_metrics.auc(fpr, tpr))
    plots.roc_curves(curves, path)


def write_misclassified(paths, labels, probabilities, class_names, path: Path) -> int:
    """misclassified.csv: path, true, predicted, score (most confident mistakes first)."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")]

    def write(tmp):
        with open(tmp, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "true", "predicted", "score"])
            for i in wrong:
                writer.writerow([safe_cell(paths[i]), class_names[labels[i]],
                                 class_names[predicted[i]],
                                 f"{probabilities[i, predicted[i]]:.6f}"])

    atomic.write_atomic(path, write)
    return len(wrong)


def summary(report: dict, class_names) -> dict:
    """The headline figures of a report (robustness rows, the metadata ablation)."""
    return {"balanced accuracy": report["balanced accuracy"], "accuracy": report["accuracy"],
            "mean roc auc": report["mean roc auc"],
            "recall": {name: report[name]["Recall"] for name in class_names}}


def figure(value, digits: int = 4, sign: bool = False) -> str:
    """A printed figure: "-" where there is none (None, NaN), never "-0.0000"."""
    if value is None or value != value:
        return "-"
    rounded = round(float(value), digits) + 0.0  # -0.0 + 0.0 is 0.0.
    return f"{rounded:+.{digits}f}" if sign else f"{rounded:.{digits}f}"


def describe(report: dict, class_names) -> str:
    width = max(len(name) for name in class_names)
    calibrated = report["calibration"]
    lines = [f"{report['images']} images, {report['tta views']} TTA view(s): accuracy "
             f"{report['accuracy']:.4f}, balanced accuracy {report['balanced accuracy']:.4f}, "
             f"mean ROC AUC {figure(report['mean roc auc'])}",
             f"calibration: ECE {figure(calibrated['expected calibration error'])} "
             f"({calibrated['bins']} bins), Brier {figure(calibrated['brier score'])}, NLL "
             f"{figure(calibrated['negative log-likelihood'])}",
             *([f"unknown ({report['unknown']['unknown when']}): "
                f"{report['unknown']['images flagged']} of the {report['images']} images"]
               if "unknown" in report else []),
             f"{'class':<{width}}  {'support':>7}  {'precision':>9}  {'recall':>6}  "
             f"{'specificity':>11}  {'F1':>6}  {'ROC AUC':>7}"]
    for name in class_names:
        row = report[name]
        auc = figure(row["ROC AUC"])
        lines.append(f"{name:<{width}}  {row['Support']:>7}  {row['Precision']:>9.4f}  "
                     f"{row['Recall']:>6.4f}  {row['Specificity']:>11.4f}  "
                     f"{row['F1 score']:>6.4f}  {auc:>7}")
    if report.get("intervals"):
        lines += _describe_intervals(report["intervals"])
    return "\n".join(lines)


def _describe_intervals(found: dict) -> list[str]:
    def span(pair):
        return "-" if pair is None else f"[{pair[0]:.4f}, {pair[1]:.4f}]"

    units = "images" if found["resampled"].startswith("by image") else "lesions"
    lines = [f"{found['level']} intervals ({found['resamples']} bootstrap resamples "
             f"{found['resampled']}, {found['lesions']} {units}): balanced accuracy "
             f"{span(found['balanced accuracy'])}, ECE {span(found['expected calibration error'])}"]
    for name, row in found["per class"].items():
        small = "  too small to judge" if row["too small to judge"] else ""
        lines.append(f"  {name}: recall {span(row['recall'])}, ROC AUC {span(row['ROC AUC'])}"
                     f"{small}")
    return lines
