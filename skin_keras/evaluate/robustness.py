"""The robustness report: one model, one labelled set, scored clean and under every shift.

    python evaluate.py --model_path=runs/exp3 --data=data/val --shifts=all

The clean row is the plain evaluation (its files in the output folder, as evaluate.py writes
them, so it equals a plain evaluate.py run); each shift's images are written to a scratch folder
(PNG, lossless) by `shifts.shifted`, seeded per image, and scored the same way into
<output>/shifts/<name>/.
`robustness.json` has, per shift, balanced accuracy, accuracy, recall per class, mean ROC AUC
and the drop from clean; `robustness.png` one bar per shift. Any model evaluate.py takes works,
exported SavedModels and TFLite files included, since only the image files change.
"""

import tempfile
from pathlib import Path

from PIL import Image

from skin_keras.core import atomic, plots
from skin_keras.core.progress import progress
from skin_keras.data import folders, pipeline
from skin_keras.evaluate import shifts
from skin_keras.evaluate.report import figure, summary


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
        image = Image.fromarray(pipeline.read_rgb(path))  # As the model sees it.
        shifts.shifted(name, image, seed + index).save(out)
        paths.append(str(out))
    return folders.ImageFolder(root=target, class_names=folder.class_names, paths=tuple(paths),
                               labels=folder.labels)


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
        lines.append(f"{name:<12} {figure(row['balanced accuracy']):>9} "
                     f"{figure(row['drop'], sign=True):>7} {figure(row['accuracy']):>8} "
                     f"{figure(row['mean roc auc']):>8}")
    if result["worst shift"] and round(result["worst drop"], 4) > 0:
        lines.append(f"worst shift: {result['worst shift']} "
                     f"(-{figure(result['worst drop'])} balanced accuracy)")
    elif result["worst shift"]:
        lines.append("no shift lowers the balanced accuracy")
    return "\n".join(lines)


def plot(rows: dict, path: Path, title: str) -> None:
    plots.bars({name: row["balanced accuracy"] for name, row in rows.items()}, path, title,
               "balanced accuracy")
