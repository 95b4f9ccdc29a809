"""Exports a trained model for TF Serving (SavedModel) and phones (TFLite), and proves parity.

    <output>/saved_model/<name>/<version>/   TF Serving layout; signatures:
        serving_default  image_bytes: string [None] (JPEG/PNG/BMP bytes) -> probabilities, label, score
        serving_images   images: float32 [None, H, W, 3], RGB in [0, 255]  -> the same outputs
    <output>/tflite_<kind>/<name>_<kind>.tflite + labels.txt + metadata.json
        kind: fp32, fp16, dynamic (int8 weights) or int8 (full integer, uint8 input)
    <output>/report.json                     parity of every artifact with the Keras model

Both the served graph and the TFLite inputs use `input_pipeline.decode_and_resize`, the function
training used, so preprocessing cannot drift. TFLite files may contain TFLite built-in ops only
(no Flex ops, which would need the 10+ MB select-TF-ops library on the phone).
"""

import dataclasses
import functools
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

from skin_keras import atomic, folders, inference, input_pipeline
from skin_keras.errors import UserError

FORMATS = ("saved_model", "tflite_fp32", "tflite_fp16", "tflite_dynamic", "tflite_int8")
# Float and weight-only TFLite files must agree with Keras on at least this share of top-1 labels.
MIN_TOP1_AGREEMENT = 0.99


