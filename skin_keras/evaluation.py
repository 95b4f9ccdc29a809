"""Scoring a trained model on a labelled class-folder set: metrics.json, plots, error list.

`metrics.json` has the schema of the training log's "valid info" (accuracy, balanced accuracy,
per-class Precision / Recall / Specificity / F1 score and their means) plus, per class, its ROC
AUC (one class against the rest, from the probabilities) and support, and how calibrated the
probabilities are (`calibration`: ECE over 15 bins, Brier score, NLL; reliability.png).
"""

import csv
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from sklearn import metrics as sk_metrics

from skin_keras import (atomic, calibration, decode_check, folders, inference, metrics, models,
                        open_set, outputs, reports, robustness, shifts)
from skin_keras.artifacts import LoadedModel, load_model
from skin_keras.errors import UserError
from skin_keras.options import option


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(inference.ModelRunConfig):
    """evaluate.py's flags."""

    data: str = option(None, "Labelled images: one sub-folder per class, named as the model's "
                       "classes (a class may be absent or empty).", required=True)
    output: str = option(None, "Folder for the report (default: <model run folder>/eval_<data "
                         "folder>).")
    shifts: tuple[str, ...] = option(
        (), "Robustness report: also score the images under these shifts (comma-separated, or "
        f"all): {', '.join(shifts.NAMES)}. Writes robustness.json and robustness.png.",
        choices=("all",) + shifts.NAMES)
    metadata_ablation: bool = option(False, "For a metadata model: also score it with every "
                                     "image's metadata blanked to missing (in "
                                     "<output>/metadata_blanked; both in metrics.json).")
    ood: str = option("", "A folder of images that are none of the classes (searched "
                      "recursively; python -m skin_keras.ood_images makes one): report how well "
                      "the out-of-distribution scores tell --data from it (AUROC, overall and "
                      "per sub-folder) and what the model's unknown rule keeps ('ood' in "
                      "metrics.json).", path=True)


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
    report = reports.classification_info(matrix, class_names)
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
    figure, axes = plt.subplots(figsize=(7, 6))
    for index, name in enumerate(class_names):
        positive = labels == index
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = sk_metrics.roc_curve(positive, probabilities[:, index])
        auc = sk_metrics.auc(fpr, tpr)
        axes.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    axes.set_xlabel("false positive rate (1 - specificity)")
    axes.set_ylabel("true positive rate (sensitivity)")
    axes.set_title("ROC, one class against the rest")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    atomic.write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"), suffix=".png")
    plt.close(figure)


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
                writer.writerow([paths[i], class_names[labels[i]], class_names[predicted[i]],
                                 f"{probabilities[i, predicted[i]]:.6f}"])

    atomic.write_atomic(path, write)
    return len(wrong)


def labelled_folder(loaded: LoadedModel, data: str | Path) -> folders.ImageFolder:
    """The labelled set in `data`, in the model's class order, every file fully decoded once."""
    folder = folders.scan_image_folder(data, class_names=loaded.class_names,
                                       allow_missing_classes=True)
    return decode_check.set_aside_undecodable(folder, "evaluating")


