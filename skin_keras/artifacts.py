"""Loading any model skin_keras writes, with what is needed to feed it and read its output.

A model path can be a run folder (weights/best.keras), a `.keras` file (its class names in its
own record, `model_info`; files written before the record existed use the class_indices.json of
their run folder), or what export.py wrote: a SavedModel folder (or its TF Serving base folder)
or a `.tflite` or `.onnx` file (class names inside it, or in the labels.txt beside it). The image
size comes from the model itself: nothing the user must repeat on the command line.
"""

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skin_keras import (calibration, model_info, models, open_set, run_folder,
                        tflite_metadata)
from skin_keras.errors import UserError, first_line
from skin_keras.litert import TFLiteRunner
from skin_keras.metadata_encoding import PatientMetadata
from skin_keras.open_set import UnknownRule
from skin_keras.patient_metadata import MISSING, as_arrays


@dataclasses.dataclass
class LoadedModel:
    """A model ready to predict, with what is needed to feed it and read its output.

    `model` is the Keras model, or None for an exported SavedModel or TFLite file (which can
    predict but not be explained with Grad-CAM). A metadata model (`takes_metadata`) is fed
    patient records beside the images: `encoding` turns them into its vector (a SavedModel
    encodes raw values itself, so it has none). A model calibrated with an "unknown" rule
    (`unknown`, open_set) answers an out-of-distribution score per image beside the
    probabilities: its `forward` then returns (probabilities, scores).
    """

    class_names: list[str]
    img_size: int
    source: Path
    model: keras.Model | None = None
    # (images [B, H, W, 3] in [0, 255], encoded metadata [B, size] or None) -> probabilities;
    # a SavedModel's takes records in place of encoded metadata.
    forward: object = None
    encoding: PatientMetadata | None = None
    takes_metadata: bool = False
    unknown: UnknownRule | None = None

    def __post_init__(self):
        if self.model is not None and self.encoding is None:
            self.encoding = models.metadata_encoding_of(self.model)
            self.takes_metadata = self.encoding is not None
        if self.model is not None and self.unknown is None:
            detector = open_set.detector_of(self.model)
            self.unknown = None if detector is None else detector.rule
        if self.forward is None:
            model = models.scored_model(self.model) or self.model
            # One traced graph for every batch (the batch dimension is left free).
            traced = tf.function(lambda images, metadata: model(
                models.model_inputs(model, images, metadata), training=False),
                reduce_retracing=True)
            self.forward = lambda images, metadata=None: traced(images, metadata)

    def predict_images(self, images, records=None) -> np.ndarray:
        """Probabilities of images; `records` (patient_metadata.Record per image, None: all
        missing) feed a metadata model and are ignored by others."""
        return self.predict_scored(images, records)[0]

    def predict_scored(self, images, records=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, out-of-distribution scores) of images; the scores are None for a
        model without an unknown rule."""
        if not self.takes_metadata:
            answer = self.forward(images, None)
        else:
            records = list(records) if records is not None else [MISSING] * len(images)
            if self.encoding is None:
                answer = self.forward(images, records)
            else:
                vectors = self.encoding.encode_records(records)
                if self.model is not None:  # A tensor: the traced graph takes any batch size.
                    vectors = tf.constant(vectors)
                answer = self.forward(images, vectors)
        if isinstance(answer, (tuple, list)):
            return np.asarray(answer[0]), np.asarray(answer[1])
        return np.asarray(answer), None

    def require_keras(self, what: str) -> keras.Model:
        if self.model is None:
            raise UserError(f"{what} needs the Keras model: pass the run folder or .keras file "
                            f"that {self.source} was exported from")
        return self.model

    def require_explainable(self) -> keras.Model:
        """The Keras model of one classifier, which Grad-CAM can explain (not an ensemble)."""
        model = self.require_keras("Grad-CAM (--explain)")
        if models.ensemble_members(model):
            raise UserError(f"{self.source} is an ensemble: Grad-CAM (--explain) explains one "
                            "model; pass one member (the run's fold_i folder)")
        return model

    @property
    def temperature(self) -> float | None:
        """A calibrated Keras model's temperature (None: as trained, or not a Keras model)."""
        return None if self.model is None else calibration.temperature_of(self.model)

    @property
    def info(self) -> model_info.ModelInfo:
        model = self.require_keras("A model record")
        return model_info.ModelInfo.of(model, self.class_names)


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
                        f"{first_line(error)}"
                        ) from error
    if "serving_images" not in served.signatures:
        raise UserError(f"{folder} is a SavedModel without the serving_images signature that "
                        "export.py writes")
    signature = served.signatures["serving_images"]
    inputs = signature.structured_input_signature[1]
    img_size = int(inputs["images"].shape[1])
    takes_metadata = "sex" in inputs

    def forward(images, records=None):
        feed = {"images": tf.convert_to_tensor(images, tf.float32)}
        if takes_metadata:
            ages, sexes, sites = as_arrays(records)
            feed.update(age_approx=tf.constant(np.nan_to_num(ages, nan=-1.0)),
                        sex=tf.constant(sexes.astype(str)),
                        anatom_site_general=tf.constant(sites.astype(str)))
        answer = signature(**feed)
        if unknown is not None:
            return answer["probabilities"].numpy(), answer["unknown_score"].numpy()
        return answer["probabilities"].numpy()

    unknown = read_unknown_rule(folder / "assets" / open_set.RULE_FILE)
    return LoadedModel(read_labels(folder / "assets" / "labels.txt"), img_size, folder,
                       forward=forward, takes_metadata=takes_metadata, unknown=unknown)


