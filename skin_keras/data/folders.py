"""Class-folder datasets: discover classes, list images, and set bad files aside before training.

A dataset is a folder with one sub-folder per class (``data/train/Melanoma/*.jpg``). Classes are
the sub-folder names, sorted, so the class order never depends on the file system. Every listed
file gets a cheap check (header and end-of-file marker, no full decode) so that empty,
truncated or non-image files are reported by name once instead of crashing training later.
"""

import concurrent.futures
import dataclasses
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from skin_keras.core.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
# Formats TensorFlow's decode_image reads, as PIL names them. BMP in 1-bit mode is the one
# variant of these that tf.io.decode_image rejects.
_DECODABLE_FORMATS = frozenset({"JPEG", "PNG", "BMP"})
_TAIL_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The images of one class-folder dataset, in a fixed order.

    Attributes:
      root: The dataset folder.
      class_names: Sorted class (sub-folder) names; the index in this tuple is the label.
      paths: Readable image files, sorted by class then path.
      labels: Integer label of each path.
      skipped: Files without an image extension (not counted as images).
      bad_files: (path, reason) of files with an image extension that cannot be decoded, and
        of second paths to a file already listed (a link), which count once.
      decode_warnings: (path, warning) of files that decode, but with the decoder's repairs
        (`decode_check`); they are kept.
    """

    root: Path
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray
    skipped: tuple[str, ...] = ()
    bad_files: tuple[tuple[str, str], ...] = ()
    decode_warnings: tuple[tuple[str, str], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def inspect_image(path: str | Path) -> tuple[tuple[int, int] | None, str | None]:
    """Returns ((width, height), None) for a decodable image, or (None, why it is not).

    Reads the header and the last kilobyte only: this catches empty, non-image and truncated
    files (the usual corruption: an interrupted download or copy) at a fraction of the cost of
    decoding every image.
    """
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):  # A FIFO or a device (a link to /dev/zero).
            return None, "not a regular file (a pipe or a device)"
        with open(path, "rb") as file:
            return _inspect(file, status.st_size)
    except OSError as error:
        return None, f"not a readable image ({error.__class__.__name__})"


def inspect_bytes(contents: bytes) -> tuple[tuple[int, int] | None, str | None]:
    """`inspect_image` of a file's contents (an upload)."""
    return _inspect(io.BytesIO(contents), len(contents))


def _inspect(file, size: int) -> tuple[tuple[int, int] | None, str | None]:
    if size == 0:
        return None, "empty file"
    try:
        with Image.open(file) as image:
            image_format, mode, dimensions = image.format, image.mode, image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return None, f"not a readable image ({error.__class__.__name__})"
    if image_format == "MPO":  # A JPEG with more pictures after it (cameras, phones' HDR):
        image_format = "JPEG"  # decoders read the first, as they do any JPEG.
    if image_format not in _DECODABLE_FORMATS:
        return None, f"unsupported image format {image_format}"
    if image_format == "BMP" and mode in ("1", "P"):
        # TensorFlow's BMP decoder ignores a colour table: it would read palette indices as
        # grey levels. (PNG palettes decode correctly.)
        return None, (f"unsupported {'1-bit' if mode == '1' else '8-bit palette'} BMP (save it "
                      "as PNG or 24-bit BMP)")
    file.seek(max(0, size - _TAIL_BYTES))
    tail = file.read()
    if image_format == "JPEG" and b"\xff\xd9" not in tail:
        return None, "truncated JPEG (no end-of-image marker)"
    if image_format == "PNG" and b"IEND" not in tail:
        return None, "truncated PNG (no IEND chunk)"
    return dimensions, None