def evaluate(loaded: LoadedModel, data: str | Path, output: str | Path,
             batch_size: int = 32, tta: int = 1, explain: bool = False,
             backend: str = "auto", folder: folders.ImageFolder | None = None,
             quiet: bool = False, metadata: tuple | None = None, ood: str = "") -> dict:
    """Scores `loaded` on the class folders in `data` (or the already scanned `folder`); writes
    the report files to `output`. `metadata` = (csv, records, found), the patient records of
    the folder's images a metadata model is fed (None: every image's metadata missing); `ood`,
    a folder of images that are none of the classes (`ood_report`)."""
    output = Path(output)
    folder = folder or labelled_folder(loaded, data)
    if not quiet:
        print(folders.describe(folder, "evaluating"))
    paths = [Path(p) for p in folder.paths]
    csv_path, records, found = metadata or (None, None, None)
    loaded = inference.select_backend(loaded, backend, len(paths) * tta)
    probabilities, scores, errors = inference.predict_scored_files(
        loaded, paths, batch_size, tta, show_progress=not quiet, records=records)
    if any(error == inference.MODEL_NAN for error in errors):
        raise UserError(f"{loaded.source} produced NaN for "
                        f"{sum(error == inference.MODEL_NAN for error in errors)} of the images "
                        f"in {data}: the model is broken (e.g. from a diverged training run)")
    ok = np.array([error is None for error in errors], dtype=bool)
    if not ok.any():
        raise UserError(f"no image in {data} could be read")
    rows = inference.prediction_rows(paths, probabilities, errors, loaded.class_names,
                                     unknown=None if scores is None else (loaded.unknown, scores))
    output.mkdir(parents=True, exist_ok=True)
    outputs.write_predictions(rows, loaded.class_names, output)

    labels, probabilities = folder.labels[ok], probabilities[ok]
    kept = [str(p) for p, good in zip(paths, ok) if good]
    report = metrics_report(labels, probabilities, loaded.class_names, tta)
    report["model"] = str(loaded.source)
    report["data"] = str(data)
    report["temperature"] = loaded.temperature
    if loaded.unknown is not None:
        report["unknown"] = {**loaded.unknown.to_dict(), "images flagged": int(
            loaded.unknown.flags(scores[ok]).sum())}
    if ood:
        report["ood"] = ood_report(loaded, ood, [p for p, good in zip(paths, ok) if good],
                                   probabilities, None if scores is None else scores[ok],
                                   batch_size, tta, records and [
                                       r for r, good in zip(records, ok) if good])
    if records is not None:
        report["metadata"] = {"csv": csv_path, "images with a row": int(found.sum()),
                              "images with any value": sum(not r.is_missing for r in records)}
    report["decode warnings"] = [f"{p}: {w}" for p, w in folder.decode_warnings]
    report["bad files"] = [f"{p}: {r}" for p, r in folder.bad_files] + [
        f"{p}: {e}" for p, e in zip(paths, errors) if e]
    report["misclassified"] = write_misclassified(kept, labels, probabilities, loaded.class_names,
                                                  output / "misclassified.csv")
    atomic.write_json_atomic(output / "metrics.json", report)
    reports.plot_confusion_matrix(np.array(report["confusion matrix"]), loaded.class_names,
                                  output / "confusion_matrix.png",
                                  title=f"{data} ({tta} TTA view{'s' if tta > 1 else ''})")
    plot_roc_curves(labels, probabilities, loaded.class_names, output / "roc_curves.png")
    calibration.plot_reliability(probabilities, labels, output / "reliability.png",
                                 title=Path(data).name)
    if explain:
        outputs.explain_files(loaded, rows, output / "explain", batch_size)
    return report


