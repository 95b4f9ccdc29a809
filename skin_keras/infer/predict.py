"""predict.py's job: predict every file of some folders with any model and write the results
(`predict_to_folder`), and the rows those results are made of (`prediction_rows`)."""

import dataclasses
import logging
from pathlib import Path

import numpy as np

from skin_keras.core import progress
from skin_keras.core.errors import UserError
from skin_keras.core.options import check_options, option
from skin_keras.infer import backend as backends
from skin_keras.infer import files, load, outputs, output_job, shards
from skin_keras.infer.files import MAX_TTA_VIEWS
from skin_keras.infer.runner import Runner, explainable
from skin_keras.model import io

_log = logging.getLogger(__name__)

# Files predicted, then written, at a time: memory stays flat however many files there are.
BLOCK_FILES = 1024


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
        "XNNPACK, 1.3-1.7x Keras' speed on a CPU (docs/benchmarks.md); onnx: an ONNX copy "
        "(cached in the same place, onnx/) run by ONNX Runtime. auto, on a CPU-only machine: "
        "the ONNX copy when one is cached (auto never converts to ONNX: it peaks at 6.9 GB "
        "for S), else tflite when its copy is cached or the job has at least "
        f"{backends.AUTO_TFLITE_MIN_IMAGES} images (views included), else keras. onnx_int8, "
        "tflite_int8: the ONNX copy quantized to int8, LiteRT's full integer, calibrated on "
        f"{backends.CALIBRATION_IMAGES} images of the run's --data_val (cached in onnx_int8/, "
        "tflite_int8/); faster, agree less with float (docs/benchmarks.md).", 
        choices=backends.BACKENDS)
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
    shard: str = option("", "i/N: predict only the i-th of N contiguous parts of the sorted file "
                        "list (0-based), into predictions-<i>-of-<N>.csv; the N parts' rows "
                        "concatenate to one process's (a Slurm array, a Kubernetes Indexed "
                        "Job; python -m skin_keras.merge_predictions joins them).")
    overwrite: bool = option(False, "Replace the predictions of another job (other model, "
                             "sources or settings) in --output.")


def prediction_rows(paths, results: dict, errors: list[str | None], runner: Runner,
                    topk: int = 0, inputs: dict | None = None) -> list[dict]:
    """One dict per file: path, label, score, one probability per class, top-k, error; for a
    metadata model also "metadata" (whether the file's patient metadata was used, from
    `inputs`); for a model with an unknown rule, "unknown" (the score below the rule's
    threshold) and "unknown_score"."""
    class_names = runner.class_names
    probabilities = results[io.PROBABILITIES]
    rows = []
    known = (files.metadata_known(runner, inputs[io.RECORDS])
             if io.RECORDS in (inputs or {}) else None)
    for index, (path, error) in enumerate(zip(paths, errors)):
        row = {"path": str(path), "label": "", "score": None,
               "probabilities": {name: None for name in class_names}, "error": error or ""}
        if io.RECORDS in (inputs or {}):
            row["metadata"] = "used" if known[index] else "missing"
        if io.UNKNOWN_SCORE in results:
            score = float(results[io.UNKNOWN_SCORE][index])
            row.update(unknown=None if error else bool(runner.unknown.flags(score)),
                       unknown_score=None if error else score)
        if error is None:
            probs = probabilities[index]
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


