"""Batch inference on files: load a trained model, predict folders, average TTA views.

A model path can be a run folder (weights/best.keras + class_indices.json), a `.keras` file
(class names from the class_indices.json of its run folder), or what export.py wrote: a
SavedModel folder (or its TF Serving base folder) or a `.tflite` file, with the labels.txt beside
it. The image size comes from the model itself and the class names from the run or the export:
nothing the user must repeat on the command line.
"""

import csv
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from skin_keras import atomic, cache, folders, gradcam, input_pipeline, models
from skin_keras.errors import UserError
from skin_keras.progress import progress

MAX_TTA_VIEWS = 8  # The symmetries of a square: input_pipeline.dihedral_views.


class TFLiteRunner:
    """Runs a .tflite classifier (input [B, H, W, 3], any B) with LiteRT (XNNPACK on CPUs)."""

    CHUNK = 8

    def __init__(self, model_content: bytes):
        from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top

        self.interpreter = Interpreter(model_content=model_content, num_threads=os.cpu_count())
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.img_size = int(self.input["shape"][1])

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if self.input["dtype"] == np.uint8:  # Full-integer models take pixel values as-is.
            images = np.clip(np.round(images), 0, 255)
        # Calls of at most CHUNK images: XNNPACK runs them faster than larger ones.
        return np.concatenate([self._invoke(images[start:start + self.CHUNK])
                               for start in range(0, len(images), self.CHUNK)])

    def _invoke(self, images: np.ndarray) -> np.ndarray:
        if images.shape[0] != self.input["shape"][0]:
            self.interpreter.resize_tensor_input(self.input["index"], images.shape)
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
        self.interpreter.set_tensor(self.input["index"], images.astype(self.input["dtype"]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).astype(np.float32)


@dataclasses.dataclass
class LoadedModel:
    """A model ready to predict, with what is needed to feed it and read its output.

    `model` is the Keras model, or None for an exported SavedModel or TFLite file (which can
    predict but not be explained with Grad-CAM).
    """

    class_names: list[str]
    img_size: int
    source: Path
    model: keras.Model | None = None
    forward: object = None  # images [B, H, W, 3] in [0, 255] -> probabilities [B, C]

    def __post_init__(self):
        if self.forward is None:
            # One traced graph for every batch (the batch dimension is left free).
            self.forward = tf.function(lambda images: self.model(images, training=False),
                                       reduce_retracing=True)

    def predict_images(self, images) -> np.ndarray:
        return np.asarray(self.forward(images))

    def require_keras(self, what: str) -> keras.Model:
        if self.model is None:
            raise UserError(f"{what} needs the Keras model: pass the run folder or .keras file "
                            f"that {self.source} was exported from")
        return self.model


def find_class_indices(model_file: Path) -> Path | None:
    for folder in (model_file.parent, model_file.parent.parent):
        if (folder / "class_indices.json").is_file():
            return folder / "class_indices.json"
    return None


def read_class_indices(path: Path) -> list[str]:
    indices = json.loads(Path(path).read_text())
    return [indices[str(i)] for i in range(len(indices))]


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"no {path.name} at {path.parent}: the class names are unknown")
    return [line for line in path.read_text().splitlines() if line]


def find_saved_model(folder: Path) -> Path | None:
    """The SavedModel in `folder`: the folder itself, or its highest TF Serving version."""
    if (folder / "saved_model.pb").is_file():
        return folder
    versions = sorted((int(p.name) for p in folder.iterdir()
                       if p.name.isdigit() and (p / "saved_model.pb").is_file()), reverse=True)
    return folder / str(versions[0]) if versions else None


def _load_saved_model(folder: Path) -> LoadedModel:
    try:
        served = tf.saved_model.load(str(folder))
    except (ValueError, OSError, tf.errors.OpError) as error:
        raise UserError(f"{folder} could not be loaded as a SavedModel: "
                        f"{str(error).strip().splitlines()[0] if str(error).strip() else error!r}"
                        ) from error
    if "serving_images" not in served.signatures:
        raise UserError(f"{folder} is a SavedModel without the serving_images signature that "
                        "export.py writes")
    signature = served.signatures["serving_images"]
    img_size = int(signature.structured_input_signature[1]["images"].shape[1])

    def forward(images):
        return signature(images=tf.convert_to_tensor(images, tf.float32))["probabilities"].numpy()

    return LoadedModel(read_labels(folder / "assets" / "labels.txt"), img_size, folder,
                       forward=forward)