def ood_report(loaded: LoadedModel, ood: str, in_paths: list, in_probabilities: np.ndarray,
               in_scores: np.ndarray | None, batch_size: int, tta: int,
               in_records: list | None = None) -> dict:
    """How well each out-of-distribution score tells the labelled images (in_*) from the images
    in `ood`: AUROC overall and per sub-folder (kind), the share of `ood` images kept at the
    threshold that keeps 95% of the labelled ones, and what the model's own unknown rule keeps
    of both. Scores: max_probability always, the model's rule score, and energy (from the
    logits, with `in_records`, the labelled images' patient records, for a metadata model) for
    a Keras model."""
    listed = inference.list_sources([ood])
    if not listed:
        raise UserError(f"--ood={ood}: no files found")
    probabilities, scores, errors = inference.predict_scored_files(loaded, listed, batch_size,
                                                                   tta)
    ok = np.array([error is None for error in errors])
    if not ok.any():
        raise UserError(f"--ood={ood}: none of the {len(listed)} files could be read")
    ood_paths = [p for p, good in zip(listed, ok) if good]
    inside = {"max_probability": open_set.max_probability(in_probabilities)}
    outside = {"max_probability": open_set.max_probability(probabilities[ok])}
    if in_scores is not None and loaded.unknown.score != "max_probability":
        inside[loaded.unknown.score], outside[loaded.unknown.score] = in_scores, scores[ok]
    logits = models.logits_model(loaded.model) if loaded.model is not None else None
    if logits is not None:  # The same images again, for their logits.
        as_logits = dataclasses.replace(loaded, model=None, unknown=None, forward=lambda
                                        images, metadata=None: logits(models.model_inputs(
                                            loaded.model, images, metadata), training=False))
        in_logits, _ = inference.predict_files(as_logits, in_paths, batch_size, tta, False,
                                               records=in_records)
        out_logits, _ = inference.predict_files(as_logits, ood_paths, batch_size, tta, False)
        inside["energy"] = open_set.energy(in_logits)
        outside["energy"] = open_set.energy(out_logits)
    kinds = sorted({Path(p).relative_to(ood).parts[0] for p in ood_paths
                    if len(Path(p).relative_to(ood).parts) > 1})
    report = {"folder": str(ood), "images": len(ood_paths), "labelled images": len(in_paths),
              "bad files": [f"{p}: {e}" for p, e in zip(listed, errors) if e], "scores": {}}
    for name in inside:
        entry = {"auroc": open_set.auroc(inside[name], outside[name]),
                 "ood kept at 95% coverage": open_set.fpr_at_coverage(inside[name],
                                                                      outside[name], 0.95)}
        for kind in kinds:
            chosen = np.array([Path(p).relative_to(ood).parts[0] == kind for p in ood_paths])
            entry[f"auroc {kind}"] = open_set.auroc(inside[name], outside[name][chosen])
        report["scores"][name] = entry
    if loaded.unknown is not None:
        rule = loaded.unknown
        report["unknown rule"] = {**rule.to_dict(),
                                  "labelled images kept": float(np.mean(~rule.flags(in_scores))),
                                  "ood images flagged": float(np.mean(rule.flags(scores[ok])))}
    return report


def describe_ood(report: dict) -> str:
    lines = [f"out-of-distribution: {report['images']} images of {report['folder']} against "
             f"{report['labelled images']} labelled images"]
    for name, entry in report["scores"].items():
        kinds = ", ".join(f"{key.removeprefix('auroc ')} {value:.3f}"
                          for key, value in entry.items() if key.startswith("auroc "))
        lines.append(f"  {name:<16} AUROC {entry['auroc']:.3f} ({kinds or 'one kind'}); "
                     f"{entry['ood kept at 95% coverage']:.1%} of them kept at 95% coverage")
    if "unknown rule" in report:
        rule = report["unknown rule"]
        lines.append(f"  the model's rule ({rule['unknown when']}): keeps "
                     f"{rule['labelled images kept']:.1%} of the labelled images, flags "
                     f"{rule['ood images flagged']:.1%} of the others")
    return "\n".join(lines)


def describe(report: dict, class_names) -> str:
    width = max(len(name) for name in class_names)
    calibrated = report["calibration"]
    lines = [f"{report['images']} images, {report['tta views']} TTA view(s): accuracy "
             f"{report['accuracy']:.4f}, balanced accuracy {report['balanced accuracy']:.4f}, "
             f"mean ROC AUC {report['mean roc auc'] or float('nan'):.4f}",
             f"calibration: ECE {calibrated['expected calibration error']:.4f} "
             f"({calibrated['bins']} bins), Brier {calibrated['brier score']:.4f}, NLL "
             f"{calibrated['negative log-likelihood']:.4f}",
             *([f"unknown ({report['unknown']['unknown when']}): "
                f"{report['unknown']['images flagged']} of the {report['images']} images"]
               if "unknown" in report else []),
             f"{'class':<{width}}  {'support':>7}  {'precision':>9}  {'recall':>6}  "
             f"{'specificity':>11}  {'F1':>6}  {'ROC AUC':>7}"]
    for name in class_names:
        row = report[name]
        auc = "-" if row["ROC AUC"] is None else f"{row['ROC AUC']:.4f}"
        lines.append(f"{name:<{width}}  {row['Support']:>7}  {row['Precision']:>9.4f}  "
                     f"{row['Recall']:>6.4f}  {row['Specificity']:>11.4f}  "
                     f"{row['F1 score']:>6.4f}  {auc:>7}")
    return "\n".join(lines)


