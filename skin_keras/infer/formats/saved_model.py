"""The SavedModel format, for TF Serving.

    <output>/saved_model/<name>/<version>/   TF Serving layout; signatures:
        serving_default  image_bytes: string [None] (JPEG/PNG/BMP bytes) -> probabilities, label,
                         score (and unknown_score, unknown for a model with an unknown rule)
        serving_images   images: float32 [None, H, W, 3], RGB in [0, 255]  -> the same outputs
      a model with patient metadata takes, beside image_bytes / images, age_approx: float [None]
      (negative = missing), sex and anatom_site_general: string [None] ("" = missing), encoded
      in the graph; serving_image_only takes image_bytes alone (metadata missing).

The bytes signature decodes with `pipeline.decode_and_resize`, the function training used, so
preprocessing cannot drift; the class names are a constant of the graph and assets/labels.txt.
export's parity check calls it as TF Serving will (image bytes, in calls of 16);
`SavedModelRunner` runs serving_images.
"""

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skin_keras.core.errors import UserError, first_line
from skin_keras.data import patient_metadata, pipeline
from skin_keras.infer.formats import about, base, tracing
from skin_keras.infer.runner import About, KerasRunner, Runner
from skin_keras.model import io, parts
from skin_keras.model.layers.unknown import RULE_FILE

METADATA_FILE = "metadata.json"  # In assets/: how the model encodes patient metadata.


def _serving_outputs(model: keras.Model, class_names: tf.Tensor, inputs: dict) -> dict:
    """probabilities, label, score; and for a model with an unknown rule, unknown_score and
    unknown (the score below the rule's threshold)."""
    answer = model(parts.model_inputs(model, inputs), training=False)
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