def predict_to_folder(config: PredictConfig) -> Path:
    """Predicts every source file (or its `--shard`) and writes the results to config.output,
    BLOCK_FILES files at a time (rows appended as they come, so memory stays flat and a killed
    job continues where it stopped); returns the path of predictions.json."""
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output={output} is a file, not a folder")
    loaded = load.load(config.model_path)
    if config.explain:
        explainable(loaded)  # Say so before predicting, not after.
    if not 0 <= config.topk <= len(loaded.class_names):
        raise UserError(f"--topk={config.topk} is out of range [0, {len(loaded.class_names)}]")
    listed = files.list_sources(config.source, output)
    if not listed:
        raise UserError(f"no files found in {', '.join(map(str, config.source))}")
    rows_of_shard, name = shards.shard_of(len(listed), config.shard)
    paths = listed[rows_of_shard]
    inputs = files.other_inputs(loaded, config.metadata, paths)
    runner = backends.select(loaded, config.backend, len(paths) * config.tta)
    output.mkdir(parents=True, exist_ok=True)
    header = outputs.csv_header(runner.class_names, config.topk, runner.inputs, runner.outputs)
    with output_job.RowWriter(output, name, _job(config, loaded, listed), header,
                             {str(path): output_job.identity(path) for path in paths},
                             config.overwrite) as writer:
        summary = outputs.Summary(runner.class_names)
        todo = _to_predict(writer, paths, summary)
        if writer.finished:
            return output / f"{name}.json"
        # Copies and overlays are named over the whole listing, not per block.
        names = outputs.unique_names(paths) if config.save_images or config.explain else None
        meter = progress.Meter("predicting", len(paths), done=len(paths) - len(todo))
        for start in range(0, len(todo), BLOCK_FILES):
            block = todo[start:start + BLOCK_FILES]
            block_paths = [paths[i] for i in block]
            block_inputs = {key: [values[i] for i in block]
                            for key, values in inputs.items()}
            results, errors = files.predict_files(  # Batches of the whole listing.
                runner, block_paths, config.batch_size, config.tta, block_inputs,
                show_progress=False,
                place=([rows_of_shard.start + i for i in block], len(listed)))
            rows = prediction_rows(block_paths, results, errors, runner, config.topk,
                                   block_inputs)
            # Copies and overlays first: a block is recorded done only once all is written.
            if config.save_images:
                outputs.save_labelled_images(rows, output / "images", [names[i] for i in block])
            if config.explain:
                outputs.explain_files(loaded, rows, output / "explain", config.batch_size,
                                      [names[i] for i in block])
            writer.append([outputs.csv_cells(row, config.topk) for row in rows], rows)
            summary.add(rows)
            meter.update(len(block))
        meter.close()
        csv_path, json_path = writer.finish()
    _log.info(summary.table())
    summary.check(runner.source)
    _log.info(f"wrote {csv_path} and {json_path.name}")
    return json_path


def _to_predict(writer: output_job.RowWriter, paths: list[Path], summary: outputs.Summary
                ) -> list[int]:
    """The indices of `paths` that have no row in the output yet (a killed job's rows go to
    `summary`); none when the same job finished with no file changed."""
    done = writer.resume(lambda row: summary.add([row]))
    output, name = writer.output, writer.name
    if writer.finished:
        _log.info(f"nothing to do: {output} holds this job's {name}.csv, and no file changed "
                  "since")
        return []
    todo = [index for index, path in enumerate(paths) if str(path) not in done]
    if len(paths) - len(todo) != len(done):  # Rows of files no longer listed (renamed).
        gone = sorted(done - {str(path) for path in paths})
        raise UserError(f"{output} holds an unfinished prediction with rows for "
                        f"{len(gone)} file(s) no longer in the sources (e.g. {gone[0]}): the files "
                        f"changed since; pass --overwrite to start over")
    if done or writer.stale:
        _log.info(f"continuing {output}: {len(done)} of the {len(paths)} files have rows"
                  + (f" ({writer.stale} more changed since: predicted again)"
                     if writer.stale else ""))
    return todo


def _job(config: PredictConfig, loaded: Runner, listed: list[Path]) -> dict:
    """What makes a job the same job when it is run again (output_job.RowWriter), and the parts
    of a sharded job parts of one (shards.merge): the listing they were cut from."""
    source = Path(loaded.source)
    status = source.stat()
    return {"model": str(source.resolve()), "model size": status.st_size,
            "model modified": status.st_mtime_ns, "sources": [str(Path(s).resolve())
                                                             for s in config.source],
            "files listed": len(listed), "listing": output_job.fingerprint(map(str, listed)),
            "shard": config.shard, "backend": config.backend,
            "tta": config.tta, "topk": config.topk, "metadata": config.metadata,
            # The CSV's own identity: an edited CSV is another job, not "nothing to do".
            "metadata file": None if config.metadata.lower() == "none" else output_job.identity(
                config.metadata),
            "save_images": config.save_images, "explain": config.explain}