def evaluate_model_path(model_path: str | Path, data: str | Path, output: str | Path | None = None,
                        batch_size: int = 32, tta: int = 1, explain: bool = False,
                        backend: str = "auto", shift_names=(), metadata: str = "none",
                        metadata_ablation: bool = False, ood: str = "") -> dict:
    """evaluate.py's job: loads the model, scores it on `data`, prints and writes the report;
    with `shift_names`, also under those shifts (the robustness report, returned instead).
    `metadata_ablation` scores a metadata model a second time with the metadata blanked.

    Without `output`, the report goes to <run folder>/eval_<name of the data folder>.
    """
    loaded = load_model(model_path)
    if metadata_ablation and not loaded.takes_metadata:
        raise UserError(f"--metadata_ablation: {loaded.source} has no metadata input (it was "
                        "trained without --metadata)")
    if output is None:
        run_dir = loaded.source.parent.parent if loaded.source.parent.name == "weights" else (
            loaded.source.parent)
        output = run_dir / f"eval_{Path(data).resolve().name}"
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output={output} is a file, not a folder")
    if ood and shift_names:
        raise UserError("--ood and --shifts: run them one at a time")
    if ood and not Path(ood).is_dir():
        raise UserError(f"--ood={ood} is not a folder (python -m skin_keras.ood_images makes "
                        "one)")
    if explain:
        loaded.require_explainable()  # Say so before predicting, not after.
    folder = labelled_folder(loaded, data)
    records, found = inference.metadata_records(loaded, metadata, folder.paths)
    patient = None if records is None else (metadata, records, found)
    if shift_names:
        def score(scored, into, quiet):  # Shifted folders keep the files' order: same records.
            return evaluate(loaded, data, into, batch_size, tta, explain and not quiet, backend,
                            folder=scored, quiet=quiet, metadata=patient)

        result = robustness.robustness_report(
            score, folder, shift_names, output,
            {"model": str(loaded.source), "data": str(data)})
        print(robustness.describe(result))
        print(f"report written to {output}")
        return result
    report = evaluate(loaded, data, output, batch_size, tta, explain, backend, folder=folder,
                      metadata=patient, ood=ood)
    print(describe(report, loaded.class_names))
    if ood:
        print(describe_ood(report["ood"]))
    if metadata_ablation:
        blanked = evaluate(loaded, data, output / "metadata_blanked", batch_size, tta,
                           backend=backend, folder=folder, quiet=True)
        report["metadata ablation"] = {
            "with metadata": robustness.summary(report, loaded.class_names),
            "metadata blanked": robustness.summary(blanked, loaded.class_names)}
        atomic.write_json_atomic(output / "metrics.json", report)
        print(f"metadata blanked: accuracy {blanked['accuracy']:.4f}, balanced accuracy "
              f"{blanked['balanced accuracy']:.4f} (with metadata "
              f"{report['balanced accuracy']:.4f}); report in {output / 'metadata_blanked'}")
    print(f"report written to {output}")
    return report


def run_evaluate(config: EvaluateConfig) -> dict:
    return evaluate_model_path(config.model_path, config.data, config.output,
                               batch_size=config.batch_size, tta=config.tta,
                               explain=config.explain, backend=config.backend,
                               shift_names=config.shifts, metadata=config.metadata,
                               metadata_ablation=config.metadata_ablation, ood=config.ood)