def read_unknown_rule(path: Path) -> UnknownRule | None:
    """The unknown rule an export wrote beside the model (None when there is none)."""
    if not path.is_file():
        return None
    try:
        return _unknown_rule(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise UserError(f"{path} does not describe an unknown rule ({type(error).__name__}: "
                        f"{error})") from None


def _unknown_rule(description: dict) -> UnknownRule | None:
    try:
        return (None if description.get("unknown") is None
                else UnknownRule.from_dict(description["unknown"]))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ValueError(f"no valid unknown rule: {type(error).__name__}: {error}") from None


def _load_tflite(path: Path) -> LoadedModel:
    """A .tflite file: its class names, unknown rule and metadata encoding from what export.py
    packed inside it (tflite_metadata), else from the labels.txt and metadata.json beside it;
    a plain converted file without either names its classes by index."""
    try:
        content = path.read_bytes()
        runner = TFLiteRunner(content)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"{path} is not a readable TFLite model: {error}") from error
    packed = tflite_metadata.read(content)
    return _exported_file(path, runner, int(runner.output["shape"][1]),
                          packed and packed["class_names"], packed and packed["description"],
                          f"the metadata packed in {path}" if packed else None)


def _load_onnx(path: Path) -> LoadedModel:
    """An .onnx file export.py wrote (class names and description in its metadata properties),
    or a plain converted one (labels.txt beside it, or classes named by index)."""
    from skin_keras.onnx_runtime import ONNXRunner  # pylint: disable=g-import-not-at-top

    try:
        runner = ONNXRunner(path.read_bytes())
        description = runner.description()
    except Exception as error:  # pylint: disable=broad-except
        # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) share no base class but Exception.
        reason = first_line(error)
        raise UserError(f"{path} is not a readable ONNX model: {reason}") from None
    return _exported_file(path, runner, runner.classes,
                          description and description.get("class_names"), description,
                          f"the metadata properties of {path}" if description else None)