def inspect_images(paths: list[str], max_workers: int = 8) -> list[tuple]:
    """`inspect_image` over many files; threads because the work is mostly file I/O."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(inspect_image, paths, chunksize=64))


def walk_files(folder: str | Path, dataset_root: str | Path | None = None,
               skip: str | Path | None = None) -> list[str]:
    """Every non-hidden file below `folder`, sorted. Links to folders are followed, but a real
    folder is entered once and never a link back to `folder` or above it (a loop); with
    `dataset_root`, never a link into another part of that dataset (another class); never the
    folder `skip` (predict.py's output inside its source)."""
    top = os.path.realpath(folder)
    root = os.path.realpath(dataset_root) if dataset_root is not None else None
    skipped = os.path.realpath(skip) if skip is not None else None
    files, seen = [], set()

    def enter(dirpath, name):
        target = os.path.realpath(os.path.join(dirpath, name))
        if name.startswith(".") or target in seen or is_within(top, target) or \
                target == skipped:
            return False
        return root is None or not is_within(target, root) or is_within(target, top)

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(name for name in dirnames if enter(dirpath, name))
        files.extend(os.path.join(dirpath, name) for name in sorted(filenames)
                     if not name.startswith("."))
    return files


def is_within(path: str, folder: str) -> bool:
    """Whether real path `path` is `folder` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def file_identity(path: str | Path) -> tuple[int, int]:
    """What makes two paths the same file: its device and inode (a symbolic or hard link, a
    folder reached twice). Paths that differ can name one file; a path cannot name two."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def first_of_each_file(paths: Sequence[str]) -> tuple[list[int], list[tuple[str, str]]]:
    """Indices of the first path to each file (`file_identity`), and (path, why) for the
    later ones."""
    first, keep, repeats = {}, [], []
    for index, path in enumerate(paths):
        identity = file_identity(path)
        if identity in first:
            repeats.append((path, f"the same file as {first[identity]} (counted once)"))
        else:
            first[identity] = path
            keep.append(index)
    return keep, repeats


def _one_label_per_file(paths: list[str], labels: list[int], class_names: Sequence[str]
                        ) -> tuple[list[int], list[tuple[str, str]]]:
    """`first_of_each_file`, except that a file reached from two class folders (a hard or
    symbolic link) has two labels: every path to it is left out and named."""
    identities = {path: file_identity(path) for path in paths}  # One stat per file.
    classes_of = {}
    for path, label in zip(paths, labels):
        classes_of.setdefault(identities[path], {}).setdefault(label, path)
    keep, repeats = first_of_each_file(paths)
    two_labels = {identity: found for identity, found in classes_of.items() if len(found) > 1}
    if not two_labels:
        return keep, repeats
    kept, left_out = [], [(p, r) for p, r in repeats if identities[p] not in two_labels]
    for index, path in enumerate(paths):
        found = two_labels.get(identities[path])
        if found is None:
            if index in keep:
                kept.append(index)
            continue
        others = [f"{other} ({class_names[label]})" for label, other in found.items()
                  if other != path]
        left_out.append((path, f"the same file as {', '.join(others)}: one image under two "
                               "labels (a link)"))
    return kept, left_out


def overlap(first: "ImageFolder", second: "ImageFolder") -> list[tuple[str, str]]:
    """(path in `first`, path in `second`) of every file that both list (`file_identity`)."""
    second_paths = {file_identity(path): path for path in second.paths}
    return [(path, second_paths[identity]) for path in first.paths
            if (identity := file_identity(path)) in second_paths]


def refuse_overlap(train: "ImageFolder", val: "ImageFolder") -> None:
    """UserError when validation images are training images too: the best epoch would be
    chosen on, and reported for, images the model trained on."""
    shared = overlap(train, val)
    if shared:
        path, other = shared[0]
        raise UserError(f"{len(shared)} of the {len(val.paths)} validation image(s) in "
                        f"{val.root} are training images too (the same file: e.g. {other} is "
                        f"{path}); validate on images the model does not train on")


def find_class_names(root: str | Path) -> tuple[str, ...]:
    """Sorted class-folder names under `root`; one-line UserError when there are none."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"dataset path {root} is not a folder")
    names = sorted(entry.name for entry in root.iterdir()
                   if entry.is_dir() and not entry.name.startswith("."))
    unwritable = [name for name in names if not name.isprintable()]
    if unwritable:
        # labels.txt holds a name per line: a line break in one would shift every label.
        raise UserError(f"class folder name {unwritable[0]!r} in {root} holds a line break or "
                        "another control character: rename the folder")
    if not names:
        raise UserError(f"dataset folder {root} has no class sub-folders "
                        f"(expected one folder per class, e.g. {root}/Melanoma/*.jpg)")
    return tuple(names)


def scan_image_folder(root: str | Path, class_names: Sequence[str] | None = None,
                      check: bool = True, allow_missing_classes: bool = False) -> ImageFolder:
    """Lists the images of a class-folder dataset.

    Args:
      root: Folder with one sub-folder per class. Images may sit in nested folders inside a class.
      class_names: Expected classes (e.g. the training set's); a different set is a UserError.
        Labels are indices into this list.
      check: Whether to set aside files that fail `inspect_image`.
      allow_missing_classes: Accept a subset of `class_names` (a test set without a rare class).

    Raises:
      UserError: missing folder, no class folders, a class without images (allowed with
        `allow_missing_classes`), or class names that differ from `class_names`.
    """
    root = Path(root)
    found = find_class_names(root)
    if class_names is None:
        class_names = found
    class_names = tuple(class_names)
    mismatch = (set(found) - set(class_names)) if allow_missing_classes else (
        set(found) != set(class_names))
    if mismatch:
        raise UserError(describe_class_mismatch(class_names, found, root, allow_missing_classes))

    paths, labels, skipped, bad_files = [], [], [], []
    real_root = os.path.realpath(root)
    for name in found:
        label, real_class = class_names.index(name), os.path.realpath(root / name)
        for path in walk_files(root / name, dataset_root=root):
            real = os.path.realpath(path)
            if is_within(real, real_root) and not is_within(real, real_class):
                bad_files.append((path, f"a link to {real}, in another class folder"))
            elif is_image_file(path):
                paths.append(path)
                labels.append(label)
            else:
                skipped.append(path)
    # A file reached twice through links counts once; from two classes, never.
    keep, repeats = _one_label_per_file(paths, labels, class_names)
    paths, labels, bad_files = [paths[i] for i in keep], [labels[i] for i in keep], (
        bad_files + repeats)

    if check and paths:
        reasons = [reason for _, reason in inspect_images(paths)]
        bad_files += [(p, r) for p, r in zip(paths, reasons) if r is not None]
        keep = [r is None for r in reasons]
        paths = [p for p, k in zip(paths, keep) if k]
        labels = [l for l, k in zip(labels, keep) if k]

    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [name for name in found if counts[class_names.index(name)] == 0]
    if empty and not allow_missing_classes:
        raise UserError(f"class folder(s) without readable images in {root}: {', '.join(empty)}")
    return ImageFolder(root=root, class_names=class_names, paths=tuple(paths), labels=labels,
                       skipped=tuple(skipped), bad_files=tuple(bad_files))


def describe_class_mismatch(expected: tuple[str, ...], found: tuple[str, ...], root: Path,
                            allow_missing_classes: bool = False) -> str:
    missing = [] if allow_missing_classes else sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected {', '.join(extra)}")
    return f"classes in {root} differ from the model's classes: {'; '.join(parts)}"


def sample_indices(folder: ImageFolder, count: int, seed: int = 0) -> list[int]:
    """Up to `count` indices of the folder's images drawn uniformly at random (so classes in
    about their shares), in file order, fixed for a seed."""
    order = np.random.default_rng(seed).permutation(len(folder.paths))
    return sorted(order[:count].tolist())


def describe(folder: ImageFolder, title: str) -> str:
    """A short human summary: images per class, skipped and bad files (bad ones by name)."""
    counts = folder.class_counts()
    width = max(len(name) for name in folder.class_names)
    lines = [f"{title}: {len(folder.paths)} images in {folder.num_classes} classes ({folder.root})"]
    lines += [f"  {name:<{width}}  {count:>6}" for name, count in zip(folder.class_names, counts)]
    if folder.skipped:
        lines.append(f"  skipped {len(folder.skipped)} non-image file(s)")
    for path, reason in folder.bad_files:
        lines.append(f"  bad file left out: {path}: {reason}")
    for path, warning in folder.decode_warnings:
        lines.append(f"  decoded with a warning, kept: {path}: {warning}")
    return "\n".join(lines)