def _load_tflite(path: Path) -> LoadedModel:
    try:
        runner = TFLiteRunner(path.read_bytes())
    except (ValueError, RuntimeError) as error:
        raise UserError(f"{path} is not a readable TFLite model: {error}") from error
    return LoadedModel(read_labels(path.parent / "labels.txt"), runner.img_size, path,
                       forward=runner)


def resolve_keras_file(model_path: str | Path) -> Path:
    """The .keras file meant by a run folder or a file path; UserError when there is none."""
    path = Path(model_path)
    if path.is_dir():
        if (path / "weights" / "best.keras").is_file():
            return path / "weights" / "best.keras"
        raise UserError(f"{path} is not a run folder (no weights/best.keras) nor a SavedModel")
    if not path.exists():
        raise UserError(f"model path {path} does not exist")
    if path.suffix != ".keras":
        raise UserError(f"{path} is not a model: give a run folder, a .keras or .tflite file or "
                        "a SavedModel folder")
    return path


def load_model(model_path: str | Path) -> LoadedModel:
    """Loads a run folder, a .keras file, an exported SavedModel folder or a .tflite file."""
    path = Path(model_path)
    if path.is_dir() and (saved_model := find_saved_model(path)) is not None:
        return _load_saved_model(saved_model)
    if path.is_file() and path.suffix == ".tflite":
        return _load_tflite(path)
    keras_file = resolve_keras_file(path)
    indices = find_class_indices(keras_file)
    if indices is None:
        raise UserError(f"no class_indices.json beside {keras_file} or in its run folder: the "
                        "class names are unknown")
    class_names = read_class_indices(indices)
    try:
        model = keras.models.load_model(keras_file, compile=False)
    except (ValueError, OSError) as error:
        raise UserError(f"{keras_file} could not be loaded as a Keras model: "
                        f"{str(error).splitlines()[0]}") from error
    if model.output_shape[-1] != len(class_names):
        raise UserError(f"{keras_file} predicts {model.output_shape[-1]} classes but {indices} "
                        f"names {len(class_names)}")
    return LoadedModel(class_names, models.image_size(model), keras_file, model=model)


BACKENDS = ("auto", "keras", "tflite")
# "auto" converts a .keras model to TFLite for a job of at least this many images (views
# included); a conversion done once is reused by every later job.
AUTO_TFLITE_MIN_IMAGES = 500
BACKEND_HELP = (  # predict.py's and evaluate.py's --backend.
    "keras, or tflite: a float32 TFLite copy of a .keras model (converted once, cached in "
    "~/.cache/skin_keras/tflite or $SKIN_KERAS_CACHE/tflite) run by LiteRT with XNNPACK, 1.3-1.7x "
    "Keras' speed on a CPU (README, Benchmarks). auto: tflite on a CPU-only machine when the copy is cached or the "
    f"job has at least {AUTO_TFLITE_MIN_IMAGES} images (views included), else keras.")


def tflite_twin(loaded: LoadedModel, convert: bool = True) -> LoadedModel | None:
    """`loaded` predicting through a float32 TFLite copy run by LiteRT (XNNPACK).

    The copy is converted once per .keras file content and cached; None when it is not cached and
    `convert` is False. The Keras model stays attached (Grad-CAM still uses it).
    """
    from skin_keras import exporting, feature_cache  # pylint: disable=g-import-not-at-top

    path = cache.cache_root() / "tflite" / f"{feature_cache.file_sha1(loaded.source)}.tflite"
    if not path.exists():
        if not convert:
            return None
        print(f"converting {loaded.source} to TFLite (once; cached in {path.parent})")
        content = exporting.convert_tflite(loaded, "fp32", [])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_atomic(path, lambda tmp: Path(tmp).write_bytes(content))
    return dataclasses.replace(loaded, forward=TFLiteRunner(path.read_bytes()))


def select_backend(loaded: LoadedModel, backend: str, images: int) -> LoadedModel:
    """The model ready to run on `backend`; "auto" picks TFLite on a CPU-only machine when a
    converted copy is cached or the job is large enough to pay for converting."""
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend={backend}; choose one of {', '.join(BACKENDS)}")
    if loaded.model is None or backend == "keras":  # Exported models run as they are.
        if backend == "tflite" and loaded.source.suffix != ".tflite":
            raise UserError(f"--backend=tflite needs a run folder, .keras or .tflite file, not "
                            f"the SavedModel {loaded.source}")
        return loaded
    if backend == "tflite":
        return tflite_twin(loaded)
    if tf.config.list_physical_devices("GPU"):
        return loaded
    return tflite_twin(loaded, convert=images >= AUTO_TFLITE_MIN_IMAGES) or loaded


