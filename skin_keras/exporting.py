"""Exports a trained model for TF Serving (SavedModel) and phones (TFLite), and proves parity.

    <output>/saved_model/<name>/<version>/   TF Serving layout; signatures:
        serving_default  image_bytes: string [None] (JPEG/PNG/BMP bytes) -> probabilities, label, score
        serving_images   images: float32 [None, H, W, 3], RGB in [0, 255]  -> the same outputs
      a model with patient metadata takes, beside image_bytes / images, age_approx: float [None]
      (negative = missing), sex and anatom_site_general: string [None] ("" = missing), encoded
      in the graph; serving_image_only takes image_bytes alone (metadata missing).
    <output>/tflite_<kind>/<name>_<kind>.tflite + labels.txt + metadata.json
        TFLite Metadata embedded (tflite_metadata: what MediaPipe Tasks' ImageClassifier reads;
        labels.txt and metadata.json packed inside too)
        kind: fp32, fp16, dynamic (int8 weights) or int8 (full integer, uint8 input); a
        metadata model's file takes the encoded vector as a second input, "metadata" [1, size],
        described in metadata.json ("metadata input": order, vocabularies, scaling)
    <output>/onnx/<name>.onnx + labels.txt + metadata.json
        input "image" [B, H, W, 3] float32 in [0, 255] (and "metadata"), outputs "probabilities"
        (and "unknown_score"); class names and the description in its metadata properties;
        its parity row is run with ONNX Runtime (onnx_runtime)
    <output>/report.json                     parity of every artifact with the Keras model

Both the served graph and the TFLite inputs use `input_pipeline.decode_and_resize`, the function
training used, so preprocessing cannot drift. TFLite files may contain TFLite built-in ops only
(no Flex ops, which would need the 10+ MB select-TF-ops library on the phone).
"""

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skin_keras import (atomic, folders, input_pipeline, litert, models, onnx_runtime,
                        open_set, patient_metadata, tflite_metadata)
from skin_keras.artifacts import LoadedModel, load_model
from skin_keras.errors import UserError, first_line
from skin_keras.options import check_options, option

FORMATS = ("saved_model",) + tuple(f"tflite_{kind}" for kind in litert.KINDS) + ("onnx",)
# Float and weight-only TFLite files must agree with Keras on at least this share of top-1 labels.
MIN_TOP1_AGREEMENT = 0.99


