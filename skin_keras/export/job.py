"""export.py's job: every requested artifact of a trained model (a loop over the formats, each
of which knows how it is written: infer/formats/), each checked against the Keras model on real
images (report.json)."""

import dataclasses
import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from skin_keras.core import atomic
from skin_keras.core.errors import UserError
from skin_keras.core.options import check_options, option
from skin_keras.core.layout import RunFolder
from skin_keras.data import decode_check, folders, pipeline
from skin_keras.export import destination, parity
from skin_keras.infer import formats, load
from skin_keras.infer.formats import CALIBRATION_IMAGES, ExportError
from skin_keras.infer.runner import keras_model
from skin_keras.model import io

_log = logging.getLogger(__name__)

FORMATS = tuple(formats.FORMATS)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What `export` does (export.py's flags)."""

    model_path: str = option(None, "Run folder (uses weights/best.keras) or a .keras file.",
                             required=True)
    output: str = option("exports/skin", "Folder for the exported artifacts.")
    data_val: str = option("", "Class-folder images for the parity check and int8 "
                           "calibration; empty = the --data_val the run was trained with (named "
                           "in its train_params.json).")
    formats: tuple[str, ...] = option(("saved_model", "tflite_fp16"),
                                      f"Comma-separated: {', '.join(FORMATS)}.")
    name: str = option("skin", "Model name (TF Serving's model_name, file names).")
    overwrite: bool = option(False, "Replace an export of another model in --output (its "
                             "files are removed first).")
    version: int = option(0, "SavedModel version; 0 = the next free number.", low=0)
    parity_images: int = option(200, "Images of --data_val on which every artifact is compared "
                                "to Keras.", low=1)
    calibration_images: int = option(CALIBRATION_IMAGES, "Images of --data_val that "
                                     "calibrate tflite_int8 and onnx_int8.", low=1)
    metadata: str = option("none", "For a model with patient metadata: the CSV of --data_val's "
                           "metadata for the parity check and int8 calibration; none = every "
                           "metadata input is varied over its vocabulary instead.", path=True,
                           keywords=("none",))

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise UserError(f"unknown format(s) {', '.join(unknown) or '(none given)'}; choose "
                            f"from {', '.join(FORMATS)}")
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", self.name):
            raise UserError(f"--name={self.name}: use letters, digits, '_', '-' or '.', not "
                            "first a '.'")
        check_options(self)


def _parity_folder(data_val: str, class_names) -> folders.ImageFolder:
    """The readable images of `data_val` (bad files said and left out); UserError for none."""
    val = decode_check.set_aside_undecodable(folders.scan_image_folder(
        data_val, class_names=class_names, allow_missing_classes=True), "val")
    for path, reason in val.bad_files:
        _log.info(f"bad file left out: {path}: {reason}")
    if not val.paths:
        raise UserError(f"--data_val={data_val} holds no readable images to check the exports "
                        "on")
    return val


def _runs_validation_folder(source: Path) -> str:
    """The --data_val the model's run was trained with, when its train_params.json names one
    that exists; else UserError asking for --data_val."""
    run = RunFolder.of_model(source)
    named = run.trained_with("data_val")
    if not named or not Path(named).is_dir():
        raise UserError("give --data_val=FOLDER (images to check the exports on and to "
                        f"calibrate int8): {run.path} names no validation folder that exists "
                        + (f"({named} is gone)" if named else "(no train_params.json)"))
    _log.info(f"--data_val: the run's validation folder, {named}")
    return named


def export(config: ExportConfig) -> dict:
    """Writes every requested artifact, checks each against the Keras model, returns the report."""
    output = Path(config.output)
    destination.check_output_folder(output)
    runner = load.load(config.model_path)
    keras_model(runner, "Export")  # Exports are made from the Keras model: say so at once.
    for fmt in config.formats:
        formats.get(fmt).refuse(runner, f"--formats={fmt}")

    # --- Images for parity and calibration, and the Keras model's answers ---
    config = dataclasses.replace(config, data_val=config.data_val or _runs_validation_folder(
        runner.source))
    val = _parity_folder(config.data_val, runner.class_names)
    chosen = folders.sample_indices(val, config.parity_images)
    paths = [val.paths[i] for i in chosen]
    labels = val.labels[chosen]
    batch = {io.IMAGE: np.stack([pipeline.load_image(tf.constant(p), runner.img_size).numpy()
                                 for p in paths]),
             **parity.parity_records(runner, paths, config.metadata)}
    runner.chunk = 32
    reference, keras_latency = parity.timed_runner(runner, batch)
    report = {"model": str(runner.source), "parity images": len(paths),
              "data": str(config.data_val),
              "metadata": None if io.RECORDS not in batch else (
                  config.metadata if config.metadata.lower() != "none"
                  else "varied over the vocabulary"),
              "keras": {"accuracy": float(np.mean(reference[io.PROBABILITIES].argmax(1)
                                                  == labels)),
                        "mean latency ms": 1000 * keras_latency,
                        "file size bytes": runner.source.stat().st_size},
              "artifacts": {}}

    # --- Export and check --- (everything that would be replaced is known and said first)
    planned = destination.targets(output, config.formats, config.name, config.version)
    report["artifacts"] = destination.prepare(output, planned, report["model"], config.overwrite)
    calibration = [val.paths[i] for i in folders.sample_indices(
        val, config.calibration_images, formats.CALIBRATION_SEED)] if any(
            formats.get(fmt).calibrated for fmt in config.formats) else []
    records = parity.parity_records(runner, calibration, config.metadata).get(io.RECORDS)
    failures = []
    with tempfile.TemporaryDirectory() as scratch:  # The traced model and float ONNX, once.
        work = formats.Work(Path(scratch), [str(path) for path in calibration], records)
        for fmt in config.formats:
            _log.info(f"exporting {fmt} ...")
            entry = _export_one(formats.get(fmt), planned[fmt], runner, work, paths, batch,
                                reference, labels)
            report["artifacts"][fmt] = entry
            failures += _judge(fmt, entry, report["keras"]["accuracy"])
            # After each artifact: an interrupted export still reports what it finished.
            output.mkdir(parents=True, exist_ok=True)
            atomic.write_json_atomic(output / destination.REPORT, report)
    card = destination.ship_model_card(runner.source, output)
    if card is not None:
        report["model card"] = str(card)
        atomic.write_json_atomic(output / destination.REPORT, report)
    _log.info(parity.describe(report))
    if failures:
        raise ExportError("; ".join(failures) + f"; see {output / destination.REPORT}")
    return report


def _export_one(fmt: formats.Format, target: Path, runner, work: formats.Work, paths: list,
                batch: dict, reference: dict, labels: np.ndarray) -> dict:
    """Writes one format's artifact to `target` (destination.targets) and returns its report
    row: checked as shipped on `batch`, the images of `paths`, against the Keras model's
    `reference`."""
    written = fmt.write(runner, target, work)
    answer, latency = parity.timed(fmt.answers(target, runner, paths, batch), len(paths))
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) if (
        target.is_dir()) else target.stat().st_size
    return {"path": str(target), **written, "file size bytes": size,
            "mean latency ms": 1000 * latency,
            **fmt.facts(target, runner, paths, batch, reference),
            **parity.agreement(reference, answer, labels, runner.unknown)}


def _judge(fmt: str, entry: dict, keras_accuracy: float) -> list[str]:
    """The failure an artifact's agreement is: below its format's `min_agreement` (a format
    without one, int8, only warns: full-integer quantisation costs accuracy by design)."""
    need = formats.get(fmt).min_agreement
    if entry["top1 agreement"] >= (need or formats.MIN_TOP1_AGREEMENT):
        return []
    if need is None:
        _log.warning(f"warning: {fmt} agrees with the Keras model on "
                     f"{100 * entry['top1 agreement']:.1f}% of top-1 labels (accuracy "
                     f"{entry['accuracy']:.4f} vs {keras_accuracy:.4f}): int8 "
                     "quantisation costs accuracy; prefer onnx, tflite_fp16 "
                     "or tflite_dynamic unless int8's speed or size is needed.")
        return []
    return [f"{fmt} agrees with the Keras model on only {100 * entry['top1 agreement']:.1f}% "
            f"of top-1 labels (need {100 * need:.0f}%)"]