def list_sources(sources: Sequence[str | Path]) -> list[Path]:
    """Every file named in `sources` (files, or folders searched recursively), in order.

    Hidden files are left out; other non-image files are kept, so they get an error row.
    """
    files = []
    for source in sources:
        source = Path(source)
        if source.is_file():
            files.append(source)
        elif source.is_dir():
            for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files.extend(Path(dirpath) / name for name in sorted(filenames)
                             if not name.startswith("."))
        else:
            raise UserError(f"source {source} does not exist")
    return files


def tta_views(images: tf.Tensor, count: int) -> list[tf.Tensor]:
    """The first `count` of the eight flips/rotations of a batch [B, H, W, C]; identity first."""
    if not 1 <= count <= MAX_TTA_VIEWS:
        raise UserError(f"--tta={count}: choose 1 to {MAX_TTA_VIEWS} views")
    return input_pipeline.dihedral_views(images, count)


def file_errors(paths: Sequence[Path]) -> list[str | None]:
    """Why each file cannot be predicted (None for the ones that look fine)."""
    errors = []
    for path, (_, reason) in zip(paths, folders.inspect_images([str(p) for p in paths])):
        if not folders.is_image_file(path):
            reason = f"not an image file ({path.suffix or 'no extension'})"
        errors.append(reason)
    return errors


