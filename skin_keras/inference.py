"""Batch prediction on files: choose a backend, list the files, predict them (with TTA), and
`predict_to_folder`, predict.py's job.

Every row stays with its file: files that fail the cheap check never reach the model, a file the
decoder still rejects is matched back by index and named, and a model that answers NaN is
blamed, not the image.
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from skin_keras import (cache, folders, input_pipeline, litert, models, onnx_runtime, outputs,
                        patient_metadata)
from skin_keras.artifacts import LoadedModel, load_model
from skin_keras.errors import UserError, first_line
from skin_keras.options import check_options, option
from skin_keras.progress import progress

MAX_TTA_VIEWS = 8  # The symmetries of a square: input_pipeline.dihedral_views.
BACKENDS = ("auto", "keras", "tflite", "onnx")
# "auto" converts a .keras model to TFLite for a job of at least this many images (views
# included); a conversion done once is reused by every later job.
AUTO_TFLITE_MIN_IMAGES = 500
MODEL_NAN = "the model produced NaN for this image (the model is broken, not the image)"


@dataclasses.dataclass(frozen=True)
class ModelRunConfig:
    """What predict.py and evaluate.py share: which model, how to run it."""

    model_path: str = option(None, "Run folder (uses weights/best.keras), a .keras file, an "
                             "exported SavedModel folder, a .tflite or an .onnx file.",
                             required=True)
    batch_size: int = option(32, "Images per batch.", low=1, high=65536)
    tta: int = option(1, "Test-time augmentation: average 1-8 flipped/rotated views (1 = off).",
                      low=1, high=MAX_TTA_VIEWS)
    explain: bool = option(False, "Write a Grad-CAM heat map of the predicted class beside "
                           "each image.")
    backend: str = option(
        "auto", "keras, or tflite: a float32 TFLite copy of a .keras model (converted once, "
        "cached in ~/.cache/skin_keras/tflite or $SKIN_KERAS_CACHE/tflite) run by LiteRT with "
        "XNNPACK, 1.3-1.7x Keras' speed on a CPU (benchmarks/README.md); onnx: an ONNX copy "
        "(cached in the same place, onnx/) run by ONNX Runtime. auto, on a CPU-only machine: "
        "the ONNX copy when one is cached (auto never converts to ONNX: it peaks at 6.9 GB "
        "for S), else tflite when its copy is cached or the job has at least "
        f"{AUTO_TFLITE_MIN_IMAGES} images (views included), else keras.", choices=BACKENDS)
    metadata: str = option("none", "For a model trained with --metadata: a CSV with an image "
                           "column (file name without extension) and age_approx, sex, "
                           "anatom_site_general. Images without a row, or none, run with the "
                           "metadata missing.", path=True, keywords=("none",))

    def __post_init__(self):
        check_options(self)


@dataclasses.dataclass(frozen=True)
class PredictConfig(ModelRunConfig):
    """predict.py's flags."""

    source: tuple[str, ...] = option(("inference/img",), "Image file or folder (searched "
                                     "recursively); repeat for more.", repeated=True)
    output: str = option("inference/out", "Folder for the results.")
    topk: int = option(0, "Also list the k most likely labels per image.", low=0)
    save_images: bool = option(False, "Write copies of the images with label and score drawn "
                               "on them.")


def select_backend(loaded: LoadedModel, backend: str, images: int) -> LoadedModel:
    """The model ready to run on `backend`; "auto", on a CPU-only machine, picks a cached ONNX
    copy, else TFLite when a converted copy is cached or the job is large enough to pay for
    converting, and never a conversion that fails."""
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend={backend}; choose one of {', '.join(BACKENDS)}")
    if loaded.model is None or backend == "keras":  # Exported models run as they are.
        suffix = {"tflite": ".tflite", "onnx": ".onnx"}.get(backend)
        if suffix and loaded.source.suffix != suffix:
            raise UserError(f"--backend={backend} needs a run folder, .keras or {suffix} file, "
                            f"not {loaded.source}")
        return loaded
    if backend == "auto" and tf.config.list_physical_devices("GPU"):
        return loaded
    digest = cache.file_sha1(loaded.source)  # Both copies are keyed by it: read the file once.
    if backend == "auto":  # Never converted by auto: tf2onnx peaks at 6.9 GB for S.
        try:
            onnx_copy = onnx_runtime.cached_copy(loaded.source, loaded.model,
                                                 convert_if_missing=False, digest=digest)
        except Exception as error:  # pylint: disable=broad-except  (ONNX Runtime's own types)
            print(f"the cached ONNX copy cannot be read ({first_line(error)}); not using it")
            onnx_copy = None
        if onnx_copy is not None:  # Faster than LiteRT here (benchmarks/README, session 9).
            return dataclasses.replace(loaded, forward=onnx_copy)
    converter = onnx_runtime if backend == "onnx" else litert
    name = "ONNX" if backend == "onnx" else "TFLite"
    try:
        runner = converter.cached_copy(loaded.source, loaded.model, convert_if_missing=(
            backend != "auto" or images >= AUTO_TFLITE_MIN_IMAGES), digest=digest)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        reason = first_line(error)
        if backend != "auto":
            raise UserError(f"{loaded.source} cannot be converted to {name}: {reason}") from None
        print(f"{name} conversion failed ({reason}); predicting with Keras")
        return loaded
    # The Keras model stays attached: Grad-CAM still uses it.
    return loaded if runner is None else dataclasses.replace(loaded, forward=runner)


