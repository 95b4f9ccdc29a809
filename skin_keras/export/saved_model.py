"""The SavedModel for TF Serving, and its parity row.

    <output>/saved_model/<name>/<version>/   TF Serving layout; signatures:
        serving_default  image_bytes: string [None] (JPEG/PNG/BMP bytes) -> probabilities, label,
                         score (and unknown_score, unknown for a model with an unknown rule)
        serving_images   images: float32 [None, H, W, 3], RGB in [0, 255]  -> the same outputs
      a model with patient metadata takes, beside image_bytes / images, age_approx: float [None]
      (negative = missing), sex and anatom_site_general: string [None] ("" = missing), encoded
      in the graph; serving_image_only takes image_bytes alone (metadata missing).

The bytes signature decodes with `pipeline.decode_and_resize`, the function training used, so
preprocessing cannot drift; the class names are a constant of the graph and assets/labels.txt.
"""

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skin_keras.core.errors import UserError
from skin_keras.data import patient_metadata, pipeline
from skin_keras.export import parity
from skin_keras.infer import litert
from skin_keras.infer.load import METADATA_FILE
from skin_keras.infer.runner import KerasRunner
from skin_keras.model import io, parts
from skin_keras.model.layers.unknown import RULE_FILE


def _serving_outputs(model: keras.Model, class_names: tf.Tensor, images, metadata=None) -> dict:
    """probabilities, label, score; and for a model with an unknown rule, unknown_score and
    unknown (the score below the rule's threshold)."""
    answer = model(parts.full_inputs(model, images, metadata), training=False)
    probabilities = answer[io.PROBABILITIES]
    outputs = {"probabilities": probabilities,
               "label": tf.gather(class_names, tf.argmax(probabilities, axis=-1)),
               "score": tf.reduce_max(probabilities, axis=-1)}
    if io.UNKNOWN_SCORE in answer:
        threshold = io.unknown_layer(model).rule.threshold
        outputs.update(unknown_score=answer[io.UNKNOWN_SCORE],
                       unknown=answer[io.UNKNOWN_SCORE] < threshold)
    return outputs


def next_version(model_base: Path) -> int:
    versions = [int(p.name) for p in model_base.iterdir() if p.name.isdigit()] if (
        model_base.is_dir()) else []
    return max(versions, default=0) + 1


METADATA_INPUTS = {"age_approx": tf.float32, "sex": tf.string, "anatom_site_general": tf.string}


def signature_specs(img_size: int, num_classes: int, with_metadata: bool,
                    with_unknown: bool) -> dict[str, tuple[list, dict]]:
    """Every serving signature: name -> (input specs in order, output specs by name). The one
    declaration of the API: the SavedModel is traced with it, serve.py answers with it."""
    outputs = {"probabilities": tf.TensorSpec([None, num_classes], tf.float32),
               "label": tf.TensorSpec([None], tf.string),
               "score": tf.TensorSpec([None], tf.float32)}
    if with_unknown:
        outputs.update(unknown_score=tf.TensorSpec([None], tf.float32),
                       unknown=tf.TensorSpec([None], tf.bool))
    metadata = [tf.TensorSpec([None], dtype, name=name)
                for name, dtype in METADATA_INPUTS.items()] if with_metadata else []
    by_bytes = tf.TensorSpec([None], tf.string, name="image_bytes")
    images = tf.TensorSpec([None, img_size, img_size, 3], tf.float32, name="images")
    specs = {"serving_default": ([by_bytes, *metadata], outputs),
             "serving_images": ([images, *metadata], outputs)}
    if with_metadata:  # The same model, every record missing.
        specs["serving_image_only"] = ([by_bytes], outputs)
    return specs


def _signatures(runner: KerasRunner) -> dict:
    """The serving signatures of the runner's model. Every signature calls one traced function
    of the images (and the encoded metadata), so the model is traced once, not per signature."""
    model, size = runner.model, runner.img_size
    class_names = tf.constant(runner.class_names)
    encoding = parts.metadata_encoding_of(model)
    specs = {name: inputs for name, (inputs, _) in signature_specs(
        size, len(runner.class_names), encoding is not None, runner.unknown is not None).items()}

    def decode(image_bytes):
        return tf.map_fn(lambda contents: pipeline.decode_and_resize(contents, size),
                         image_bytes, fn_output_signature=tf.TensorSpec((size, size, 3),
                                                                        tf.float32))

    if encoding is None:
        forward = tf.function(lambda images: _serving_outputs(model, class_names, images),
                              input_signature=specs["serving_images"])
        return {"serving_default": tf.function(lambda image_bytes: forward(decode(image_bytes)),
                                               input_signature=specs["serving_default"]),
                "serving_images": forward}
    forward = tf.function(lambda images, vectors: _serving_outputs(
        model, class_names, images, vectors), input_signature=[
            specs["serving_images"][0], tf.TensorSpec([None, encoding.size], tf.float32)])
    missing = tf.constant(encoding.missing_vector())
    return {
        "serving_default": tf.function(
            lambda image_bytes, age_approx, sex, anatom_site_general: forward(
                decode(image_bytes), encoding.encode(age_approx, sex, anatom_site_general)),
            input_signature=specs["serving_default"]),
        "serving_images": tf.function(
            lambda images, age_approx, sex, anatom_site_general: forward(
                images, encoding.encode(age_approx, sex, anatom_site_general)),
            input_signature=specs["serving_images"]),
        "serving_image_only": tf.function(lambda image_bytes: forward(
            decode(image_bytes), tf.repeat(missing[None], tf.shape(image_bytes)[0], axis=0)),
            input_signature=specs["serving_image_only"])}


