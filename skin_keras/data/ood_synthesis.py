"""A folder of images that are none of the classes, made here (nothing downloads), to measure
the "unknown" answer with `evaluate.py --ood=FOLDER` (`python -m skin_keras.ood_images`).

One sub-folder per kind, `count` JPEGs each (seeded: the same folder every time):

    far (not dermoscopy)   noise (smoothed colour noise at random scales), stripes,
                           checkerboard, gradient (synthetic patterns); photos (random crops of
                           the sample photos that ship with scikit-learn and matplotlib)
    near (damaged lesions, from --lesions: images of the labelled set)
                           hue_shift (hue turned by 90-270 degrees: blue, green or purple skin),
                           corrupted (heavy noise, then blocks of 1/8 of the image)

evaluate.py reports the AUROC over all of them and per kind: the near kinds are the hard ones.
"""

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from skin_keras.core.errors import UserError
from skin_keras.core.options import check_options, option
from skin_keras.data import decode_check, folders, pipeline

_log = logging.getLogger(__name__)

FAR_KINDS = ("noise", "stripes", "checkerboard", "gradient", "photos")
NEAR_KINDS = ("hue_shift", "corrupted")


@dataclasses.dataclass(frozen=True)
class OodConfig:
    """What `python -m skin_keras.ood_images` makes (its flags)."""

    output: str = option(None, "Folder to write (one sub-folder per kind).", required=True,
                         path=True)
    lesions: str = option("", "Labelled class folders (e.g. data/val) to make the damaged-"
                          "lesion kinds from; empty = the synthetic kinds and photos only.",
                          path=True)
    count: int = option(40, "Images per kind.", low=1, high=100000)
    size: int = option(224, "Width and height of the images.", low=16, high=4096)
    seed: int = option(0, "Random seed.", low=0, high=2**32 - 1)

    def __post_init__(self):
        check_options(self)


def _noise(rng, size):
    scale = int(rng.integers(1, max(2, size // 8)))
    image = rng.uniform(0, 255, (size // scale + 1, size // scale + 1, 3)).astype(np.uint8)
    return Image.fromarray(image).resize((size, size), Image.BICUBIC).filter(
        ImageFilter.GaussianBlur(float(rng.uniform(0, 2))))


def _two_colours(rng):
    return rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)


def _stripes(rng, size):
    a, b = _two_colours(rng)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, size / 2)
    y, x = np.mgrid[0:size, 0:size]
    wave = (np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period) + 1) / 2
    return Image.fromarray((a * wave[..., None] + b * (1 - wave[..., None])).astype(np.uint8))


def _checkerboard(rng, size):
    a, b = _two_colours(rng)
    cell = int(rng.integers(4, max(5, size // 4)))
    y, x = np.mgrid[0:size, 0:size]
    board = ((x // cell + y // cell) % 2).astype(bool)[..., None]
    return Image.fromarray(np.where(board, a, b).astype(np.uint8))


def _gradient(rng, size):
    a, b = _two_colours(rng)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (x * np.cos(angle) + y * np.sin(angle))
    t = ((t - t.min()) / (np.ptp(t) or 1))[..., None]
    return Image.fromarray((a * t + b * (1 - t)).astype(np.uint8))


def sample_photos() -> list[Path]:
    """The photos that ship with scikit-learn (china, flower) and matplotlib (grace_hopper)."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    import sklearn.datasets  # pylint: disable=g-import-not-at-top

    found = [Path(sklearn.datasets.__file__).parent / "images" / name
             for name in ("china.jpg", "flower.jpg")]
    found.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [path for path in found if path.is_file()]


def _photo_crop(rng, size, photo: Image.Image):
    side = int(rng.uniform(0.3, 1.0) * min(photo.size))
    left = int(rng.integers(0, photo.width - side + 1))
    top = int(rng.integers(0, photo.height - side + 1))
    return photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


def _hue_shift(rng, size, lesion: Image.Image):
    hsv = np.asarray(lesion.convert("RGB").resize((size, size), Image.BILINEAR).convert("HSV"),
                     np.int32)
    shift = int(rng.uniform(90, 270) / 360 * 256)
    hsv[..., 0] = (hsv[..., 0] + shift) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.5 + 40, 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def _corrupted(rng, size, lesion: Image.Image):
    image = np.asarray(lesion.convert("RGB").resize((size, size), Image.BILINEAR), np.float64)
    image = np.clip(image + rng.normal(0, 80, image.shape), 0, 255).astype(np.uint8)
    block = max(size // 8, 1)
    small = Image.fromarray(image).resize((max(size // block, 1),) * 2, Image.BOX)
    return small.resize((size, size), Image.NEAREST)


def make_ood_folder(config: OodConfig) -> dict[str, int]:
    """Writes the kinds into config.output; returns images per kind. Lesion files training
    would leave out are left out here too (named); the folder appears whole or not at all."""
    output = Path(config.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"--output={output} is not an empty folder: give a new folder")
    rng = np.random.default_rng(config.seed)
    makers = {"noise": _noise, "stripes": _stripes, "checkerboard": _checkerboard,
              "gradient": _gradient}
    photos = [Image.open(path).convert("RGB") for path in sample_photos()]
    lesions = []
    if config.lesions:
        scanned = decode_check.set_aside_undecodable(
            folders.scan_image_folder(config.lesions, allow_missing_classes=True), "lesions")
        for path, reason in scanned.bad_files:
            _log.info(f"bad file left out: {path}: {reason}")
        order = rng.permutation(len(scanned.paths))[:config.count]
        lesions = [scanned.paths[i] for i in order]
        if not lesions:
            raise UserError(f"--lesions={config.lesions} holds no readable images")
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    counts = {}
    for kind in FAR_KINDS + (NEAR_KINDS if lesions else ()):
        (staging / kind).mkdir(parents=True, exist_ok=True)
        for index in range(config.count):
            if kind in makers:
                image = makers[kind](rng, config.size)
            elif kind == "photos":
                if not photos:
                    break
                image = _photo_crop(rng, config.size, photos[index % len(photos)])
            else:
                lesion = Image.fromarray(pipeline.read_rgb(lesions[index % len(lesions)]))
                image = (_hue_shift if kind == "hue_shift" else _corrupted)(
                    rng, config.size, lesion)
            image.save(staging / kind / f"{kind}_{index:04d}.jpg", format="JPEG", quality=92)
            counts[kind] = counts.get(kind, 0) + 1
    if output.exists():
        output.rmdir()  # Empty (checked above).
    os.replace(staging, output)
    return counts
