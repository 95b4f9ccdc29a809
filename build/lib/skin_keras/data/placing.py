"""Putting the images of a split where training reads them: hard links, else symlinks, else
copies, or smaller JPEG copies (prepare_isic --resize). Files already in place are kept, so an
interrupted run is finished by running it again."""

import collections
import os
import shutil
from pathlib import Path

from PIL import Image

from skin_keras.core.progress import progress

LINK_MODES = ("auto", "hardlink", "symlink", "copy")


def place_file(source: Path, target: Path, mode: str) -> str:
    """Puts `source` at `target` by hard link, symlink or copy; returns the way it was done.

    "auto" tries a hard link (no extra space, survives moving the source), then a symlink (other
    file system), then a copy.
    """
    attempts = ("hardlink", "symlink", "copy") if mode == "auto" else (mode,)
    for attempt in attempts:
        try:
            if attempt == "hardlink":
                os.link(source, target)
            elif attempt == "symlink":
                os.symlink(os.path.abspath(source), target)
            else:
                shutil.copy2(source, target)
            return attempt
        except OSError:
            if attempt == attempts[-1]:
                raise
    raise AssertionError("unreachable")


def write_resized(source: Path, target: Path, longest_side: int, quality: int) -> str:
    """Writes a JPEG whose longest side is at most `longest_side`; smaller images are linked."""
    with Image.open(source) as image:
        if max(image.size) <= longest_side:
            return place_file(source, target, "auto")
        image.draft("RGB", (longest_side, longest_side))  # JPEG DCT scaling: decodes faster.
        image = image.convert("RGB")
        image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
        tmp = target.with_name(f".{target.name}.tmp")
        image.save(tmp, "JPEG", quality=quality)
        os.replace(tmp, target)
    return "resized"


def place_files(sources: list[Path], targets: list[Path], link: str, resize: int,
                jpeg_quality: int) -> dict:
    """Every source at its target (`resize` > 0: a JPEG copy with that longest side); returns
    how many files were placed which way ("already there" for those kept)."""
    modes = collections.Counter()
    for source, target in progress(list(zip(sources, targets)), "placing files"):
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            modes["already there"] += 1
        elif resize:
            modes[write_resized(source, target, resize, jpeg_quality)] += 1
        else:
            modes[place_file(source, target, link)] += 1
    return dict(modes)