def list_sources(sources: Sequence[str | Path]) -> list[Path]:
    """Every file named in `sources` (files, or folders searched recursively), in order, each
    real file once (links to it, or a folder given twice, add no row; link loops are not
    followed). Hidden files are left out; other non-image files are kept, so they get an error
    row."""
    files = []
    for source in sources:
        source = Path(source)
        if source.is_file():
            files.append(str(source))
        elif source.is_dir():
            files.extend(folders.walk_files(source))
        else:
            raise UserError(f"source {source} does not exist")
    keep, _ = folders.first_of_each_file(files)
    return [Path(files[i]) for i in keep]


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


def metadata_records(loaded: LoadedModel, metadata: str, paths: Sequence[Path]
                     ) -> tuple[list | None, np.ndarray | None]:
    """The patient records of `paths` for a metadata model, and which had a row in the CSV;
    (None, None) for an image-only model (a CSV given to one is ignored, with a note)."""
    if not loaded.takes_metadata:
        if metadata.lower() != "none":
            print(f"note: {loaded.source} was trained without metadata; --metadata={metadata} "
                  "is not used")
        return None, None
    records, found, note = patient_metadata.for_prediction(metadata, paths)
    print(note or f"metadata: none given, all {len(paths)} images run with it missing")
    return records, found


def predict_files(loaded: LoadedModel, paths: Sequence[Path], batch_size: int = 32,
                  tta: int = 1, show_progress: bool = True, records: Sequence | None = None
                  ) -> tuple[np.ndarray, list[str | None]]:
    """Class probabilities of every file ([N, C], NaN rows for files that failed) and errors
    (`predict_scored_files` without the scores)."""
    probabilities, _, errors = predict_scored_files(loaded, paths, batch_size, tta,
                                                    show_progress, records)
    return probabilities, errors