def predict_files(loaded: LoadedModel, paths: Sequence[Path], batch_size: int = 32,
                  tta: int = 1, show_progress: bool = True) -> tuple[np.ndarray, list[str | None]]:
    """Class probabilities of every file ([N, C], NaN rows for files that failed) and errors.

    Files that fail the cheap check never reach the model; a file that still fails to decode is
    dropped by the pipeline and matched back by index, so every row stays with its file.
    """
    errors = file_errors(paths)
    good = [i for i, error in enumerate(errors) if error is None]
    probabilities = np.full((len(paths), len(loaded.class_names)), np.nan, dtype=np.float32)
    if good:
        dataset = tf.data.Dataset.from_tensor_slices(
            (np.array(good, np.int64), [str(paths[i]) for i in good]))
        dataset = dataset.map(
            lambda index, path: (index, input_pipeline.load_image(path, loaded.img_size)),
            num_parallel_calls=input_pipeline.AUTOTUNE).ignore_errors()
        dataset = dataset.batch(batch_size).prefetch(input_pipeline.AUTOTUNE)
        total = -(-len(good) // batch_size)
        batches = progress(dataset, "predicting", total=total) if show_progress else dataset
        for indices, images in batches:
            views = [loaded.predict_images(view) for view in tta_views(images, tta)]
            probabilities[indices.numpy()] = np.mean(views, axis=0)
    for i in good:
        if np.isnan(probabilities[i]).any():
            errors[i] = "could not be decoded"
    return probabilities, errors


def prediction_rows(paths: Sequence[Path], probabilities: np.ndarray, errors: list[str | None],
                    class_names: Sequence[str], topk: int = 0) -> list[dict]:
    """One dict per file: path, label, score, one probability per class, top-k, error."""
    rows = []
    for path, probs, error in zip(paths, probabilities, errors):
        row = {"path": str(path), "label": "", "score": None,
               "probabilities": {name: None for name in class_names}, "error": error or ""}
        if error is None:
            order = np.argsort(-probs, kind="stable")
            row.update(label=class_names[order[0]], score=float(probs[order[0]]),
                       probabilities={n: float(p) for n, p in zip(class_names, probs)})
            if topk:
                row["top"] = [{"label": class_names[i], "score": float(probs[i])}
                              for i in order[:topk]]
        elif topk:
            row["top"] = []
        rows.append(row)
    return rows


def write_predictions(rows: list[dict], class_names: Sequence[str], output: Path,
                      topk: int = 0) -> None:
    """predictions.csv (path,label,score,<classes>,[top1..],error) and predictions.json."""
    output.mkdir(parents=True, exist_ok=True)
    header = ["path", "label", "score", *class_names, *[f"top{k + 1}" for k in range(topk)],
              "error"]

    def write_csv(tmp):
        with open(tmp, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            for row in rows:
                probs = [("" if p is None else f"{p:.6f}") for p in row["probabilities"].values()]
                tops = [f"{t['label']}:{t['score']:.4f}" for t in row.get("top", [])]
                tops += [""] * (topk - len(tops))
                score = "" if row["score"] is None else f"{row['score']:.6f}"
                writer.writerow([row["path"], row["label"], score, *probs, *tops, row["error"]])

    atomic.write_atomic(output / "predictions.csv", write_csv)
    atomic.write_json_atomic(output / "predictions.json", rows)


def summary_table(rows: list[dict], class_names: Sequence[str]) -> str:
    counts = {name: 0 for name in class_names}
    for row in rows:
        if not row["error"]:
            counts[row["label"]] += 1
    width = max(len(name) for name in [*class_names, "unreadable"])
    lines = [f"{'predicted label':<{width}}  {'images':>7}"]
    lines += [f"{name:<{width}}  {count:>7}" for name, count in counts.items()]
    errors = [row for row in rows if row["error"]]
    lines.append(f"{'unreadable':<{width}}  {len(errors):>7}")
    lines += [f"  {row['path']}: {row['error']}" for row in errors]
    return "\n".join(lines)


def unique_names(paths: Sequence[Path]) -> list[str]:
    """File stems that stay unique when files of several folders go into one output folder."""
    seen, names = {}, []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return names


def save_labelled_images(rows: list[dict], folder: Path) -> None:
    """Copies of the readable images with "label score" drawn in the top-left corner."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [Path(row["path"]) for row in rows]
    for row, name in zip(rows, unique_names(paths)):
        if row["error"]:
            continue
        with Image.open(row["path"]) as image:
            image = image.convert("RGB")
        text = f"{row['label']} {row['score']:.2f}"
        font = ImageFont.load_default(size=max(10, image.height // 20))
        draw = ImageDraw.Draw(image)
        box = draw.textbbox((4, 4), text, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill="black")
        draw.text((4, 4), text, fill="white", font=font)
        image.save(folder / f"{name}.jpg", quality=92)


def explain_files(loaded: LoadedModel, rows: list[dict], folder: Path,
                  batch_size: int = 16) -> list[Path]:
    """Grad-CAM overlays of the predicted class for every readable file; returns their paths."""
    model = loaded.require_keras("Grad-CAM (--explain)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [Path(row["path"]) for row in rows]
    names = unique_names(paths)
    todo = [i for i, row in enumerate(rows) if not row["error"]]
    written = []
    for start in progress(range(0, len(todo), batch_size), "explaining"):
        batch = todo[start:start + batch_size]
        images = tf.stack([input_pipeline.load_image(tf.constant(str(paths[i])), loaded.img_size)
                           for i in batch])
        classes = [loaded.class_names.index(rows[i]["label"]) for i in batch]
        heat_maps, _ = gradcam.grad_cam(model, images, classes)
        for i, heat_map in zip(batch, heat_maps):
            with Image.open(paths[i]) as original:
                figure = gradcam.overlay_figure(
                    original, heat_map, f"{rows[i]['label']} {rows[i]['score']:.2f} (Grad-CAM)")
            target = folder / f"{names[i]}.png"
            figure.save(target)
            written.append(target)
    return written


def predict_to_folder(model_path: str | Path, sources: Sequence[str | Path], output: str | Path,
                      batch_size: int = 32, tta: int = 1, topk: int = 0,
                      save_images: bool = False, explain: bool = False,
                      backend: str = "auto") -> list[dict]:
    """predict.py's job: predicts every source file and writes the results to `output`."""
    loaded = load_model(model_path)
    if explain:
        loaded.require_keras("Grad-CAM (--explain)")  # Say so before predicting, not after.
    if not 0 <= topk <= len(loaded.class_names):
        raise UserError(f"--topk={topk} is out of range [0, {len(loaded.class_names)}]")
    paths = list_sources(sources)
    if not paths:
        raise UserError(f"no files found in {', '.join(map(str, sources))}")
    loaded = select_backend(loaded, backend, len(paths) * tta)
    probabilities, errors = predict_files(loaded, paths, batch_size, tta)
    rows = prediction_rows(paths, probabilities, errors, loaded.class_names, topk)
    output = Path(output)
    write_predictions(rows, loaded.class_names, output, topk)
    print(summary_table(rows, loaded.class_names))
    if all(error is not None for error in errors):
        raise UserError(f"none of the {len(paths)} files could be read as an image")
    if save_images:
        save_labelled_images(rows, output / "images")
    if explain:
        explain_files(loaded, rows, output / "explain", batch_size)
    print(f"wrote {output / 'predictions.csv'} and predictions.json")
    return rows