def write_saved_model(runner: KerasRunner, model_base: Path, version: int) -> Path:
    """Writes <model_base>/<version>/ with the serving signatures and assets/labels.txt (and
    assets/unknown.json for a model with an unknown rule, assets/metadata.json with the
    metadata encoding for a metadata model)."""
    target = model_base / str(version)
    if target.exists():
        raise UserError(f"{target} exists already: choose another --version or leave it unset")
    signatures = _signatures(runner)
    model_base.mkdir(parents=True, exist_ok=True)
    staging = model_base / f".{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    litert.save_signatures(signatures, staging, endpoints=True)
    # The graph holds the class names as a constant; labels.txt is for people and clients.
    (staging / "assets").mkdir(exist_ok=True)
    (staging / "assets" / "labels.txt").write_text("\n".join(runner.class_names) + "\n")
    encoding = parts.metadata_encoding_of(runner.model)
    if encoding is not None:  # What predict.py needs to tell used metadata from unknown.
        (staging / "assets" / METADATA_FILE).write_text(
            json.dumps({"metadata input": encoding.describe()}, indent=2))
    if runner.unknown is not None:
        (staging / "assets" / RULE_FILE).write_text(
            json.dumps({"unknown": runner.unknown.to_dict()}, indent=2))
    os.replace(staging, target)  # TF Serving must never see a half-written version.
    return target


def _raw_metadata(inputs: dict, rows: slice) -> dict:
    """Signature inputs of a metadata SavedModel for the records in `inputs` (missing age: -1);
    {} for an image-only model."""
    if io.METADATA not in inputs:
        return {}
    ages, sexes, sites = patient_metadata.as_arrays(inputs[io.METADATA][rows])
    return {"age_approx": tf.constant(np.nan_to_num(ages, nan=-1.0)),
            "sex": tf.constant(sexes.astype(str)),
            "anatom_site_general": tf.constant(sites.astype(str))}


def export_saved_model(runner: KerasRunner, model_base: Path, version: int, paths: list,
                       batch: dict, reference: dict, labels: np.ndarray) -> dict:
    """Writes the SavedModel and checks it, as TF Serving will call it, against the Keras
    model's answers (`reference`) to the parity `batch` (images of `paths`)."""
    target = write_saved_model(runner, model_base, version)
    served = tf.saved_model.load(str(target))
    by_bytes = served.signatures["serving_default"]
    inputs = {name: value for name, value in batch.items() if name != io.IMAGE}

    def call(images):  # 0: all of them, in calls of 16 as a client would send them.
        answers = []
        for start in range(0, images or len(paths), 16):
            rows = slice(start, start + (images or 16))
            contents = tf.constant([Path(p).read_bytes() for p in paths[rows]])
            answers.append(by_bytes(image_bytes=contents, **_raw_metadata(inputs, rows)))
        return {name: np.concatenate([answer[name].numpy() for answer in answers])
                for name in (io.PROBABILITIES, io.UNKNOWN_SCORE) if name in answers[0]}

    answer, latency = parity.timed(call, len(paths))
    first = slice(0, 16)
    from_images = served.signatures["serving_images"](
        images=tf.constant(batch[io.IMAGE][first]), **_raw_metadata(inputs, first))
    entry = {"path": str(target), "version": version,
             "file size bytes": sum(f.stat().st_size for f in target.rglob("*") if f.is_file()),
             "mean latency ms": 1000 * latency,
             "images signature max abs difference": float(np.max(np.abs(
                 from_images["probabilities"].numpy() - reference[io.PROBABILITIES][first]))),
             **parity.agreement(reference, answer, labels, runner.unknown)}
    if inputs:  # Without metadata: the Keras model with every row missing.
        image_only = served.signatures["serving_image_only"](image_bytes=tf.constant(
            [Path(p).read_bytes() for p in paths[first]]))["probabilities"].numpy()
        entry["image-only signature max abs difference"] = float(np.max(np.abs(
            image_only - runner({io.IMAGE: batch[io.IMAGE][first]})[io.PROBABILITIES])))
    return entry
