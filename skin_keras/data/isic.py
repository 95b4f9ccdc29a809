"""The official ISIC 2019 download -> lesion-grouped train/val class folders, with an audit.

The download is `ISIC_2019_Training_Input/*.jpg`, a ground-truth CSV (`image` and one-hot
columns MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK) and a metadata CSV (`image`, `lesion_id`, ...).
Many lesions have several images, so the split keeps every lesion — and every set of
byte-identical files — on one side; it is stratified by class and deterministic for a seed.
Bad rows and bad files are reported by name and left out; they never stop the run.
"""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from skin_keras.core import atomic
from skin_keras.core.errors import UserError
from skin_keras.core.options import check_options, option
from skin_keras.core.layout import DataRoot
from skin_keras.data import audit_report, folders, groups, patient_metadata, placing
from skin_keras.data.csv_table import read_csv
from skin_keras.data.splits import (
    assign_groups,
    find_duplicates,
    holdout_split,
    kfold_split,
)

# Ground-truth CSV column -> readable class name (the class folder name). UNK has no images.
CLASS_NAMES = {
    "AK": "Actinic keratosis",
    "BCC": "Basal cell carcinoma",
    "BKL": "Benign keratosis",
    "DF": "Dermatofibroma",
    "MEL": "Melanoma",
    "NV": "Melanocytic nevus",
    "SCC": "Squamous cell carcinoma",
    "VASC": "Vascular lesion",
}
# The seed tutorial's naming, for users who compare with it: it called nevi "None of the above".
SEED_CLASS_NAMES = {**CLASS_NAMES, "NV": "None of the above"}
UNKNOWN = "UNK"
SPLITS = (DataRoot.TRAIN, DataRoot.VAL, "test")  # test/: the groups --holdout_group holds out.
FILES_JSON = "files.json"  # How the files were made (--link, --resize, --jpeg_quality).


@dataclasses.dataclass
class Record:
    """One usable image: its id, class code, group (lesion) and file."""

    image: str
    code: str
    lesion_id: str
    path: Path
    group: str = ""


def _is_positive(value: str) -> bool:
    try:
        return float(value) > 0.5
    except ValueError:
        return False


