"""Patient metadata beside the image (ISIC 2019 task 2): the CSV, its records, its coverage.

A metadata CSV has an `image` column (the file name without extension, or the end of its path
when names repeat across folders: `MEL/1.jpg`) and any of `age_approx`,
`sex`, `anatom_site_general`. A missing value (an empty cell, "unknown", an age that is not a
number in [0, 120]) is a `Record` field left None / "". How records become the model's input
vector is `metadata_encoding`'s job (TensorFlow); this module imports none.
"""

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skin_keras.core.errors import UserError
from skin_keras.data import folders
from skin_keras.data.csv_table import read_csv

COLUMNS = ("age_approx", "sex", "anatom_site_general")
CATEGORICAL = COLUMNS[1:]
MAX_AGE = 120.0  # Ages above it (or below 0) are not believed: missing.
AGE_SCALE = 100.0
MISSING_TOKENS = ("", "nan", "unknown")
AUTO = "auto"
CSV_NAME = "metadata.csv"


def normalize(value) -> str:
    """A category as compared: stripped, lower case; "" for the missing tokens."""
    text = "" if value is None else str(value).strip().lower()
    return "" if text in MISSING_TOKENS else text


@dataclasses.dataclass(frozen=True)
class Record:
    """One image's raw metadata; None / "" where missing."""

    age_approx: float | None = None
    sex: str = ""
    anatom_site_general: str = ""

    @property
    def is_missing(self) -> bool:
        return self.age_approx is None and not self.sex and not self.anatom_site_general


MISSING = Record()


def record_of(values: dict | None) -> Record:
    """The Record of one image's metadata given as a dict (the Python API), read as a CSV row
    is: categories normalized, an age that is not a number in [0, 120] missing. UserError for
    a key that is not a metadata column (a typo would silently drop the value)."""
    if values is None:
        return MISSING
    unknown = sorted(set(values) - set(COLUMNS))
    if unknown:
        raise UserError(f"metadata: unknown key(s) {', '.join(unknown)} (the columns are "
                        f"{', '.join(COLUMNS)})")
    age = values.get("age_approx")
    age, _ = _parse_age("" if age is None else str(age))
    return Record(age, normalize(values.get("sex")), normalize(values.get("anatom_site_general")))


@dataclasses.dataclass(frozen=True)
class Table:
    """A metadata CSV read: image name (no extension) -> Record, and the cells not believed."""

    path: Path
    records: dict
    bad_ages: tuple = ()  # (line, image, value) of ages that are not numbers in [0, MAX_AGE]
    absent_columns: tuple = ()

    def keys(self, paths: Sequence[str | Path]) -> list[str | None]:
        """The row each image file matches (None: no row). A row's `image` is the file name
        without extension, or the file's path ending (`MEL/1.jpg`, `train/MEL/1`); the
        longest ending wins. UserError when one row would serve two files (same-named
        images in two folders): their metadata would be mixed."""
        keys, first_path = [], {}
        for path in paths:
            parts = Path(path).with_suffix("").parts if folders.is_image_file(path) else (
                Path(path).parts)
            key = next((k for k in ("/".join(parts[i:]) for i in range(len(parts)))
                        if k in self.records), None)
            keys.append(key)
            if key is not None and first_path.setdefault(key, path) != path:
                raise UserError(
                    f"{self.path}: the row {key!r} matches two images, {first_path[key]} and "
                    f"{path}; name each image by its folder and file (e.g. "
                    f"{'/'.join(Path(path).parts[-2:])}) in the image column")
        return keys

    def lookup(self, paths: Sequence[str | Path]) -> tuple[list[Record], np.ndarray]:
        """Records of image files (`keys`; MISSING where the CSV has no row) and whether each
        had a row."""
        found = [None if key is None else self.records[key] for key in self.keys(paths)]
        return [record or MISSING for record in found], np.array([r is not None for r in found])


def _parse_age(text: str) -> tuple[float | None, bool]:
    """(age or None, whether the cell was believed)."""
    if normalize(text) == "":
        return None, True
    try:
        age = float(text)
    except ValueError:
        return None, False
    if not math.isfinite(age) or not 0 <= age <= MAX_AGE:
        return None, False
    return age, True


