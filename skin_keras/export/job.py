"""export.py's job: every requested artifact of a trained model, each checked against the Keras
model on real images (report.json), for TF Serving (saved_model.py), phones and ONNX
(files.py)."""

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
from skin_keras.data import decode_check, folders, pipeline
from skin_keras.export import destination, files, parity, saved_model
from skin_keras.export.files import ExportError
from skin_keras.infer import backend, litert, load, onnx_runtime
from skin_keras.infer.runner import keras_model
from skin_keras.model import io
from skin_keras.train import run_folder

_log = logging.getLogger(__name__)

FORMATS = ("saved_model",) + tuple(f"tflite_{kind}" for kind in litert.KINDS) + (
    "onnx", "onnx_int8")


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
    calibration_images: int = option(backend.CALIBRATION_IMAGES, "Images of --data_val that "
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
    run_dir = source.parent.parent if source.parent.name == "weights" else source.parent
    try:
        named = run_folder.read_params(run_dir)["train parameters"].get("data_val") or ""
    except (OSError, ValueError, KeyError, TypeError, UserError):
        named = ""
    if not named or not Path(named).is_dir():
        raise UserError("give --data_val=FOLDER (images to check the exports on and to "
                        f"calibrate int8): {run_dir} names no validation folder that exists "
                        + (f"({named} is gone)" if named else "(no train_params.json)"))
    _log.info(f"--data_val: the run's validation folder, {named}")
    return named


def export(config: ExportConfig) -> dict:
    """Writes every requested artifact, checks each against the Keras model, returns the report."""
    output = Path(config.output)
    destination.check_output_folder(output)
    runner = load.load(config.model_path)
    keras_model(runner, "Export")  # Exports are made from the Keras model: say so at once.
    if "onnx_int8" in config.formats:
        onnx_runtime.check_quantizable(runner.model, "--formats=onnx_int8")

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
              "metadata": None if io.METADATA not in batch else (
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
    failures = []
    with tempfile.TemporaryDirectory() as scratch:  # The traced model and float ONNX, once.
        for fmt in config.formats:
            _log.info(f"exporting {fmt} ...")
            entry = _export_one(fmt, planned[fmt], runner, config, val, paths, batch,
                                reference, labels, scratch)
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
        raise ExportError("; ".join(failures) + f" (need {100 * parity.MIN_TOP1_AGREEMENT:.0f}%)"
                          f"; see {output / destination.REPORT}")
    return report


def _export_one(fmt: str, target: Path, runner, config: ExportConfig,
                val: folders.ImageFolder, paths: list, batch: dict, reference: dict,
                labels: np.ndarray, scratch: str) -> dict:
    """Writes one format's artifact to `target` (destination.targets) and returns its report
    row: checked on `batch`, the images of `paths`, against the Keras model's `reference`."""
    if fmt == "saved_model":
        return saved_model.export_saved_model(runner, target.parent, int(target.name), paths,
                                              batch, reference, labels)
    if fmt == "onnx":
        return files.export_onnx(runner, target.parent, config.name,
                                 files.float_onnx(runner, Path(scratch)), batch, reference, labels)
    calibration = [val.paths[i] for i in folders.sample_indices(
        val, config.calibration_images, backend.CALIBRATION_SEED)]
    calibration_inputs = parity.parity_records(runner, calibration, config.metadata)
    if fmt == "onnx_int8":
        feeds = onnx_runtime.calibration_feeds(runner, calibration,
                                               calibration_inputs.get(io.METADATA))
        return files.export_onnx(runner, target.parent, config.name,
                                 files.float_onnx(runner, Path(scratch)), batch, reference, labels,
                                 feeds)
    kind = fmt.removeprefix("tflite_")
    source = Path(scratch) / "traced"  # Traced once, converted to every kind.
    if not source.exists():
        litert.traced_source(runner.model, str(source))
    content = litert.convert(runner.model, kind, calibration, str(source),
                             runner.about.encoding.encode_records(calibration_inputs[io.METADATA])
                             if calibration_inputs else None)
    return files.export_tflite(runner, kind, content, target.parent, config.name, batch,
                               reference, labels)


def _judge(fmt: str, entry: dict, keras_accuracy: float) -> list[str]:
    """The failure an artifact's agreement is (int8 only warns: full-integer quantisation
    costs accuracy by design)."""
    if entry["top1 agreement"] >= parity.MIN_TOP1_AGREEMENT:
        return []
    if fmt in ("tflite_int8", "onnx_int8"):
        _log.warning(f"warning: {fmt} agrees with the Keras model on "
                     f"{100 * entry['top1 agreement']:.1f}% of top-1 labels (accuracy "
                     f"{entry['accuracy']:.4f} vs {keras_accuracy:.4f}): int8 "
                     "quantisation costs accuracy; prefer onnx, tflite_fp16 "
                     "or tflite_dynamic unless int8's speed or size is needed.")
        return []
    return [f"{fmt} agrees with the Keras model on only {100 * entry['top1 agreement']:.1f}% "
            "of top-1 labels"]