def label_rows(rows: list[dict]) -> tuple[dict[str, str], dict[str, list]]:
    """Image -> class code for rows with exactly one known label, and the rows left out."""
    labels, problems = {}, {"no_label": [], "several_labels": [], "unk": []}
    for row in rows:
        image = row["image"].strip()
        positive = [code for code in CLASS_NAMES if _is_positive(row[code])]
        if _is_positive(row.get(UNKNOWN, "0")):
            problems["unk"].append(image)
        elif not positive:
            problems["no_label"].append(image)
        elif len(positive) > 1:
            problems["several_labels"].append(image)
        else:
            labels[image] = positive[0]
    return labels, problems


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` does (`python -m skin_keras.prepare_isic --help`)."""

    images: str = option(None, "Folder of ISIC_*.jpg (ISIC_2019_Training_Input).",
                         required=True)
    ground_truth: str = option(None, "ISIC_2019_Training_GroundTruth.csv: image + one-hot class "
                               "columns.", required=True)
    out_dir: str = option("data", "Where train/, val/, split.csv and audit.json go.")
    metadata: str | None = option(None, "ISIC_2019_Training_Metadata.csv, for lesion_id. "
                                  "Without it every image is its own group and images of one "
                                  "lesion may land on both sides.")
    val_fraction: float = option(0.3, "Share of each class that goes to val.")
    folds: int = option(0, "K > 1: lesion-grouped stratified K-fold cross-validation instead of "
                        "a holdout.")
    fold: int = option(0, "Which fold (0..K-1) is val when --folds is set.")
    seed: int = option(0, "The split is deterministic for a given seed.", low=0,
                       high=2**32 - 1)
    link: str = option("auto", "auto: hard link, else symlink, else copy.",
                       choices=placing.LINK_MODES)
    resize: int = option(0, "N > 0: write JPEG copies whose longest side is N (faster training "
                         "input).")
    jpeg_quality: int = option(95, "JPEG quality of --resize copies.", low=1, high=100)
    seed_names: bool = option(False, "Name the NV folder 'None of the above', as the seed "
                              "tutorial did.")
    overwrite: bool = option(False, "Replace the train/ and val/ folders of a different earlier "
                             "split.")
    groups: str | None = option(None, "CSV of per-image groups keyed by image (e.g. "
                                "acquisition_centers.csv: image,center): its columns go into "
                                "split.csv; --holdout_group can name them.")
    holdout_group: tuple[str, ...] = option(
        (), "COLUMN=VALUE (repeatable; e.g. center=rosendahl, or a metadata column): every image "
        "of that group, and of its lesions, goes to test/ and none to train/ or val/.",
        repeated=True)

    def __post_init__(self):
        if self.folds:
            if self.folds < 2:
                raise UserError(f"--folds={self.folds}: need at least 2 folds (or 0 for a holdout)")
            if not 0 <= self.fold < self.folds:
                raise UserError(f"--fold={self.fold} is out of range [0, {self.folds - 1}]")
        elif not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val_fraction={self.val_fraction} must be between 0 and 1")
        if self.link not in placing.LINK_MODES:
            raise UserError(f"--link={self.link}: choose one of {', '.join(placing.LINK_MODES)}")
        if self.resize < 0 or (0 < self.resize < 32):
            raise UserError(f"--resize={self.resize}: give a longest side of at least 32 px, or 0")
        check_options(self)


def _list_image_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"images folder {folder} does not exist")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and folders.is_image_file(path) and not path.name.startswith("."):
            files.setdefault(path.stem, path)
    return files


def _check_existing_split(out_dir: Path, rows: list[dict], files: dict, overwrite: bool
                          ) -> bool:
    """True when out_dir already holds exactly this split, its files made the same way
    (`files`: --link, --resize, --jpeg_quality): a re-run only fills in files."""
    split_csv = DataRoot(out_dir).split_csv
    has_folders = any((out_dir / name).exists() for name in SPLITS)
    what = "a different split (or other data)"
    if split_csv.exists():
        if read_csv(split_csv, ("image",))[0] == rows:
            made = _read_files_settings(out_dir)
            if made is None or made == files:  # (None: written before files.json existed.)
                return True
            what = "files made another way (" + ", ".join(
                f"--{key}={made.get(key)}" for key in files if made.get(key) != files[key]) + ")"
    elif not has_folders:
        return False
    if not overwrite:
        raise UserError(f"{out_dir} already holds {what}; pass --overwrite to replace its "
                        "train/, val/ and test/ folders")
    for name in SPLITS:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    return False


def _read_files_settings(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / FILES_JSON).read_text())
    except (OSError, ValueError):
        return None


def prepare(config: PrepareConfig) -> dict:
    """Audits the download, splits it, fills out_dir/{train,val}/<class>/; returns the audit."""
    names = SEED_CLASS_NAMES if config.seed_names else CLASS_NAMES
    records, audit, patient_rows = _read_and_audit(config)
    values, columns = _group_values(config, [record.image for record in records], patient_rows,
                                    audit)
    test = np.zeros(len(records), bool)
    if config.holdout_group:
        test, unknown = groups.held_out([r.image for r in records], [r.group for r in records],
                                        values, config.holdout_group)
        # No value in a held-out column: it may be of the held-out group, so it goes nowhere.
        audit["no value for --holdout_group"] = sorted(
            record.image for record, left_out in zip(records, unknown) if left_out)
        records = [record for record, left_out in zip(records, unknown) if not left_out]
        test = test[~unknown]
    groups.check_training_classes([r.code for r in records], test, names, config.holdout_group)
    split_rows = _split(records, config, names, audit, test)
    for record, row in zip(records, split_rows):  # The --groups columns travel with the split.
        row.update({column: values[column].get(record.image, "") for column in columns})

    # --- Write --- (split.csv first: an interrupted run is finished by running it again)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"link": config.link, "resize": config.resize, "jpeg_quality": config.jpeg_quality}
    if not _check_existing_split(out_dir, split_rows, files, config.overwrite):
        _write_split_csv(DataRoot(out_dir).split_csv, split_rows)
        atomic.write_json_atomic(out_dir / FILES_JSON, files)
    if config.metadata:
        audit["metadata missing"] = _write_patient_metadata(
            out_dir / patient_metadata.CSV_NAME, [record.image for record in records],
            patient_rows)
    targets = [out_dir / row["split"] / row["class"] / (
        f"{record.image}.jpg" if config.resize else record.path.name)
        for record, row in zip(records, split_rows)]
    audit["files"] = placing.place_files([record.path for record in records], targets,
                                         config.link, config.resize, config.jpeg_quality)
    atomic.write_json_atomic(out_dir / "audit.json", audit)
    return audit


def _read_and_audit(config: PrepareConfig) -> tuple[list[Record], dict, dict]:
    """The usable records (labelled, on disk, readable; grouped by lesion and content), the
    audit of everything left out, and the metadata CSV's rows by image."""
    images_dir = Path(config.images)
    truth_rows, malformed = read_csv(config.ground_truth, ("image", *CLASS_NAMES))
    lesion_of, patient_rows = {}, {}
    if config.metadata:
        metadata_rows, bad_metadata = read_csv(config.metadata, ("image", "lesion_id"))
        lesion_of = {row["image"].strip(): row["lesion_id"].strip() for row in metadata_rows}
        patient_rows = {row["image"].strip(): row for row in metadata_rows}
        malformed += bad_metadata
    files = _list_image_files(images_dir)
    labels, problems = label_rows(truth_rows)
    listed = {row["image"].strip() for row in truth_rows}
    audit = {
        "source": {"images": str(images_dir), "ground_truth": str(config.ground_truth),
                   "metadata": config.metadata},
        "rows in csv": len(truth_rows) + sum(row["file"] == Path(config.ground_truth).name
                                             for row in malformed),
        "malformed rows": malformed,
        "missing on disk": sorted(image for image in labels if image not in files),
        "not in csv": sorted(image for image in files if image not in listed),
        "no label": sorted(problems["no_label"]),
        "several labels": sorted(problems["several_labels"]),
        "unk": sorted(problems["unk"]),
    }
    candidates = sorted(image for image in labels if image in files)
    inspected = folders.inspect_images([str(files[image]) for image in candidates])
    audit["unreadable"] = [{"image": image, "reason": reason}
                           for image, (_, reason) in zip(candidates, inspected) if reason]
    sizes = [size for size, reason in inspected if reason is None]
    records = [Record(image, labels[image], lesion_of.get(image, ""), files[image])
               for image, (_, reason) in zip(candidates, inspected) if reason is None]
    if not records:
        raise UserError(f"no usable labelled images: {len(truth_rows)} rows in "
                        f"{config.ground_truth}, {len(files)} image files in {images_dir}")
    duplicates = find_duplicates([record.path for record in records])
    assign_groups(records, duplicates)
    audit["duplicates"] = [[path.stem for path in group] for group in duplicates]
    audit["images without lesion id"] = sum(1 for record in records if not record.lesion_id)
    audit["image size"] = {"min": [min(w for w, _ in sizes), min(h for _, h in sizes)],
                           "max": [max(w for w, _ in sizes), max(h for _, h in sizes)]}
    return records, audit, patient_rows


def _group_values(config: PrepareConfig, images: list[str], patient_rows: dict, audit: dict
                  ) -> tuple[dict, tuple[str, ...]]:
    """{column: {image: value}} of the --groups CSV's columns and the metadata's, and the
    former (which split.csv carries: the metadata's are in metadata.csv)."""
    values = {column: {image: patient_metadata.normalize(row.get(column))
                       for image, row in patient_rows.items()}
              for column in patient_metadata.COLUMNS if patient_rows}
    if not config.groups:
        return values, ()
    table, columns = groups.read_groups(config.groups)
    audit["groups"] = {"file": str(config.groups), "columns": list(columns),
                       "images without a row": sum(image not in table for image in images),
                       "no value": {}, "spellings merged": {}}
    for column in columns:  # One spelling per group; "" (no value) is never a group.
        values[column], merged = groups.unify(
            {image: table[image][column] for image in images if image in table})
        audit["groups"]["no value"][column] = sum(not values[column].get(image)
                                                  for image in images)
        if merged:
            audit["groups"]["spellings merged"][column] = merged
    return values, columns


def _split(records: list[Record], config: PrepareConfig, names: dict, audit: dict,
           test: np.ndarray) -> list[dict]:
    """split.csv's rows (image, class, lesion_id, split: train, val, or test for the held-out
    groups `test`); the method and counts go to `audit`."""
    codes = sorted({record.code for record in records})
    kept = [record for record, held in zip(records, test) if not held]
    label_array = np.array([codes.index(record.code) for record in kept])
    lesions = np.array([record.group for record in kept])
    if config.folds:
        in_val = kfold_split(label_array, lesions, config.folds, config.fold, config.seed)
        audit["split"] = {"method": "lesion-grouped stratified k-fold", "folds": config.folds,
                          "fold": config.fold, "seed": config.seed}
    else:
        in_val = holdout_split(label_array, lesions, config.val_fraction, config.seed)
        audit["split"] = {"method": "lesion-grouped stratified holdout",
                          "val_fraction": config.val_fraction, "seed": config.seed}
    in_val = iter(in_val)
    split_rows = [{"image": record.image, "class": names[record.code],
                   "lesion_id": record.lesion_id,
                   "split": "test" if held else "val" if next(in_val) else "train"}
                  for record, held in zip(records, test)]
    if config.holdout_group:
        audit["split"]["held out"] = list(config.holdout_group)
    audit["counts"] = audit_report.count_table(split_rows, [names[code] for code in codes])
    return split_rows


def _write_patient_metadata(path: Path, images: list[str], rows: dict) -> dict:
    """Writes metadata.csv (image, age_approx, sex, anatom_site_general; cells as the ISIC CSV
    has them, empty where it has none) for `images`; returns the missing count per column."""
    table = [{"image": image, **{column: (rows.get(image, {}).get(column) or "").strip()
                                 for column in patient_metadata.COLUMNS}} for image in images]

    def write(tmp):
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["image", *patient_metadata.COLUMNS])
            writer.writeheader()
            writer.writerows(table)
    atomic.write_atomic(path, write)
    return {column: sum(patient_metadata.normalize(row[column]) == "" for row in table)
            for column in patient_metadata.COLUMNS}


def _write_split_csv(path: Path, rows: list[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else [
                "image", "class", "lesion_id", "split"])
            writer.writeheader()
            writer.writerows(rows)
    atomic.write_atomic(path, write)
