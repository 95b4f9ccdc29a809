"""The robustness report: one model, one labelled set, scored clean and under every shift.

    python evaluate.py --model_path=runs/exp3 --data=data/val --shifts=all

The clean row is the plain evaluation (its files in the output folder, as evaluate.py writes
them, so it equals a plain evaluate.py run); each shift's images are written to a scratch folder (PNG, lossless) by
`shifts.shifted`, seeded per image, and scored the same way into <output>/shifts/<name>/.
`robustness.json` has, per shift, balanced accuracy, accuracy, recall per class, mean ROC AUC
and the drop from clean; `robustness.png` one bar per shift. Any model evaluate.py takes works,
exported SavedModels and TFLite files included, since only the image files change.
"""

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from skin_keras import atomic, folders, shifts
from skin_keras.progress import progress


def shift_names(requested) -> list[str]:
    """The shifts `--shifts` names ("all" for every one), in the report's order."""
    return list(shifts.NAMES) if "all" in requested else [
        name for name in shifts.NAMES if name in requested]


def write_shifted(folder: folders.ImageFolder, name: str, target: Path,
                  seed: int = 0) -> folders.ImageFolder:
    """Every image of `folder` under shift `name`, as PNG files below `target`."""
    paths = []
    for index, (path, label) in enumerate(progress(list(zip(folder.paths, folder.labels)),
                                                   f"shift {name}")):
        out = target / folder.class_names[label] / f"{index:06d}_{Path(path).stem}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            shifts.shifted(name, image, seed + index).save(out)
        paths.append(str(out))
    return folders.ImageFolder(root=target, class_names=folder.class_names, paths=tuple(paths),
                               labels=folder.labels)


def summary(report: dict, class_names) -> dict:
    return {"balanced accuracy": report["balanced accuracy"], "accuracy": report["accuracy"],
            "mean roc auc": report["mean roc auc"],
            "recall": {name: report[name]["Recall"] for name in class_names}}


def robustness_report(score, folder: folders.ImageFolder, requested, output: Path,
                      about: dict) -> dict:
    """Scores the labelled `folder` clean and under each requested shift; writes and returns
    the report.

    `score(folder, output_folder, quiet)` evaluates one folder and returns its metrics report
    (evaluation.evaluate's); `about` (model, data, ...) heads robustness.json.
    """
    output, names = Path(output), shift_names(requested)
    clean = score(folder, output, False)
    rows = {"clean": summary(clean, folder.class_names)}
    with tempfile.TemporaryDirectory(prefix="skin_keras_shifts_") as scratch:
        for name in names:
            shifted = write_shifted(folder, name, Path(scratch) / name)
            rows[name] = summary(score(shifted, output / "shifts" / name, True),
                                 folder.class_names)
    for row in rows.values():
        row["drop"] = rows["clean"]["balanced accuracy"] - row["balanced accuracy"]
    worst = max(names, key=lambda name: rows[name]["drop"]) if names else None
    result = {**about, "images": clean["images"], "tta views": clean["tta views"],
              "shifts": rows, "worst shift": worst,
              "worst drop": rows[worst]["drop"] if worst else None}
    output.mkdir(parents=True, exist_ok=True)
    atomic.write_json_atomic(output / "robustness.json", result)
    model_name = "/".join(Path(str(about.get("model", ""))).parts[-3:])
    plot(rows, output / "robustness.png", title=f"{model_name} on {about.get('data', '')}")
    return result


def describe(result: dict) -> str:
    rows = result["shifts"]
    lines = [f"robustness on {result['images']} images: balanced accuracy per shift "
             f"(drop from clean)",
             f"{'shift':<12} {'bal. acc.':>9} {'drop':>7} {'accuracy':>8} {'ROC AUC':>8}"]
    for name, row in rows.items():
        auc = "-" if row["mean roc auc"] is None else f"{row['mean roc auc']:.4f}"
        lines.append(f"{name:<12} {row['balanced accuracy']:>9.4f} {row['drop']:>+7.4f} "
                     f"{row['accuracy']:>8.4f} {auc:>8}")
    if result["worst shift"]:
        lines.append(f"worst shift: {result['worst shift']} "
                     f"(-{result['worst drop']:.4f} balanced accuracy)")
    return "\n".join(lines)


def plot(rows: dict, path: Path, title: str) -> None:
    names = list(rows)
    values = [rows[name]["balanced accuracy"] for name in names]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 4.5))
    colours = ["tab:green" if name == "clean" else "tab:blue" for name in names]
    axes.bar(np.arange(len(names)), values, color=colours)
    axes.axhline(values[0], color="tab:green", linestyle="--", linewidth=0.8)
    axes.set_xticks(np.arange(len(names)), labels=names, rotation=45, ha="right")
    axes.set_ylabel("balanced accuracy")
    axes.set_ylim(0, 1)
    axes.set_title(title, fontsize=9)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    atomic.write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"),
                        suffix=".png")
    plt.close(figure)