def predict_scored_files(loaded: LoadedModel, paths: Sequence[Path], batch_size: int = 32,
                         tta: int = 1, show_progress: bool = True,
                         records: Sequence | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None, list[str | None]]:
    """Class probabilities of every file ([N, C], NaN rows for files that failed), its
    out-of-distribution score ([N], averaged over TTA views; None for a model without an
    unknown rule) and errors. `records` (one patient_metadata.Record per path) feed a metadata
    model.

    Files that fail the cheap check never reach the model; a file that still fails to decode is
    dropped by the pipeline and matched back by index, so every row stays with its file. A file
    whose decoded image gives NaN probabilities gets MODEL_NAN as its error.
    """
    if batch_size < 1:
        raise UserError(f"--batch_size={batch_size} must be at least 1")
    errors = file_errors(paths)
    good = [i for i, error in enumerate(errors) if error is None]
    probabilities = np.full((len(paths), len(loaded.class_names)), np.nan, dtype=np.float32)
    scores = None if loaded.unknown is None else np.full(len(paths), np.nan, np.float32)
    decoded = np.zeros(len(paths), bool)
    if good:
        dataset = input_pipeline.indexed_images([paths[i] for i in good], loaded.img_size,
                                                batch_size)
        total = -(-len(good) // batch_size)
        batches = progress(dataset, "predicting", total=total) if show_progress else dataset
        for indices, images in batches:
            rows = np.asarray(good)[indices.numpy()]
            batch_records = None if records is None else [records[r] for r in rows]
            views = [loaded.predict_scored(view, batch_records)
                     for view in tta_views(images, tta)]
            probabilities[rows] = np.mean([view[0] for view in views], axis=0)
            if scores is not None:
                scores[rows] = np.mean([view[1] for view in views], axis=0)
            decoded[rows] = True
    for i in good:
        if not decoded[i]:
            errors[i] = "could not be decoded"
        elif not np.isfinite(probabilities[i]).all() or (
                scores is not None and not np.isfinite(scores[i])):
            errors[i] = MODEL_NAN  # A NaN score would pass as "not unknown".
    return probabilities, scores, errors


def predict_features(loaded: LoadedModel, paths: Sequence[Path], batch_size: int = 32
                     ) -> tuple[np.ndarray, list[str | None]]:
    """The pooled image features of a Keras model's backbone for every file ([N, D], NaN rows
    for files that failed), and errors."""
    extractor = models.feature_model(loaded.require_keras("Features"))
    traced = tf.function(lambda images: extractor(images, training=False),
                         reduce_retracing=True)
    as_features = dataclasses.replace(
        loaded, class_names=["feature"] * extractor.output_shape[-1], model=None,
        takes_metadata=False, encoding=None, unknown=None,
        forward=lambda images, metadata=None: traced(images))
    return predict_files(as_features, paths, batch_size)


def check_model_answered(errors: list[str | None], source: Path) -> None:
    """UserError when the model gave NaN for every image it was given: a broken model."""
    answered = [error for error in errors if error is None or error == MODEL_NAN]
    if answered and all(error == MODEL_NAN for error in answered):
        raise UserError(f"{source} produced NaN for all {len(answered)} readable images: the "
                        "model is broken (e.g. from a diverged training run), not the images")


def prediction_rows(paths: Sequence[Path], probabilities: np.ndarray, errors: list[str | None],
                    class_names: Sequence[str], topk: int = 0,
                    metadata_used: np.ndarray | None = None, unknown=None) -> list[dict]:
    """One dict per file: path, label, score, one probability per class, top-k, error; for a
    metadata model also "metadata": whether the file's patient metadata was used; with
    `unknown` = (rule, scores), "unknown" (the score below the rule's threshold) and
    "unknown_score"."""
    rows = []
    for index, (path, probs, error) in enumerate(zip(paths, probabilities, errors)):
        row = {"path": str(path), "label": "", "score": None,
               "probabilities": {name: None for name in class_names}, "error": error or ""}
        if metadata_used is not None:
            row["metadata"] = "used" if metadata_used[index] else "missing"
        if unknown is not None:
            rule, scores = unknown
            flagged = None if error else bool(rule.flags(scores[index]))
            row.update(unknown=flagged, unknown_score=None if error else float(scores[index]))
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


def predict_to_folder(model_path: str | Path, sources: Sequence[str | Path], output: str | Path,
                      batch_size: int = 32, tta: int = 1, topk: int = 0,
                      save_images: bool = False, explain: bool = False,
                      backend: str = "auto", metadata: str = "none") -> list[dict]:
    """predict.py's job: predicts every source file and writes the results to `output`."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output={output} is a file, not a folder")
    loaded = load_model(model_path)
    if explain:
        loaded.require_explainable()  # Say so before predicting, not after.
    if not 0 <= topk <= len(loaded.class_names):
        raise UserError(f"--topk={topk} is out of range [0, {len(loaded.class_names)}]")
    paths = list_sources(sources)
    if not paths:
        raise UserError(f"no files found in {', '.join(map(str, sources))}")
    records, found = metadata_records(loaded, metadata, paths)
    loaded = select_backend(loaded, backend, len(paths) * tta)
    probabilities, scores, errors = predict_scored_files(loaded, paths, batch_size, tta,
                                                         records=records)
    rows = prediction_rows(paths, probabilities, errors, loaded.class_names, topk,
                           metadata_used=None if records is None else np.array(
                               [not record.is_missing for record in records]),
                           unknown=None if scores is None else (loaded.unknown, scores))
    outputs.write_predictions(rows, loaded.class_names, output, topk)
    print(outputs.summary_table(rows, loaded.class_names))
    check_model_answered(errors, loaded.source)
    if all(error is not None for error in errors):
        raise UserError(f"none of the {len(paths)} files could be read as an image")
    if save_images:
        outputs.save_labelled_images(rows, output / "images")
    if explain:
        outputs.explain_files(loaded, rows, output / "explain", batch_size)
    print(f"wrote {output / 'predictions.csv'} and predictions.json")
    return rows


def run_predict(config: PredictConfig) -> list[dict]:
    return predict_to_folder(config.model_path, config.source, config.output,
                             batch_size=config.batch_size, tta=config.tta, topk=config.topk,
                             save_images=config.save_images, explain=config.explain,
                             backend=config.backend, metadata=config.metadata)

