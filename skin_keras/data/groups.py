"""Per-image groups: the clinic that took an image, a study's site, the patient's sex, age or
body site. Read from a CSV keyed by `image` (prepare_isic --groups; `acquisition_centers.csv`
has `image,center`), carried into split.csv, and used to hold whole groups out as a test set
(--holdout_group=center=rosendahl): an external validation on another clinic.
"""

import collections
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skin_keras.core.errors import UserError
from skin_keras.data.csv_table import read_csv


def read_groups(path: str | Path) -> tuple[dict[str, dict[str, str]], tuple[str, ...]]:
    """({image: {column: value}}, the group columns) of a CSV keyed by `image`; UserError (one
    line) for a CSV without `image` or any other column, a malformed row, an image twice."""
    rows, malformed = read_csv(path, ("image",))
    if malformed:
        first = malformed[0]
        raise UserError(f"{path} line {first['line']}: {first['reason']}")
    columns = tuple(column for column in (rows[0] if rows else {}) if column != "image")
    if not columns:
        raise UserError(f"{path} has no group column besides image (e.g. image,center)")
    groups = {}
    for line, row in enumerate(rows, start=2):
        image = Path(row["image"].strip()).stem
        if image in groups:
            raise UserError(f"{path}: image {image} has two rows (the second on line {line})")
        groups[image] = {column: (row[column] or "").strip() for column in columns}
    return groups, columns


def group_key(value) -> str:
    """A group value as compared: Unicode NFKC, case-folded, runs of white space as one space,
    stripped. "" is no value: never a group of its own."""
    text = unicodedata.normalize("NFKC", "" if value is None else str(value))
    return " ".join(text.casefold().split())


def unify(values: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """One spelling per group: {image: value} with the values that share a `group_key` replaced
    by their most common spelling (the first in sorted order on a tie), "" for no value; and
    {spelling kept: [the other spellings]} for every group written more than one way."""
    spellings = collections.defaultdict(collections.Counter)
    for value in values.values():
        if group_key(value):
            spellings[group_key(value)][value.strip()] += 1
    kept = {key: min(counts, key=lambda spelling: (-counts[spelling], spelling))
            for key, counts in spellings.items()}
    merged = {kept[key]: sorted(set(counts) - {kept[key]})
              for key, counts in spellings.items() if len(counts) > 1}
    return {image: kept.get(group_key(value), "") for image, value in values.items()}, merged


def parse_holdout(spec: str) -> tuple[str, str]:
    """"center=rosendahl" -> ("center", "rosendahl")."""
    column, equals, value = spec.partition("=")
    if not equals or not column.strip() or not value.strip():
        raise UserError(f"--holdout_group={spec}: give COLUMN=VALUE, e.g. center=rosendahl")
    return column.strip(), value.strip()


def held_out(images: Sequence[str], record_groups: Sequence[str], values: dict,
             holdouts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(test, unknown): the images whose group column has a held-out value, with every image of
    the same lesion (`record_groups`: lesion and duplicate groups); and the others that have no
    value in a held-out column, which could be of the held-out group and so belong nowhere.

    `values` maps a column to {image: value} (the --groups columns, and the metadata's); values
    are compared by `group_key`. A column that is not there, or a value that no image has, is a
    UserError naming the values there are."""
    chosen = np.zeros(len(images), bool)
    unknown = np.zeros(len(images), bool)
    for spec in holdouts:
        column, value = parse_holdout(spec)
        if column not in values:
            raise UserError(f"--holdout_group={spec}: no column {column!r} (there are: "
                            f"{', '.join(sorted(values)) or 'none; give --groups=CSV'})")
        keys = [group_key(values[column].get(image, "")) for image in images]
        matches = np.array([key == group_key(value) for key in keys])
        unknown |= np.array([not key for key in keys])
        if not matches.any():
            found = sorted({v for v in (values[column].get(i, "") for i in images) if v})
            shown = ", ".join(found[:12]) + (" ..." if len(found) > 12 else "")
            raise UserError(f"--holdout_group={spec} matches no image ({column} values: "
                            f"{shown or 'none'})")
        chosen |= matches
    lesions = set(np.asarray(record_groups)[chosen])
    test = chosen | np.isin(np.asarray(record_groups), list(lesions))
    return test, unknown & ~test


def check_training_classes(codes: Sequence[str], test: np.ndarray, names: dict,
                           holdouts: Sequence[str]) -> None:
    """UserError when holding the groups out leaves a class with no image to train on."""
    codes = np.asarray(codes)
    lost = sorted(names[code] for code in set(codes) if np.all(test[codes == code]))
    if lost:
        raise UserError(f"--holdout_group={','.join(holdouts)} holds out every image of "
                        f"{', '.join(lost)}: nothing would be left to train on")


def column_values(paths: Sequence, split_csv: Path, column: str, flag: str) -> np.ndarray:
    """The `column` value of each image (by file name without extension) in `split_csv`;
    UserError naming `flag` when the file, the column or an image's value is missing."""
    if not split_csv.is_file():
        raise UserError(f"{flag}={column}: no {split_csv.name} at {split_csv.parent} "
                        "(prepare_isic --groups writes one)")
    rows, malformed = read_csv(split_csv, ("image",))
    if malformed:
        raise UserError(f"{split_csv} line {malformed[0]['line']}: {malformed[0]['reason']}")
    if rows and column not in rows[0]:
        raise UserError(f"{flag}={column}: {split_csv} has no column {column!r} (it has: "
                        f"{', '.join(c for c in rows[0] if c != 'image')})")
    value_of, _ = unify({row["image"].strip(): row[column] or "" for row in rows})
    values = np.array([value_of.get(Path(path).stem, "") for path in paths], dtype=object)
    if not all(values):
        missing = next(path for path, value in zip(paths, values) if not value)
        raise UserError(f"{flag}={column}: {missing} has no {column} in {split_csv}")
    return values
