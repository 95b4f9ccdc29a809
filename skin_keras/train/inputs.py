"""A run's data: the checked training and validation folders and, for a metadata run, the
other named inputs (the encoded patient metadata) with the encoding the model is built with.

`RunData.inputs` maps named inputs to their rows ({"metadata": vectors} or {} for an image-only
run); the model is built with `encoding` (None: no metadata input), and the datasets, the
feature cache and the checkpoints take the dicts as they are, without asking which it is.
"""

import dataclasses
import logging
from pathlib import Path

import numpy as np

from skin_keras.core.errors import UserError
from skin_keras.core.layout import DataRoot, RunFolder
from skin_keras.data import decode_check, folders, groups, patient_metadata, pipeline
from skin_keras.model.layers import PatientMetadata
from skin_keras.model.layers.metadata import row_blanker
from skin_keras.train.config import TrainConfig

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunData:
    """What a run trains and validates on.

    Attributes:
      train, val: The class folders, every file checked by a full decode.
      inputs: Per split ("train", "val"), the named inputs besides the image, one row per file.
      transforms: Per named input, what training does to each row (metadata row blanking).
      encoding: The metadata encoding the model is built with; None for an image-only run.
      metadata: train_params.json's "model" -> "metadata" entry (coverage, encoding); None.
    """

    train: folders.ImageFolder
    val: folders.ImageFolder
    inputs: dict = dataclasses.field(default_factory=lambda: {"train": {}, "val": {}})
    transforms: dict = dataclasses.field(default_factory=dict)
    encoding: PatientMetadata | None = None
    metadata: dict | None = None
    strata: np.ndarray | None = None  # --balance_by: each training image's group.


def scan_folders(config: TrainConfig, class_names=None) -> tuple[folders.ImageFolder, ...]:
    """The training and validation folders, every file checked by a full decode; logged.

    `class_names` (a resumed run's) must be exactly the training folder's classes.
    """
    if class_names is not None:
        found = folders.find_class_names(config.data_train)
        if tuple(found) != tuple(class_names):
            missing = sorted(set(class_names) - set(found))
            extra = sorted(set(found) - set(class_names))
            raise UserError(
                f"--resume: the class folders of {config.data_train} are not the run's classes "
                f"(class_indices.json): missing {', '.join(missing) or 'none'}; new "
                f"{', '.join(extra) or 'none'}; resuming would train on other labels")
    train = folders.scan_image_folder(config.data_train, class_names=class_names)
    # A member of a leave-one-group-out run validates on one clinic, which may lack a class.
    val = folders.scan_image_folder(config.data_val, class_names=train.class_names,
                                    allow_missing_classes=bool(config.fold_by))
    folders.refuse_overlap(train, val)
    train = decode_check.set_aside_undecodable(train, "train")
    val = decode_check.set_aside_undecodable(val, "val")
    _log.info(folders.describe(train, "train"))
    _log.info(folders.describe(val, "val"))
    return train, val


def read_run_data(config: TrainConfig, class_names=None) -> RunData:
    """The run's folders and, with --metadata, its metadata (the encoding learned from the
    training rows)."""
    train, val = scan_folders(config, class_names)
    strata = None if not config.balance_by else groups.column_values(
        train.paths, DataRoot.of(config.data_train).split_csv, config.balance_by,
        "--balance_by")
    path = patient_metadata.resolve(config.metadata, config.data_train)
    if path is None:
        if config.metadata.lower() == patient_metadata.AUTO:
            _log.info("metadata: auto, but no metadata.csv beside the data folders: image only")
        return RunData(train, val, strata=strata)
    table = patient_metadata.read_table(path)
    summary = patient_metadata.check_for_training(table, train.paths, val.paths)
    _log.info(patient_metadata.describe_coverage(summary))
    train_records, _ = table.lookup(train.paths)
    encoding = PatientMetadata.fit(train_records)
    val_records, _ = table.lookup(val.paths)
    transforms = {pipeline.METADATA: row_blanker(encoding, config.metadata_dropout, config.seed)
                  } if config.metadata_dropout else {}
    return RunData(
        train, val,
        inputs={"train": {pipeline.METADATA: encoding.encode_records(train_records)},
                "val": {pipeline.METADATA: encoding.encode_records(val_records)}},
        transforms=transforms, encoding=encoding,
        metadata={**summary, **encoding.describe(), "training dropout": config.metadata_dropout},
        strata=strata)


def check_vocabulary(params_path: Path, data: RunData) -> None:
    """UserError when the metadata CSV now gives other categories than the run recorded (the
    model's input would mean something else); before any model is built."""
    params = RunFolder(Path(params_path).parent).read_params()
    recorded = (params.get("model", {}).get("metadata") or {}).get("vocabulary")
    now = None if data.encoding is None else data.encoding.describe()["vocabulary"]
    if recorded != now:
        raise UserError(f"--resume: the metadata CSV now gives other categories than the run "
                        f"was started with ({recorded} then, {now} now); resume with the CSV "
                        "the run used")


def selected(inputs: dict, keep: np.ndarray) -> dict:
    """The rows `keep` of every named input."""
    return {name: values[keep] for name, values in inputs.items()}


def training_draw(config: TrainConfig, data: RunData, augmentation=None,
                  keep: np.ndarray | None = None) -> pipeline.Training:
    """How the run's training datasets draw and change examples (`augmentation`: a stage's,
    else the config's; `keep`: the training examples used, where some are left out)."""
    strata = data.strata if data.strata is None or keep is None else data.strata[keep]
    return pipeline.Training(seed=config.seed, sampling=config.sampling,
                             augmentation=augmentation or config.augmentation,
                             deterministic=config.deterministic, transforms=data.transforms,
                             strata=strata)
