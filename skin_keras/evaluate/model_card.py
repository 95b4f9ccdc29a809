"""model_card.md: what a model is, what it was trained and tested on and how well, in the Hugging
Face model-card layout (YAML front matter with `model-index` results, then sections).

Every number is read from a file the pipeline wrote (metrics.json, robustness.json beside it;
the run's train_params.json; split.csv and audit.json beside the data folders), and each section
names its file: nothing is typed by hand. evaluate.py writes it beside metrics.json. A card
describes exactly one model file: its front matter records the file and its SHA-256, and
export.py ships only a card of the exact file it exports (`describes`).
"""

import json
import re
from pathlib import Path

from skin_keras.core import atomic
from skin_keras.core.cache import content_sha256
from skin_keras.core.layout import DataRoot, RunFolder
from skin_keras.data.csv_table import read_csv

FILE = "model_card.md"
_SHA_LINE = re.compile(r"^model_sha256: ([0-9a-f]{64})$", re.MULTILINE)


def describes(card: Path, model: Path) -> bool:
    """Whether `card` (a model_card.md) was written for exactly the file `model` is now."""
    try:
        found = _SHA_LINE.search(card.read_text().split("\n---\n", 1)[0])
    except (OSError, UnicodeDecodeError):
        return False
    return found is not None and found.group(1) == content_sha256(model)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _figure(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _span(pair) -> str:
    return "-" if not pair else f"{pair[0]:.4f} – {pair[1]:.4f}"


def _front_matter(name: str, metrics: dict, sha256: str) -> list[str]:
    figures = [("balanced_accuracy", "Balanced accuracy", metrics.get("balanced accuracy")),
               ("accuracy", "Accuracy", metrics.get("accuracy")),
               ("roc_auc", "Mean ROC AUC (one class against the rest)",
                metrics.get("mean roc auc")),
               ("ece", "Expected calibration error",
                metrics.get("calibration", {}).get("expected calibration error"))]
    lines = ["---", "library_name: keras", "pipeline_tag: image-classification",
             "tags: [dermoscopy, skin-lesion, isic-2019, efficientnet]",
             f"model_file: {json.dumps(str(metrics.get('model')))}", f"model_sha256: {sha256}",
             "model-index:",
             f"- name: {json.dumps(name)}", "  results:", "  - task:",
             "      type: image-classification", "    dataset:",
             f"      name: {json.dumps(Path(str(metrics.get('data', ''))).name)}",
             "      type: imagefolder", f"      split: {json.dumps(str(metrics.get('data')))}",
             "    metrics:"]
    for kind, title, value in figures:
        if value is not None:
            lines += [f"    - type: {kind}", f"      name: {json.dumps(title)}",
                      f"      value: {round(float(value), 4)}"]
    return lines + ["---", ""]


def _training(params: dict | None, path: Path | None) -> list[str]:
    lines = ["## Training data", ""]
    if params is None:
        return lines + ["Not recorded: the model was not evaluated from its run folder (no "
                        "train_params.json).", ""]
    trained, data = params["train parameters"], params.get("dataset", {})
    lines += [f"From `{path}`: `{trained.get('data_train')}` (training) and "
              f"`{trained.get('data_val')}` (validation, which chose the best epoch).", "",
              "| class | training images | validation images |", "|---|---|---|"]
    for name, count in data.get("trainset per class", {}).items():
        lines.append(f"| {name} | {count} | {data.get('valset per class', {}).get(name, '-')} |")
    split_csv = DataRoot.of(str(trained.get("data_train"))).split_csv
    if split_csv.is_file():
        rows, _ = read_csv(split_csv, ("image",))
        columns = [c for c in (rows[0] if rows else {})
                   if c not in ("image", "class", "split", "lesion_id")]
        for column in columns:
            counts = {}
            for row in rows:
                if row.get("split") == "train":
                    counts[row[column] or "unknown"] = counts.get(row[column] or "unknown", 0) + 1
            lines += ["", f"Training images per `{column}` (from `{split_csv}`): "
                      + ", ".join(f"{value} {count}" for value, count in sorted(counts.items()))]
            held = sorted({row[column] for row in rows if row.get("split") == "test"})
            if held:
                lines.append(f"Held out as the test set: {column} = {', '.join(held)}.")
    return lines + [""]


def _results(metrics: dict, class_names) -> list[str]:
    found = metrics.get("intervals") or {}
    lines = ["## Results", "", f"From `metrics.json`: {metrics.get('images')} images of "
             f"`{metrics.get('data')}`, {metrics.get('tta views')} TTA view(s). Intervals: "
             + (f"{found.get('level')} bootstrap, {found.get('resamples')} resamples "
                f"{found.get('resampled')}." if found else "not computed (--bootstrap=0)."),
             "", "| figure | value | 95% interval |", "|---|---|---|",
             f"| balanced accuracy | {_figure(metrics.get('balanced accuracy'))} | "
             f"{_span(found.get('balanced accuracy'))} |",
             f"| accuracy | {_figure(metrics.get('accuracy'))} | |",
             f"| expected calibration error | "
             f"{_figure(metrics['calibration']['expected calibration error'])} | "
             f"{_span(found.get('expected calibration error'))} |", "",
             "| class | images | recall | 95% interval | ROC AUC | 95% interval |",
             "|---|---|---|---|---|---|"]
    for name in class_names:
        row, interval = metrics[name], found.get("per class", {}).get(name, {})
        small = " (too small to judge)" if interval.get("too small to judge") else ""
        lines.append(f"| {name}{small} | {row['Support']} | {_figure(row['Recall'])} | "
                     f"{_span(interval.get('recall'))} | {_figure(row['ROC AUC'])} | "
                     f"{_span(interval.get('ROC AUC'))} |")
    return lines + [""]


def _subgroups(metrics: dict) -> list[str]:
    if not metrics.get("subgroups"):
        return []
    lines = ["## Subgroups", "", "From `metrics.json` (`subgroups`).", "",
             "| group | value | images | balanced accuracy | 95% interval | ECE | too small to "
             "judge |", "|---|---|---|---|---|---|---|"]
    for name, rows in metrics["subgroups"].items():
        for value, row in rows.items():
            interval = (row.get("intervals") or {}).get("balanced accuracy")
            lines.append(f"| {name} | {value} | {row['images']} | "
                         f"{_figure(row['balanced accuracy'])} | {_span(interval)} | "
                         f"{_figure(row['expected calibration error'])} | "
                         f"{', '.join(row['too small to judge']) or '-'} |")
    return lines + [""]


def _calibration_and_robustness(metrics: dict, params: dict | None, folder: Path) -> list[str]:
    measured = metrics["calibration"]
    ece = measured["expected calibration error"]
    lines = ["## Calibration", "", f"From `metrics.json`: ECE {_figure(ece)}, Brier "
             f"{_figure(measured['brier score'])}, NLL "
             f"{_figure(measured['negative log-likelihood'])}."]
    fitted = (params or {}).get("calibration")
    lines.append(f"Temperature scaling (from `train_params.json`): T = "
                 f"{fitted['temperature']:.4f}." if fitted else
                 "No temperature scaling was fitted (train_params.json has no calibration).")
    robustness = _read(folder / "robustness.json")
    if robustness:
        lines += ["", "## Robustness to simulated shifts", "",
                  "From `robustness.json`: balanced accuracy per shift (drop from clean).", ""]
        lines += [f"- {name}: {_figure(row['balanced accuracy'])} ({row['drop']:+.4f})"
                  for name, row in robustness["shifts"].items()]
    return lines + [""]


def _limits(metrics: dict, class_names) -> list[str]:
    small = [name for name in class_names
             if (metrics.get("intervals") or {}).get("per class", {}).get(name, {}).get(
                 "too small to judge")]
    lines = ["## Limits", "",
             "- For research on dermoscopy images of the classes above; not a diagnostic "
             "device, not validated prospectively, not for clinical (non-dermoscopic) photos.",
             "- Skin type (Fitzpatrick) is not recorded in the data: how the model does on skin "
             "types not represented in it (notably V–VI) is unknown."]
    if small:
        lines.append(f"- Too few test images to judge: {', '.join(small)} (fewer than 10).")
    if not metrics.get("subgroups"):
        lines.append("- No subgroup results (evaluate.py --group_by): differences between "
                     "clinics, sexes, ages or body sites were not measured here.")
    return lines + [""]


def write(folder: Path, metrics: dict, class_names, params_path: Path | None) -> Path:
    """Writes folder/model_card.md from `metrics` (metrics.json's content), the files beside it
    and the run's train_params.json (`params_path`, when known)."""
    params = _read(params_path) if params_path is not None else None
    name = RunFolder.of_model(str(metrics.get("model", "model"))).path.name or "model"
    sha256 = content_sha256(metrics["model"])
    lines = [*_front_matter(name, metrics, sha256), f"# Model card: {name}", "",
             "## Model", "", f"`{metrics.get('model')}` (SHA-256 {sha256[:16]}…): classes "
             f"{', '.join(class_names)}"
             + (f"; trained with {(params or {}).get('train parameters', {}).get('model')} at "
                f"{(params or {}).get('train parameters', {}).get('img_size')} px "
                "(from `train_params.json`)." if params else "."), "",
             *_training(params, params_path), *_results(metrics, class_names),
             *_subgroups(metrics), *_calibration_and_robustness(metrics, params, folder),
             *_limits(metrics, class_names)]
    path = folder / FILE
    atomic.write_text_atomic(path, "\n".join(lines))
    return path
