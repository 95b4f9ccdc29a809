"""Cross-validation folds of the training images: lesion-grouped and class-stratified
(`assign_folds`), or one group value per fold (`group_folds`, --fold_by); folds.csv, which
records them; and a fold made into class folders of links (`link_tree`) that a member trains on.
"""

import csv
import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from skin_keras.core import atomic
from skin_keras.core.errors import UserError
from skin_keras.core.layout import DataRoot
from skin_keras.data import folders, splits
from skin_keras.data.csv_table import read_csv
from skin_keras.data.groups import column_values

FOLDS_FILE = "folds.csv"  # In a cross-validation run folder: which fold validates each image.


@dataclasses.dataclass
class _Image:
    image: str
    lesion_id: str
    path: Path
    group: str = ""


def lesion_groups(train: folders.ImageFolder) -> tuple[np.ndarray, str]:
    """A group per training image: its lesion (split.csv beside the data folders) or, without
    one, the image itself; byte-identical files always share a group. And how it was done."""
    split_csv = DataRoot.of(train.root).split_csv
    lesion_of = {}
    if split_csv.is_file():
        rows = _read_whole_csv(split_csv, ("image", "lesion_id"))
        lesion_of = {row["image"].strip(): row["lesion_id"].strip() for row in rows}
    records = [_Image(Path(p).stem, lesion_of.get(Path(p).stem, ""), Path(p))
               for p in train.paths]
    splits.assign_groups(records, splits.find_duplicates([record.path for record in records]))
    with_lesion = sum(bool(record.lesion_id) for record in records)
    how = (f"lesion_id from {split_csv} ({with_lesion} of {len(records)} images have one)"
           if split_csv.is_file() else
           f"no {DataRoot.SPLIT} beside {train.root}: every image is its own group (images of one "
           "lesion may land in different folds)")
    return np.array([record.group for record in records]), how


def assign_folds(train: folders.ImageFolder, groups: np.ndarray, folds: int,
                 seed: int) -> np.ndarray:
    """Fold index (0..K-1) per image; UserError when a class cannot be in every fold."""
    for index, name in enumerate(train.class_names):
        count = len(np.unique(groups[train.labels == index]))
        if count < folds:
            raise UserError(f"--folds={folds}: class {name!r} has images of only {count} "
                            f"lesion(s), so some validation folds would have none of it; "
                            f"use --folds={max(count, 2)} or fewer" if count >= 2 else
                            f"--folds={folds}: class {name!r} has images of only {count} "
                            "lesion: it cannot be in both the training and the validation "
                            "part of a fold")
    fold_of = np.zeros(len(train.paths), int)
    for fold in range(folds):
        fold_of[splits.kfold_split(train.labels, groups, folds, fold, seed)] = fold
    for fold in range(folds):
        missing = [name for index, name in enumerate(train.class_names)
                   if not np.any((fold_of == fold) & (train.labels == index))]
        if missing:
            raise UserError(f"--folds={folds}: validation fold {fold + 1} has no image of "
                            f"{', '.join(missing)} (too few lesions of it to stratify); use "
                            "fewer folds")
    return fold_of


def group_folds(train: folders.ImageFolder, lesions: np.ndarray, column: str, folds: int
                ) -> tuple[np.ndarray, str]:
    """Leave one group out: fold i holds the images of the i-th value (sorted) of `column` in
    the split.csv beside the training folder; a lesion with images at two values goes whole
    with the value of most of them. UserError when the column or a value is missing, the
    values are not `folds`, or leaving a value out leaves a class with no training image."""
    values = column_values(train.paths, DataRoot.of(train.root).split_csv, column, "--fold_by")
    names = sorted(set(values))
    if len(names) != folds:
        raise UserError(f"--fold_by={column}: the training images have {len(names)} {column} "
                        f"values ({', '.join(names)}): use --folds={len(names)}")
    moved = 0  # A lesion photographed at two clinics stays whole, with most of its images.
    for lesion in set(lesions):
        mine = lesions == lesion
        found, counts = np.unique(values[mine], return_counts=True)
        if len(found) > 1:
            moved += int(np.sum(values[mine] != found[np.argmax(counts)]))
            values[mine] = found[np.argmax(counts)]
    fold_of = np.array([names.index(value) for value in values])
    for fold, name in enumerate(names):
        lost = [train.class_names[c] for c in range(train.num_classes)
                if not np.any((fold_of != fold) & (train.labels == c))]
        if lost:
            raise UserError(f"--fold_by={column}: without {name} no training image of "
                            f"{', '.join(lost)} is left")
    lacking = [f"fold {fold + 1} ({name}) has no validation image of " + ", ".join(
        train.class_names[c] for c in range(train.num_classes)
        if not np.any((fold_of == fold) & (train.labels == c)))
        for fold, name in enumerate(names)
        if len(set(train.labels[fold_of == fold])) < train.num_classes]
    return fold_of, f"leave one {column} out: " + ", ".join(
        f"fold {i + 1} = {name}" for i, name in enumerate(names)) + (
        f" ({moved} image(s) of lesions seen at two {column}s go with the lesion)"
        if moved else "") + "".join(
        f"; {line}: its balanced accuracy and best epoch are over the classes it has"
        for line in lacking)


def write_folds(path: Path, train: folders.ImageFolder, groups, fold_of: np.ndarray) -> None:
    """folds.csv: path, class, group and fold (1..K) of each training image."""
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "class", "group", "fold"])
            for image, label, group, fold in zip(train.paths, train.labels, groups, fold_of):
                writer.writerow([image, train.class_names[label], group, fold + 1])

    atomic.write_atomic(path, write)


def read_folds(path: Path) -> dict[str, int]:
    """Each image's fold (0..K-1) as folds.csv records it."""
    rows = _read_whole_csv(path, ("path", "fold"))
    try:
        return {row["path"]: int(row["fold"]) - 1 for row in rows}
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None


def _read_whole_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    """The rows of a CSV this project wrote; UserError when one is malformed (it was edited)."""
    rows, malformed = read_csv(path, required)
    if malformed:
        first = malformed[0]
        raise UserError(f"{path} line {first['line']}: {first['reason']}; write it again")
    return rows


def link_tree(root: Path, train: folders.ImageFolder, chosen: np.ndarray) -> None:
    """root/<class>/<file name> links to the chosen images (made again from scratch); a name
    that two sub-folders of a class share gets a _2, _3, ... suffix."""
    shutil.rmtree(root, ignore_errors=True)
    for index in np.flatnonzero(chosen):
        path = Path(train.paths[index])
        folder = root / train.class_names[train.labels[index]]
        folder.mkdir(parents=True, exist_ok=True)
        target, copy = folder / path.name, 1
        while target.is_symlink():
            copy += 1
            target = folder / f"{path.stem}_{copy}{path.suffix}"
        os.symlink(path.resolve(), target)