class ExportError(UserError):
    """An exported artifact is unusable (Flex ops, or answers that differ from the model's)."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What `export` does (export.py's flags)."""

    model_path: str = option(None, "Run folder (uses weights/best.keras) or a .keras file.",
                             required=True)
    output: str = option("exports/skin", "Folder for the exported artifacts.")
    data_val: str = option(None, "Class-folder images for the parity check and int8 "
                           "calibration.", required=True)
    formats: tuple[str, ...] = option(("saved_model", "tflite_fp16"),
                                      f"Comma-separated: {', '.join(FORMATS)}.")
    name: str = option("skin", "Model name (TF Serving's model_name, file names).")
    version: int = option(0, "SavedModel version; 0 = the next free number.", low=0)
    parity_images: int = option(200, "Images of --data_val on which every artifact is compared "
                                "to Keras.", low=1)
    calibration_images: int = option(100, "Images of --data_val that calibrate tflite_int8.",
                                     low=1)
    metadata: str = option("none", "For a model with patient metadata: the CSV of --data_val's "
                           "metadata for the parity check and int8 calibration; none = every "
                           "metadata input is varied over its vocabulary instead.", path=True,
                           keywords=("none",))

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise UserError(f"unknown format(s) {', '.join(unknown) or '(none given)'}; choose "
                            f"from {', '.join(FORMATS)}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise UserError(f"--name={self.name}: use letters, digits, '_', '-' or '.'")
        check_options(self)


def check_output_folder(output: Path) -> None:
    """UserError now, before minutes of conversion, when `output` cannot become a folder."""
    for folder in (output, *output.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"--output={output}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK):
                raise UserError(f"--output={output}: {folder} is not writable")
            return


# --- SavedModel for TF Serving ---

def _serving_outputs(model: keras.Model, class_names: tf.Tensor, images: tf.Tensor,
                     metadata: tf.Tensor | None = None) -> dict:
    """probabilities, label, score; and for a model with an unknown rule, unknown_score and
    unknown (the score below the rule's threshold)."""
    scored = models.scored_model(model)
    inputs = models.model_inputs(model, images, metadata)
    if scored is None:
        probabilities, unknown = model(inputs, training=False), {}
    else:
        probabilities, unknown_score = scored(inputs, training=False)
        rule = open_set.detector_of(model).rule
        unknown = {"unknown_score": unknown_score, "unknown": unknown_score < rule.threshold}
    return {"probabilities": probabilities,
            "label": tf.gather(class_names, tf.argmax(probabilities, axis=-1)),
            "score": tf.reduce_max(probabilities, axis=-1), **unknown}


def next_version(model_base: Path) -> int:
    versions = [int(p.name) for p in model_base.iterdir() if p.name.isdigit()] if (
        model_base.is_dir()) else []
    return max(versions, default=0) + 1


def write_saved_model(loaded: LoadedModel, model_base: Path, version: int) -> Path:
    """Writes <model_base>/<version>/ with both serving signatures and assets/labels.txt."""
    target = model_base / str(version)
    if target.exists():
        raise UserError(f"{target} exists already: choose another --version or leave it unset")
    model, size = loaded.require_keras("Export"), loaded.img_size
    class_names = tf.constant(loaded.class_names)

    encoding = models.metadata_encoding_of(model)

    def decode(image_bytes):
        return tf.map_fn(lambda contents: input_pipeline.decode_and_resize(contents, size),
                         image_bytes, fn_output_signature=tf.TensorSpec((size, size, 3),
                                                                        tf.float32))

    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    images_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="images")
    archive = keras.export.ExportArchive()
    archive.track(model)
    if encoding is None:
        archive.add_endpoint("serving_default", lambda image_bytes: _serving_outputs(
            model, class_names, decode(image_bytes)), input_signature=[bytes_spec])
        archive.add_endpoint("serving_images", lambda images: _serving_outputs(
            model, class_names, images), input_signature=[images_spec])
    else:
        metadata_specs = [tf.TensorSpec([None], tf.float32, name="age_approx"),
                          tf.TensorSpec([None], tf.string, name="sex"),
                          tf.TensorSpec([None], tf.string, name="anatom_site_general")]
        archive.add_endpoint(
            "serving_default", lambda image_bytes, age_approx, sex, anatom_site_general:
            _serving_outputs(model, class_names, decode(image_bytes),
                             encoding.encode(age_approx, sex, anatom_site_general)),
            input_signature=[bytes_spec, *metadata_specs])
        archive.add_endpoint(
            "serving_images", lambda images, age_approx, sex, anatom_site_general:
            _serving_outputs(model, class_names, images,
                             encoding.encode(age_approx, sex, anatom_site_general)),
            input_signature=[images_spec, *metadata_specs])
        archive.add_endpoint("serving_image_only", lambda image_bytes: _serving_outputs(
            model, class_names, decode(image_bytes)), input_signature=[bytes_spec])
    model_base.mkdir(parents=True, exist_ok=True)
    staging = model_base / f".{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    archive.write_out(str(staging), verbose=False)
    # The graph holds the class names as a constant; labels.txt is for people and clients.
    (staging / "assets").mkdir(exist_ok=True)
    (staging / "assets" / "labels.txt").write_text("\n".join(loaded.class_names) + "\n")
    if loaded.unknown is not None:
        (staging / "assets" / open_set.RULE_FILE).write_text(
            json.dumps({"unknown": loaded.unknown.to_dict()}, indent=2))
    os.replace(staging, target)  # TF Serving must never see a half-written version.
    return target


# --- TFLite for phones ---

def tflite_predict(model_content: bytes, images: np.ndarray,
                   metadata: np.ndarray | None = None) -> tuple[np.ndarray, object, float]:
    """Probabilities of each image [N, H, W, 3] in [0, 255] (and its encoded metadata), its
    out-of-distribution scores (None for a model without them) and the mean seconds per
    image."""
    runner = litert.TFLiteRunner(model_content)
    start = time.perf_counter()
    answer = runner(images, metadata)
    latency = (time.perf_counter() - start) / len(images)
    return (*answer, latency) if runner.scores else (answer, None, latency)


def describe_file(loaded: LoadedModel, fmt: str, file_name: str, input_dtype: str) -> dict:
    """What a phone or ONNX file takes and answers (metadata.json, and packed in the file)."""
    info, size = loaded.info, loaded.img_size
    batch = 1 if fmt.startswith("tflite") else "any"
    return {
        "model": info.architecture,
        "format": fmt,
        "file": file_name,
        "input": {"shape": [batch, size, size, 3], "dtype": input_dtype, **info.input},
        "preprocessing inside the model": info.preprocessing,
        **({} if info.metadata is None else {"metadata input": {
            "name": "metadata", "shape": [batch, info.metadata["vector size"]],
            "dtype": "float32 (quantized like the image input in int8 files)",
            **info.metadata}}),
        "output": {"shape": [batch, len(loaded.class_names)], "dtype": "float32",
                   "meaning": "class probabilities, in the order of labels.txt"},
        **({} if loaded.unknown is None else {
            "unknown": loaded.unknown.to_dict(),
            "score output": {"shape": [batch], "dtype": "float32", "meaning": (
                f"out-of-distribution score ({loaded.unknown.score}): the image is none of "
                f"the classes when it is below the threshold")}}),
        "class_names": loaded.class_names,
        "source": str(loaded.source),
    }


def write_beside(loaded: LoadedModel, folder: Path, description: dict) -> None:
    """labels.txt and metadata.json beside an exported file, for runtimes that do not read
    what is inside it."""
    atomic.write_text_atomic(folder / "labels.txt", "\n".join(loaded.class_names) + "\n")
    atomic.write_json_atomic(folder / "metadata.json", description)


def write_tflite(loaded: LoadedModel, kind: str, model_content: bytes, folder: Path,
                 name: str) -> Path:
    """<folder>/<name>_<kind>.tflite with TFLite Metadata embedded (tflite_metadata: what
    MediaPipe Tasks reads, and labels.txt and metadata.json packed inside), and the same two
    files beside it for runtimes that do not read packed files."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{kind}.tflite"
    description = describe_file(loaded, f"tflite_{kind}", path.name,
                                "uint8" if kind == "int8" else "float32")
    content = tflite_metadata.embed(model_content, description, loaded.class_names, name=name,
                                    scores=loaded.unknown is not None,
                                    takes_metadata=loaded.takes_metadata)
    atomic.write_atomic(path, lambda tmp: Path(tmp).write_bytes(content))
    write_beside(loaded, folder, description)
    return path


def _export_onnx(loaded: LoadedModel, output: Path, name: str, images, vectors, reference,
                 labels, reference_scores) -> dict:
    folder = output / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    description = describe_file(loaded, "onnx", path.name, "float32")
    try:
        content = onnx_runtime.convert(loaded.model, description)
    except (ValueError, RuntimeError, KeyError, TypeError, tf.errors.OpError) as error:
        reason = first_line(error)
        raise ExportError(f"onnx: tf2onnx could not convert {loaded.source}: {reason}") from None
    atomic.write_atomic(path, lambda tmp: Path(tmp).write_bytes(content))
    write_beside(loaded, folder, description)
    runner = onnx_runtime.ONNXRunner(path.read_bytes())  # Checked as shipped.
    runner(images[:1], None if vectors is None else vectors[:1])  # Warm-up.
    start = time.perf_counter()
    answer = runner(images, vectors)
    latency = (time.perf_counter() - start) / len(images)
    probabilities, scores = answer if runner.scores else (answer, None)
    return {"path": str(path), "file size bytes": path.stat().st_size,
            "mean latency ms": 1000 * latency, "runtime": "onnxruntime",
            **parity(reference, probabilities, labels, loaded.unknown and (
                loaded.unknown, reference_scores, scores))}


# --- Parity ---

def parity(reference: np.ndarray, probabilities: np.ndarray, labels: np.ndarray,
           unknown: tuple | None = None) -> dict:
    """Agreement with the Keras model; `unknown` = (rule, Keras scores, scores) for a model with
    an unknown rule: also how often both call the same images unknown."""
    agree = float(np.mean(reference.argmax(1) == probabilities.argmax(1)))
    entry = {"top1 agreement": agree,
             "max abs probability difference": float(np.max(np.abs(reference - probabilities))),
             "accuracy": float(np.mean(probabilities.argmax(1) == labels))}
    if unknown is not None:
        rule, reference_scores, scores = unknown
        entry["unknown agreement"] = float(np.mean(rule.flags(reference_scores)
                                                   == rule.flags(scores)))
        entry["max abs score difference"] = float(np.max(np.abs(reference_scores - scores)))
    return entry


def parity_records(loaded: LoadedModel, paths: list, metadata: str) -> list | None:
    """Patient records for the parity images of a metadata model (None for others): from the
    CSV when given (rows it lacks run as missing), else varied so that every age band, every
    vocabulary value and "missing" of each input occur."""
    if not loaded.takes_metadata:
        return None
    if metadata.lower() != "none":
        records, _, note = patient_metadata.for_prediction(metadata, paths)
        print(note)
        return records
    sexes = ("", *loaded.encoding.sexes)
    sites = ("", *loaded.encoding.sites)
    return [patient_metadata.Record(None if i % 7 == 6 else float(5 + 10 * (i % 9)),
                                    sexes[i % len(sexes)], sites[(i // 2) % len(sites)])
            for i in range(len(paths))]


def sample_images(folder: folders.ImageFolder, count: int, seed: int = 0) -> list[int]:
    """Up to `count` indices drawn uniformly at random (so classes in about their shares), fixed
    for a seed."""
    order = np.random.default_rng(seed).permutation(len(folder.paths))
    return sorted(order[:count].tolist())


def export(config: ExportConfig) -> dict:
    """Writes every requested artifact, checks each against the Keras model, returns the report."""
    output = Path(config.output)
    check_output_folder(output)
    loaded = load_model(config.model_path)
    model = loaded.require_keras("Export")

    # --- Images for parity and calibration ---
    val = folders.scan_image_folder(config.data_val, class_names=loaded.class_names,
                                    allow_missing_classes=True)
    chosen = sample_images(val, config.parity_images)
    paths = [val.paths[i] for i in chosen]
    labels = val.labels[chosen]
    images = np.stack([input_pipeline.load_image(tf.constant(p), loaded.img_size).numpy()
                       for p in paths])
    records = parity_records(loaded, paths, config.metadata)
    vectors = None if records is None else loaded.encoding.encode_records(records)
    loaded.predict_images(images[:1], records and records[:1])  # Trace once, so latency
    start = time.perf_counter()                                  # measures inference only.
    answers = [loaded.predict_scored(images[i:i + 32], records and records[i:i + 32])
               for i in range(0, len(images), 32)]
    reference = np.concatenate([answer[0] for answer in answers])
    reference_scores = None if loaded.unknown is None else np.concatenate(
        [answer[1] for answer in answers])
    keras_latency = (time.perf_counter() - start) / len(images)
    report = {"model": str(loaded.source), "parity images": len(paths),
              "data": str(config.data_val),
              "metadata": None if records is None else (
                  config.metadata if config.metadata.lower() != "none"
                  else "varied over the vocabulary"),
              "keras": {"accuracy": float(np.mean(reference.argmax(1) == labels)),
                        "mean latency ms": 1000 * keras_latency,
                        "file size bytes": loaded.source.stat().st_size},
              "artifacts": {}}

    # --- Export and check ---
    failures = []
    scratch = tempfile.TemporaryDirectory()  # The traced model every TFLite kind converts from.
    source = None
    for fmt in config.formats:
        print(f"exporting {fmt} ...", flush=True)
        if fmt == "saved_model":
            entry = _export_saved_model(loaded, output, config, paths, images, reference, labels,
                                        records, reference_scores)
        elif fmt == "onnx":
            entry = _export_onnx(loaded, output, config.name, images, vectors, reference, labels,
                                 reference_scores)
        else:
            kind = fmt.removeprefix("tflite_")
            calibration = [val.paths[i] for i in sample_images(val, config.calibration_images, 1)]
            calibration_records = parity_records(loaded, calibration, config.metadata)
            source = source or litert.traced_source(model, scratch.name)
            content = litert.convert(
                model, kind, calibration, source,
                calibration_records and loaded.encoding.encode_records(calibration_records))
            if litert.custom_ops(content):
                raise ExportError(f"{fmt} needs ops that are not TFLite built-ins: "
                                  f"{', '.join(litert.custom_ops(content))}")
            path = write_tflite(loaded, kind, content, output / fmt, config.name)
            content = path.read_bytes()  # Checked as shipped, metadata embedded.
            probabilities, scores, latency = tflite_predict(content, images, vectors)
            entry = {"path": str(path), "file size bytes": path.stat().st_size,
                     "mean latency ms": 1000 * latency,
                     "ops": sorted(litert.TFLiteRunner(content).op_names()),
                     **parity(reference, probabilities, labels, loaded.unknown and (
                         loaded.unknown, reference_scores, scores))}
        report["artifacts"][fmt] = entry
        if entry["top1 agreement"] < MIN_TOP1_AGREEMENT:
            if fmt == "tflite_int8":
                logging.warning(
                    "tflite_int8 agrees with the Keras model on %.1f%% of top-1 labels (accuracy "
                    "%.4f vs %.4f): full-integer quantisation costs EfficientNetV2 accuracy; "
                    "prefer tflite_fp16 or tflite_dynamic unless the phone needs integer-only.",
                    100 * entry["top1 agreement"], entry["accuracy"],
                    report["keras"]["accuracy"])
            else:
                failures.append(f"{fmt} agrees with the Keras model on only "
                                f"{100 * entry['top1 agreement']:.1f}% of top-1 labels")
    scratch.cleanup()
    output.mkdir(parents=True, exist_ok=True)
    atomic.write_json_atomic(output / "report.json", report)
    print(describe(report))
    if failures:
        raise ExportError("; ".join(failures) + f" (need {100 * MIN_TOP1_AGREEMENT:.0f}%); see "
                          f"{output / 'report.json'}")
    return report


def _raw_metadata(records) -> dict:
    """Signature inputs of a metadata SavedModel for `records` (missing age: -1)."""
    if records is None:
        return {}
    ages, sexes, sites = patient_metadata.as_arrays(records)
    return {"age_approx": tf.constant(np.nan_to_num(ages, nan=-1.0)),
            "sex": tf.constant(sexes.astype(str)),
            "anatom_site_general": tf.constant(sites.astype(str))}


def _export_saved_model(loaded, output, config, paths, images, reference, labels,
                        records, reference_scores) -> dict:
    model_base = output / "saved_model" / config.name
    version = config.version or next_version(model_base)
    target = write_saved_model(loaded, model_base, version)
    served = tf.saved_model.load(str(target))
    by_bytes = served.signatures["serving_default"]
    by_images = served.signatures["serving_images"]
    by_bytes(image_bytes=tf.constant([Path(paths[0]).read_bytes()]),
             **_raw_metadata(records and records[:1]))  # Warm-up.
    answers, start = [], time.perf_counter()
    for i in range(0, len(paths), 16):
        contents = tf.constant([Path(p).read_bytes() for p in paths[i:i + 16]])
        answers.append(by_bytes(image_bytes=contents, **_raw_metadata(
            records and records[i:i + 16])))
    latency = (time.perf_counter() - start) / len(paths)
    probabilities = np.concatenate([answer["probabilities"].numpy() for answer in answers])
    unknown = None if loaded.unknown is None else (loaded.unknown, reference_scores, np.concatenate(
        [answer["unknown_score"].numpy() for answer in answers]))
    from_images = by_images(images=tf.constant(images[:16]), **_raw_metadata(
        records and records[:16]))["probabilities"].numpy()
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    entry = {"path": str(target), "version": version, "file size bytes": size,
             "mean latency ms": 1000 * latency,
             "images signature max abs difference": float(
                 np.max(np.abs(from_images - reference[:16]))),
             **parity(reference, probabilities, labels, unknown)}
    if records is not None:  # Without metadata: the Keras model with every row missing.
        image_only = served.signatures["serving_image_only"](image_bytes=tf.constant(
            [Path(p).read_bytes() for p in paths[:16]]))["probabilities"].numpy()
        entry["image-only signature max abs difference"] = float(np.max(np.abs(
            image_only - loaded.predict_images(images[:16]))))
    return entry


def describe(report: dict) -> str:
    lines = [f"parity on {report['parity images']} images of {report['data']} "
             f"(Keras .keras model: accuracy {report['keras']['accuracy']:.4f}, "
             f"{report['keras']['mean latency ms']:.2f} ms/image in batches of 32)",
             f"{'artifact':<16} {'top-1 agree':>11} {'max |dp|':>9} {'accuracy':>8} "
             f"{'size MB':>8} {'ms/image':>8}"]
    for fmt, entry in report["artifacts"].items():
        lines.append(f"{fmt:<16} {100 * entry['top1 agreement']:>10.1f}% "
                     f"{entry['max abs probability difference']:>9.2e} "
                     f"{entry['accuracy']:>8.4f} {entry['file size bytes'] / 1e6:>8.2f} "
                     f"{entry['mean latency ms']:>8.2f}")
    return "\n".join(lines)