def signature_specs(img_size: int, num_classes: int, model_inputs: tuple[str, ...],
                    model_outputs: tuple[str, ...]) -> dict[str, tuple[list, dict]]:
    """Every serving signature: name -> (input specs in order, output specs by name). The one
    declaration of the API: the SavedModel is traced with it, serve.py answers with it."""
    outputs = {"probabilities": tf.TensorSpec([None, num_classes], tf.float32),
               "label": tf.TensorSpec([None], tf.string),
               "score": tf.TensorSpec([None], tf.float32)}
    with_metadata = io.METADATA in model_inputs
    if io.UNKNOWN_SCORE in model_outputs:
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
        size, len(runner.class_names), runner.inputs, runner.outputs).items()}

    def decode(image_bytes):
        return tf.map_fn(lambda contents: pipeline.decode_and_resize(contents, size),
                         image_bytes, fn_output_signature=tf.TensorSpec((size, size, 3),
                                                                        tf.float32))

    if encoding is None:
        forward = tf.function(lambda images: _serving_outputs(model, class_names,
                                                              {io.IMAGE: images}),
                              input_signature=specs["serving_images"])
        return {"serving_default": tf.function(lambda image_bytes: forward(decode(image_bytes)),
                                               input_signature=specs["serving_default"]),
                "serving_images": forward}
    forward = tf.function(lambda images, vectors: _serving_outputs(
        model, class_names, {io.IMAGE: images, io.METADATA: vectors}), input_signature=[
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
    tracing.save_signatures(signatures, staging, endpoints=True)
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


def _raw_metadata(records: list | None, rows: slice) -> dict:
    """Signature inputs of a metadata SavedModel for `records[rows]` (missing age: -1); {}
    without records (an image-only model)."""
    if records is None:
        return {}
    ages, sexes, sites = patient_metadata.as_arrays(records[rows])
    return {"age_approx": tf.constant(np.nan_to_num(ages, nan=-1.0)),
            "sex": tf.constant(sexes.astype(str)),
            "anatom_site_general": tf.constant(sites.astype(str))}


class SavedModelRunner(Runner):
    """An exported SavedModel, through its serving_images signature (which encodes raw
    metadata values itself)."""

    encodes_itself = True

    def __init__(self, served, about: About):
        self.served = served  # The signature's variables live as long as the loaded object.
        signature = served.signatures["serving_images"]
        inputs = signature.structured_input_signature[1]
        super().__init__(about, (io.IMAGE, io.METADATA) if "sex" in inputs else (io.IMAGE,),
                         (io.PROBABILITIES, io.UNKNOWN_SCORE) if about.unknown is not None
                         else (io.PROBABILITIES,))
        self.signature = signature

    def _run(self, feed: dict) -> dict:
        answer = self.signature(images=tf.constant(feed[io.IMAGE]),
                                **_raw_metadata(feed.get(io.METADATA), slice(None)))
        return {name: answer[name].numpy() for name in self.outputs}


def find_saved_model(folder: Path) -> Path | None:
    """The SavedModel in `folder`: the folder itself, or its highest TF Serving version."""
    if (folder / "saved_model.pb").is_file():
        return folder
    versions = sorted((int(p.name) for p in folder.iterdir()
                       if p.name.isdigit() and (p / "saved_model.pb").is_file()), reverse=True)
    return folder / str(versions[0]) if versions else None


def _load(folder: Path) -> SavedModelRunner:
    try:
        served = tf.saved_model.load(str(folder))
    except (ValueError, OSError, tf.errors.OpError) as error:
        raise UserError(f"{folder} could not be loaded as a SavedModel: "
                        f"{first_line(error)}") from error
    if "serving_images" not in served.signatures:
        raise UserError(f"{folder} is a SavedModel without the serving_images signature that "
                        "export.py writes")
    signature = served.signatures["serving_images"]
    images = signature.structured_input_signature[1]["images"]
    labels = folder / "assets" / "labels.txt"
    class_names = about.read_labels(labels)
    classes = signature.structured_outputs["probabilities"].shape[-1]
    if classes != len(class_names):
        raise UserError(f"{folder} answers {classes} classes but {labels} names "
                        f"{len(class_names)}: the files do not belong together")
    encoding = None
    if (description := folder / "assets" / METADATA_FILE).is_file():
        try:
            encoding = about.metadata_encoding(json.loads(description.read_text()), None)
        except (OSError, ValueError) as error:
            raise UserError(f"{description}: {error}") from None
    return SavedModelRunner(served, About(
        class_names, int(images.shape[1]), folder,
        unknown=about.read_unknown_rule(folder / "assets" / RULE_FILE), encoding=encoding))


class SavedModel(base.Format):
    """The SavedModel folder, in TF Serving's layout (a version folder per export)."""

    name, title, folder = "saved_model", "SavedModel", "saved_model"

    def __init__(self):
        self._served = (None, None)  # (folder, loaded): the parity check loads it once.

    def target(self, output: Path, name: str, version: int) -> Path:
        base_folder = output / self.folder / name
        return base_folder / str(version or next_version(base_folder))

    def write(self, runner: KerasRunner, target: Path, work: base.Work) -> dict:
        write_saved_model(runner, target.parent, int(target.name))
        return {"version": int(target.name)}

    def load(self, path: Path) -> Runner:
        folder = find_saved_model(path)
        if folder is None:
            raise UserError(f"{path} holds no SavedModel")
        return _load(folder)

    def is_kind(self, runner: Runner) -> bool:
        return isinstance(runner, SavedModelRunner)

    def _signatures(self, target: Path) -> dict:
        if self._served[0] != target:
            self._served = (target, tf.saved_model.load(str(target)))
        return self._served[1].signatures

    def answers(self, target: Path, runner: KerasRunner, paths: list, batch: dict):
        """Through the bytes signature, as TF Serving will call it: every image in calls of
        16 as a client would send them."""
        by_bytes = self._signatures(target)["serving_default"]
        records = batch.get(io.RECORDS)

        def call(images):  # 0: all of them.
            answers = []
            for start in range(0, images or len(paths), 16):
                rows = slice(start, start + (images or 16))
                contents = tf.constant([Path(p).read_bytes() for p in paths[rows]])
                answers.append(by_bytes(image_bytes=contents, **_raw_metadata(records, rows)))
            return {name: np.concatenate([answer[name].numpy() for answer in answers])
                    for name in (io.PROBABILITIES, io.UNKNOWN_SCORE) if name in answers[0]}
        return call

    def facts(self, target: Path, runner: KerasRunner, paths: list, batch: dict,
              reference: dict) -> dict:
        """How far the other signatures are from the Keras model: serving_images on the first
        16 images; serving_image_only against the model with every record missing."""
        signatures, first = self._signatures(target), slice(0, 16)
        records = batch.get(io.RECORDS)
        from_images = signatures["serving_images"](
            images=tf.constant(batch[io.IMAGE][first]), **_raw_metadata(records, first))
        entry = {"images signature max abs difference": float(np.max(np.abs(
            from_images["probabilities"].numpy() - reference[io.PROBABILITIES][first])))}
        if records is not None:
            contents = [Path(p).read_bytes() for p in paths[first]]
            image_only = signatures["serving_image_only"](image_bytes=tf.constant(contents))
            entry["image-only signature max abs difference"] = float(np.max(np.abs(
                image_only["probabilities"].numpy()
                - runner({io.IMAGE: batch[io.IMAGE][first]})[io.PROBABILITIES])))
        self._served = (None, None)  # The check is over: its memory goes.
        return entry


FORMATS = (SavedModel(),)
