"""What prediction leaves for people and programs: predictions.csv and .json, the printed
summary, copies of the images with their label drawn on, and Grad-CAM overlays."""

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from skin_keras.core import atomic
from skin_keras.core.errors import UserError
from skin_keras.core.progress import progress
from skin_keras.data import pipeline
from skin_keras.data.csv_table import safe_cell
from skin_keras.infer import gradcam
from skin_keras.infer.files import MODEL_NAN
from skin_keras.infer.runner import Runner, explainable
from skin_keras.model import io


def csv_header(class_names: Sequence[str], topk: int = 0, model_inputs: Sequence[str] = (),
               model_outputs: Sequence[str] = ()) -> list[str]:
    """predictions.csv's columns: path,label,score,<classes>,[top1..],[metadata],[unknown,
    unknown_score],error; metadata when the model's inputs name it, unknown when its outputs
    name the unknown score."""
    return ["path", "label", "score", *class_names, *[f"top{k + 1}" for k in range(topk)],
            *(["metadata"] if io.METADATA in model_inputs else []),
            *(["unknown", "unknown_score"] if io.UNKNOWN_SCORE in model_outputs else []),
            "error"]


def csv_cells(row: dict, topk: int = 0) -> list[str]:
    """One prediction row (`predict.prediction_rows`) as the cells of predictions.csv."""
    probs = [("" if p is None else f"{p:.6f}") for p in row["probabilities"].values()]
    tops = [f"{t['label']}:{t['score']:.4f}" for t in row.get("top", [])]
    tops += [""] * (topk - len(tops))
    score = "" if row["score"] is None else f"{row['score']:.6f}"
    used = [row["metadata"]] if "metadata" in row else []
    unknown = [] if "unknown" not in row else ["", ""] if row["unknown"] is None else [
        str(row["unknown"]).lower(), f"{row['unknown_score']:.6g}"]
    return [safe_cell(row["path"]), row["label"], score, *probs, *tops, *used, *unknown,
            safe_cell(row["error"])]


def write_predictions(rows: list[dict], class_names: Sequence[str], output: Path,
                      topk: int = 0) -> None:
    """predictions.csv (`csv_header`) and predictions.json."""
    output.mkdir(parents=True, exist_ok=True)
    first = rows[0] if rows else {}  # The rows say what the model took and answered.
    header = csv_header(class_names, topk,
                        (io.METADATA,) if "metadata" in first else (),
                        (io.UNKNOWN_SCORE,) if "unknown" in first else ())

    def write_csv(tmp):
        with open(tmp, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            writer.writerows(csv_cells(row, topk) for row in rows)

    atomic.write_all_atomic({  # Never a new CSV beside an old JSON (a full disk).
        output / "predictions.csv": write_csv,
        output / "predictions.json": lambda tmp: Path(tmp).write_text(
            json.dumps(rows, indent=2) + "\n")})


class Summary:
    """The printed summary of a prediction job, counted row by row (it keeps only the bad
    files), and the job's verdict on the model and the files."""

    SHOWN_ERRORS = 50  # Bad files named in the printout (all are in the error column).

    def __init__(self, class_names: Sequence[str]):
        self.counts = {name: 0 for name in class_names}
        self.errors: list[tuple[str, str]] = []
        self.rows, self.unknown = 0, None

    def add(self, rows) -> None:
        for row in rows:
            self.rows += 1
            if row["error"]:
                self.errors.append((row["path"], row["error"]))
            else:
                self.counts[row["label"]] += 1
            if "unknown" in row:
                self.unknown = (self.unknown or 0) + bool(row["unknown"])

    def table(self) -> str:
        width = max(len(name) for name in [*self.counts, "unreadable"])
        lines = [f"{'predicted label':<{width}}  {'images':>7}"]
        lines += [f"{name:<{width}}  {count:>7}" for name, count in self.counts.items()]
        lines.append(f"{'unreadable':<{width}}  {len(self.errors):>7}")
        if self.unknown is not None:
            lines.append(f"{'of which unknown':<{width}}  {self.unknown:>7}  (none of the "
                         "classes: score below the rule's threshold; the label is still the "
                         "nearest class)")
        lines += [f"  {path}: {error}" for path, error in self.errors[:self.SHOWN_ERRORS]]
        if len(self.errors) > self.SHOWN_ERRORS:
            lines.append(f"  ... and {len(self.errors) - self.SHOWN_ERRORS} more (the error "
                         "column names each)")
        return "\n".join(lines)

    def check(self, source: Path) -> None:
        """UserError when the model gave NaN for every image it was given (a broken model) or
        no file could be read."""
        nan = sum(error == MODEL_NAN for _, error in self.errors)
        answered = self.rows - len(self.errors) + nan
        if answered and nan == answered:
            raise UserError(f"{source} produced NaN for all {answered} readable images: the "
                            "model is broken (e.g. from a diverged training run), not the images")
        if self.rows and len(self.errors) == self.rows:
            raise UserError(f"none of the {self.rows} files could be read as an image")


def unique_names(paths: Sequence[Path]) -> list[str]:
    """File stems that stay unique when files of several folders go into one output folder."""
    names = [None] * len(paths)
    used = set()
    for index, path in enumerate(paths):  # The first of each stem keeps it...
        if path.stem not in used:
            names[index] = path.stem
            used.add(path.stem)
    for index, path in enumerate(paths):  # ...the others take a suffix no file has.
        if names[index] is None:
            count = 1
            while f"{path.stem}_{count}" in used:
                count += 1
            names[index] = f"{path.stem}_{count}"
            used.add(names[index])
    return names


def save_labelled_images(rows: list[dict], folder: Path,
                         names: Sequence[str] | None = None) -> None:
    """Copies of the readable images with "label score" drawn in the top-left corner."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [Path(row["path"]) for row in rows]
    for row, name in zip(rows, names or unique_names(paths)):
        if row["error"]:
            continue
        image = Image.fromarray(pipeline.read_rgb(row["path"]))
        text = f"{row['label']} {row['score']:.2f}"
        font = ImageFont.load_default(size=max(10, image.height // 20))
        draw = ImageDraw.Draw(image)
        box = draw.textbbox((4, 4), text, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill="black")
        draw.text((4, 4), text, fill="white", font=font)
        image.save(folder / f"{name}.jpg", quality=92)


def explain_files(loaded: Runner, rows: list[dict], folder: Path, batch_size: int,
                  names: Sequence[str] | None = None) -> list[Path]:
    """Grad-CAM overlays of the predicted class for every readable file; returns their paths."""
    model = explainable(loaded)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [Path(row["path"]) for row in rows]
    names = names or unique_names(paths)
    todo = [i for i, row in enumerate(rows) if not row["error"]]
    written = []
    for start in progress(range(0, len(todo), batch_size), "explaining"):
        batch = todo[start:start + batch_size]
        images = tf.stack([pipeline.load_image(tf.constant(str(paths[i])), loaded.img_size)
                           for i in batch])
        classes = [loaded.class_names.index(rows[i]["label"]) for i in batch]
        heat_maps, _ = gradcam.grad_cam(model, images, classes)
        for i, heat_map in zip(batch, heat_maps):
            figure = gradcam.overlay_figure(
                Image.fromarray(pipeline.read_rgb(paths[i])), heat_map,
                f"{rows[i]['label']} {rows[i]['score']:.2f} (Grad-CAM)")
            target = folder / f"{names[i]}.png"
            figure.save(target)
            written.append(target)
    return written