class ExportError(UserError):
    """An exported artifact is unusable (Flex ops, or answers that differ from the model's)."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What `export` does (see `python export.py --help`)."""

    model_path: str
    output: str
    data_val: str
    formats: tuple[str, ...] = ("saved_model", "tflite_fp16")
    name: str = "skin"
    version: int = 0  # 0: the next free version number.
    parity_images: int = 200
    calibration_images: int = 100

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise UserError(f"unknown format(s) {', '.join(unknown) or '(none given)'}; choose "
                            f"from {', '.join(FORMATS)}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise UserError(f"--name={self.name}: use letters, digits, '_', '-' or '.'")
        if self.version < 0:
            raise UserError(f"--version={self.version} must be positive (or 0 for the next one)")
        if self.parity_images < 1 or self.calibration_images < 1:
            raise UserError("--parity_images and --calibration_images must be at least 1")


# --- SavedModel for TF Serving ---

def _serving_outputs(model: keras.Model, class_names: tf.Tensor, images: tf.Tensor) -> dict:
    probabilities = model(images, training=False)
    return {"probabilities": probabilities,
            "label": tf.gather(class_names, tf.argmax(probabilities, axis=-1)),
            "score": tf.reduce_max(probabilities, axis=-1)}


def next_version(model_base: Path) -> int:
    versions = [int(p.name) for p in model_base.iterdir() if p.name.isdigit()] if (
        model_base.is_dir()) else []
    return max(versions, default=0) + 1


def write_saved_model(loaded: inference.LoadedModel, model_base: Path, version: int) -> Path:
    """Writes <model_base>/<version>/ with both serving signatures and assets/labels.txt."""
    target = model_base / str(version)
    if target.exists():
        raise UserError(f"{target} exists already: choose another --version or leave it unset")
    model, size = loaded.require_keras("Export"), loaded.img_size
    class_names = tf.constant(loaded.class_names)

    def serve_bytes(image_bytes):
        images = tf.map_fn(lambda contents: input_pipeline.decode_and_resize(contents, size),
                           image_bytes, fn_output_signature=tf.TensorSpec((size, size, 3),
                                                                          tf.float32))
        return _serving_outputs(model, class_names, images)

    def serve_images(images):
        return _serving_outputs(model, class_names, images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes, input_signature=[
        tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("serving_images", serve_images, input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    model_base.mkdir(parents=True, exist_ok=True)
    staging = model_base / f".{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    archive.write_out(str(staging), verbose=False)
    # The graph holds the class names as a constant; labels.txt is for people and clients.
    (staging / "assets").mkdir(exist_ok=True)
    (staging / "assets" / "labels.txt").write_text("\n".join(loaded.class_names) + "\n")
    os.replace(staging, target)  # TF Serving must never see a half-written version.
    return target


# --- TFLite for phones ---

def tflite_source(loaded: inference.LoadedModel, folder: str) -> str:
    """Writes the Keras model with a fixed [1, H, W, 3] float32 input as a SavedModel for the
    TFLite converter (tracing it once serves every kind of conversion); returns `folder`."""
    size, model = loaded.img_size, loaded.require_keras("Export")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", functools.partial(model.__call__, training=False),
                         input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32,
                                                        name="image")])
    archive.write_out(folder, verbose=False)
    return folder


def convert_tflite(loaded: inference.LoadedModel, kind: str, calibration_paths: list[str],
                   source: str | None = None) -> bytes:
    """A TFLite flatbuffer with a fixed [1, H, W, 3] input (uint8 for int8, else float32).

    `source` is a folder written by `tflite_source` (one is made when it is None).
    """
    if source is None:
        with tempfile.TemporaryDirectory() as folder:
            return convert_tflite(loaded, kind, calibration_paths, tflite_source(loaded, folder))
    converter = tf.lite.TFLiteConverter.from_saved_model(source)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if kind != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if kind == "int8":
        def representative_images():
            for path in calibration_paths:
                yield [input_pipeline.load_image(tf.constant(path), loaded.img_size)[None]]

        converter.representative_dataset = representative_images
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter.convert()


def op_names(model_content: bytes) -> set[str]:
    interpreter = inference.TFLiteRunner(model_content).interpreter
    return {op["op_name"] for op in interpreter._get_ops_details()}  # pylint: disable=protected-access


def check_builtin_ops(model_content: bytes, kind: str) -> None:
    """Fails when the model needs ops outside the TFLite built-ins (Flex or custom ops)."""
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=g-import-not-at-top

    model = schema.ModelT.InitFromPackedBuf(model_content, 0)
    custom = sorted({code.customCode.decode() if isinstance(code.customCode, bytes)
                     else str(code.customCode)
                     for code in model.operatorCodes
                     if max(code.builtinCode, code.deprecatedBuiltinCode)
                     == schema.BuiltinOperator.CUSTOM})
    if custom:
        raise ExportError(f"tflite_{kind} needs ops that are not TFLite built-ins: "
                          f"{', '.join(custom)}")


def tflite_predict(model_content: bytes, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities of each image [N, H, W, 3] in [0, 255], and the mean seconds per image."""
    runner = inference.TFLiteRunner(model_content)
    start = time.perf_counter()
    probabilities = runner(images)
    return probabilities, (time.perf_counter() - start) / len(images)


def write_tflite(loaded: inference.LoadedModel, kind: str, model_content: bytes, folder: Path,
                 name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{kind}.tflite"
    atomic.write_atomic(path, lambda tmp: Path(tmp).write_bytes(model_content))
    atomic.write_text_atomic(folder / "labels.txt", "\n".join(loaded.class_names) + "\n")
    size = loaded.img_size
    atomic.write_json_atomic(folder / "metadata.json", {
        "model": loaded.model.name,
        "format": f"tflite_{kind}",
        "file": path.name,
        "input": {"shape": [1, size, size, 3], "dtype": "uint8" if kind == "int8" else "float32",
                  "value range": [0, 255], "channels": "RGB",
                  "preprocessing": "resize the whole image to the input size (no crop), "
                                   "bilinear with antialiasing; no scaling (the model rescales)"},
        "output": {"shape": [1, len(loaded.class_names)], "dtype": "float32",
                   "meaning": "class probabilities, in the order of labels.txt"},
        "class_names": loaded.class_names,
        "source": str(loaded.source),
    })
    return path


# --- Parity ---

def parity(reference: np.ndarray, probabilities: np.ndarray, labels: np.ndarray) -> dict:
    agree = float(np.mean(reference.argmax(1) == probabilities.argmax(1)))
    return {"top1 agreement": agree,
            "max abs probability difference": float(np.max(np.abs(reference - probabilities))),
            "accuracy": float(np.mean(probabilities.argmax(1) == labels))}


def sample_images(folder: folders.ImageFolder, count: int, seed: int = 0) -> list[int]:
    """Up to `count` indices drawn uniformly at random (so classes in about their shares), fixed
    for a seed."""
    order = np.random.default_rng(seed).permutation(len(folder.paths))
    return sorted(order[:count].tolist())


def export(config: ExportConfig) -> dict:
    """Writes every requested artifact, checks each against the Keras model, returns the report."""
    loaded = inference.load_model(config.model_path)
    loaded.require_keras("Export")
    output = Path(config.output)

    # --- Images for parity and calibration ---
    val = folders.scan_image_folder(config.data_val, class_names=loaded.class_names,
                                    allow_missing_classes=True)
    chosen = sample_images(val, config.parity_images)
    paths = [val.paths[i] for i in chosen]
    labels = val.labels[chosen]
    images = np.stack([input_pipeline.load_image(tf.constant(p), loaded.img_size).numpy()
                       for p in paths])
    loaded.predict_images(images[:1])  # Trace once, so latency measures inference only.
    start = time.perf_counter()
    reference = np.concatenate([loaded.predict_images(images[i:i + 32])
                                for i in range(0, len(images), 32)])
    keras_latency = (time.perf_counter() - start) / len(images)
    report = {"model": str(loaded.source), "parity images": len(paths),
              "data": str(config.data_val),
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
            entry = _export_saved_model(loaded, output, config, paths, images, reference, labels)
        else:
            kind = fmt.removeprefix("tflite_")
            calibration = [val.paths[i] for i in sample_images(val, config.calibration_images, 1)]
            source = source or tflite_source(loaded, scratch.name)
            content = convert_tflite(loaded, kind, calibration, source)
            check_builtin_ops(content, kind)
            path = write_tflite(loaded, kind, content, output / fmt, config.name)
            probabilities, latency = tflite_predict(content, images)
            entry = {"path": str(path), "file size bytes": path.stat().st_size,
                     "mean latency ms": 1000 * latency, "ops": sorted(op_names(content)),
                     **parity(reference, probabilities, labels)}
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


def _export_saved_model(loaded, output, config, paths, images, reference, labels) -> dict:
    model_base = output / "saved_model" / config.name
    version = config.version or next_version(model_base)
    target = write_saved_model(loaded, model_base, version)
    served = tf.saved_model.load(str(target))
    by_bytes = served.signatures["serving_default"]
    by_images = served.signatures["serving_images"]
    by_bytes(image_bytes=tf.constant([Path(paths[0]).read_bytes()]))  # Warm-up.
    probabilities, start = [], time.perf_counter()
    for i in range(0, len(paths), 16):
        contents = tf.constant([Path(p).read_bytes() for p in paths[i:i + 16]])
        probabilities.append(by_bytes(image_bytes=contents)["probabilities"].numpy())
    latency = (time.perf_counter() - start) / len(paths)
    probabilities = np.concatenate(probabilities)
    from_images = by_images(images=tf.constant(images[:16]))["probabilities"].numpy()
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return {"path": str(target), "version": version, "file size bytes": size,
            "mean latency ms": 1000 * latency,
            "images signature max abs difference": float(
                np.max(np.abs(from_images - reference[:16]))),
            **parity(reference, probabilities, labels)}


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