def read_table(path: str | Path) -> Table:
    """Reads a metadata CSV keyed by `image` (file name, extension optional).

    UserError (one line) for a missing file, a file without an `image` column or without any
    metadata column, and for an image named twice; ages that are not numbers in [0, 120] are
    kept as missing and listed in `bad_ages` (training refuses them, prediction counts them).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--metadata={path} is a folder; give the CSV file")
    rows, malformed = read_csv(path, ("image",))
    if malformed:
        first = malformed[0]
        raise UserError(f"{path}: {len(malformed)} malformed row(s), the first on line "
                        f"{first['line']}: {first['reason']}")
    header = set(rows[0]) if rows else set()
    absent = tuple(column for column in COLUMNS if column not in header)
    if rows and len(absent) == len(COLUMNS):
        raise UserError(f"{path} has none of the metadata columns {', '.join(COLUMNS)} "
                        f"(found: {', '.join(sorted(header))})")
    records, lines, bad_ages = {}, {}, []
    for line, row in enumerate(rows, start=2):
        image = row["image"].strip().replace("\\", "/")
        stem = str(Path(image).with_suffix("").as_posix()) if folders.is_image_file(image) else (
            Path(image).as_posix())
        if stem in lines:
            raise UserError(f"{path}: image {stem} has two rows (lines {lines[stem]} and {line});"
                            " keep one")
        lines[stem] = line
        age, believed = _parse_age(row.get("age_approx") or "")
        if not believed:
            bad_ages.append((line, stem, row["age_approx"].strip()))
        records[stem] = Record(age, normalize(row.get("sex")),
                               normalize(row.get("anatom_site_general")))
    return Table(path, records, tuple(bad_ages), absent)


def resolve(metadata: str, data_train: str | Path) -> Path | None:
    """The CSV `--metadata` names: none -> None; auto -> metadata.csv beside the data folders
    (the parent of --data_train, where prepare_isic writes it) when it exists."""
    if metadata.lower() == "none":
        return None
    if metadata.lower() == AUTO:
        candidate = Path(data_train).parent / CSV_NAME
        return candidate if candidate.is_file() else None
    return Path(metadata)


def missing_counts(records: Sequence[Record]) -> dict:
    """Per column, how many of `records` lack a value."""
    return {"age_approx": sum(r.age_approx is None for r in records),
            "sex": sum(not r.sex for r in records),
            "anatom_site_general": sum(not r.anatom_site_general for r in records)}


def as_arrays(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ages float32 with NaN for missing, sexes, sites) of `records`, for `encode`."""
    ages = np.array([np.nan if r.age_approx is None else r.age_approx for r in records],
                    np.float32)
    return (ages, np.array([r.sex for r in records], dtype=object),
            np.array([r.anatom_site_general for r in records], dtype=object))


def check_for_training(table: Table, train_paths: Sequence, val_paths: Sequence) -> dict:
    """The coverage summary of a training run's metadata; UserError for ages not believed or a
    CSV that covers none of the training images."""
    if table.bad_ages:
        line, image, value = table.bad_ages[0]
        raise UserError(f"{table.path}: {len(table.bad_ages)} age_approx value(s) that are not "
                        f"a number in [0, {MAX_AGE:g}], the first {value!r} for {image} (line "
                        f"{line}); leave the cell empty where the age is unknown")
    summary = {"file": str(table.path)}
    for split, paths in (("train", train_paths), ("val", val_paths)):
        records, found = table.lookup(paths)
        summary[split] = {"images": len(paths), "with a row": int(found.sum()),
                          "missing": missing_counts(records)}
    if summary["train"]["with a row"] == 0:
        raise UserError(f"{table.path} has no row for any of the {len(train_paths)} training "
                        "images (rows are matched by the file name without extension)")
    if table.absent_columns:
        summary["absent columns"] = list(table.absent_columns)
    return summary


def describe_coverage(summary: dict) -> str:
    lines = [f"metadata: {summary['file']}"]
    for split in ("train", "val"):
        part = summary[split]
        missing = ", ".join(f"{column} {count}" for column, count in part["missing"].items())
        lines.append(f"  {split}: {part['with a row']}/{part['images']} images have a row; "
                     f"missing {missing}")
    if summary.get("absent columns"):
        absent = ", ".join(summary["absent columns"])
        lines.append(f"  columns absent (missing everywhere): {absent}")
    return "\n".join(lines)


def for_prediction(metadata: str, paths: Sequence) -> tuple[list[Record], np.ndarray, str]:
    """Records for prediction ("none": all missing), whether each image had a row, and a
    line saying what was used (ages not believed counted as missing)."""
    if metadata.lower() == "none":
        return [MISSING] * len(paths), np.zeros(len(paths), bool), ""
    table = read_table(metadata)
    records, found = table.lookup(paths)
    note = (f"metadata {table.path}: {int(found.sum())} of {len(paths)} images have a row, "
            f"the others run as missing")
    bad = {image for _, image, _ in table.bad_ages}
    used_bad = sum(1 for key in table.keys(paths) if key in bad)
    if used_bad:
        note += f"; {used_bad} age(s) not a number in [0, {MAX_AGE:g}] run as missing"
    return records, found, note