def _exported_file(path: Path, runner, classes: int, class_names: list | None,
                   description: dict | None, where: str | None) -> LoadedModel:
    """A TFLite or ONNX file's model: class names and description as found in the file, else
    from the labels.txt and metadata.json beside it."""
    beside = path.parent / "metadata.json"
    if description is None and beside.is_file():
        try:
            description = json.loads(beside.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"{beside} is not readable ({type(error).__name__}: {error})"
                            ) from None
    where = where or beside
    if class_names is None and (path.parent / "labels.txt").is_file():
        class_names = read_labels(path.parent / "labels.txt")
    elif class_names is None:
        class_names = [f"class {i}" for i in range(classes)]
        print(f"{path}: no labels in the file nor a labels.txt beside it: the classes are named "
              "by their index")
    if len(class_names) != classes:
        raise UserError(f"{path} answers {classes} classes but its labels name "
                        f"{len(class_names)}: the files do not belong together")
    encoding = unknown = None
    try:
        if runner.metadata_size is not None:
            encoding = _metadata_encoding(description, runner.metadata_size)
        if runner.scores and description is not None:
            unknown = _unknown_rule(description)
    except ValueError as error:
        raise UserError(f"{path}: {where} {error}; keep the metadata.json export.py wrote "
                        "beside the file") from None
    return LoadedModel(list(class_names), runner.img_size, path, forward=runner,
                       encoding=encoding, takes_metadata=encoding is not None, unknown=unknown)


def _metadata_encoding(description: dict | None, size: int) -> PatientMetadata:
    """The metadata encoding of a metadata TFLite or ONNX file from its description
    (metadata.json)."""
    try:
        vocabulary = description["metadata input"]["vocabulary"]
        encoding = PatientMetadata(vocabulary["sex"], vocabulary["anatom_site_general"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"does not say how to encode the patient metadata the model takes "
                         f"({type(error).__name__}: {error})") from None
    if encoding.size != size:
        raise ValueError(f"describes a metadata vector of {encoding.size} values but the model "
                         f"takes {size}")
    return encoding


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
        raise UserError(f"{path} is not a model: give a run folder, a .keras, .tflite or .onnx "
                        "file or a SavedModel folder")
    return path


def _run_class_indices(keras_file: Path) -> Path | None:
    for folder in (keras_file.parent, keras_file.parent.parent):
        if (folder / run_folder.CLASS_INDICES).is_file():
            return folder / run_folder.CLASS_INDICES
    return None


def class_names_of(keras_file: Path) -> list[str]:
    """The class names a .keras file was trained on: its own record, checked against its run
    folder's class_indices.json when both exist; the latter alone for older files."""
    try:
        info = model_info.read_from(keras_file)
    except ValueError as error:
        raise UserError(str(error)) from None
    indices = _run_class_indices(keras_file)
    if info is None:
        if indices is None:
            raise UserError(f"no class_indices.json beside {keras_file} or in its run folder, "
                            "and the file has no record of its classes: the class names are "
                            "unknown")
        return run_folder.read_class_indices(indices)
    if indices is not None:
        listed = run_folder.read_class_indices(indices)
        if listed != list(info.class_names):
            raise UserError(f"{keras_file} was trained on the classes {list(info.class_names)} "
                            f"but {indices} lists {listed}: which file belongs to which run?")
    return list(info.class_names)


def load_model(model_path: str | Path) -> LoadedModel:
    """Loads a run folder, a .keras file, an exported SavedModel folder, a .tflite or an .onnx
    file."""
    path = Path(model_path)
    if path.is_dir() and (saved_model := find_saved_model(path)) is not None:
        return _load_saved_model(saved_model)
    if path.is_file() and path.suffix == ".tflite":
        return _load_tflite(path)
    if path.is_file() and path.suffix == ".onnx":
        return _load_onnx(path)
    keras_file = resolve_keras_file(path)
    class_names = class_names_of(keras_file)
    try:
        model = keras.models.load_model(keras_file, compile=False)
    except (ValueError, OSError, TypeError) as error:
        raise UserError(f"{keras_file} could not be loaded as a Keras model: "
                        f"{str(error).splitlines()[0]}") from error
    if model.output_shape[-1] != len(class_names):
        raise UserError(f"{keras_file} predicts {model.output_shape[-1]} classes but its class "
                        f"list names {len(class_names)}")
    return LoadedModel(class_names, models.image_size(model), keras_file, model=model)
