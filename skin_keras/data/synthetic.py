"""Synthetic "dermoscopy-like" class folders for the demo and the tests.

Each image is a skin-coloured background with a blurred blob whose colour, size and texture
depend on the class, at a random position and angle. It exercises the whole pipeline, not
medicine: nothing learnt on it means anything for real lesions.

    python -m skin_keras.data.synthetic data/demo  # data/demo/{train,val}/<class>/
"""

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from skin_keras.data.isic import CLASS_NAMES

DEMO_CLASSES = tuple(sorted(CLASS_NAMES.values()))


def lesion_image(label: int, num_classes: int, size: tuple[int, int],
                 rng: np.random.Generator) -> Image.Image:
    """One RGB image (width, height = size) of class `label`."""
    width, height = size
    skin = np.array([224, 172, 150]) + rng.normal(0, 12, 3)
    pixels = skin + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    hue = label / num_classes
    colour = tuple(int(c) for c in 255 * np.clip(
        0.5 + 0.45 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3]))), 0, 1))
    radius = min(width, height) * (0.18 + 0.16 * (label % 3) / 2 + rng.uniform(-0.03, 0.03))
    cx = width / 2 + rng.uniform(-0.15, 0.15) * width
    cy = height / 2 + rng.uniform(-0.15, 0.15) * height
    aspect = 1.0 + 0.6 * (label % 2) + rng.uniform(0, 0.2)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(
        [cx - radius * aspect, cy - radius, cx + radius * aspect, cy + radius], fill=255)
    mask = mask.rotate(rng.uniform(0, 360), center=(cx, cy)).filter(
        ImageFilter.GaussianBlur(radius=max(1.0, radius / 6)))
    blob = Image.new("RGB", size, colour)
    if label % 4 >= 2:  # A dotted texture for half of the classes.
        dots = ImageDraw.Draw(blob)
        for _ in range(int(radius)):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            dots.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(40, 30, 30))
    return Image.composite(blob, image, mask)


def write_class_folders(root: str | Path, images_per_class: int | Sequence[int],
                        class_names: Sequence[str] = DEMO_CLASSES, size: tuple[int, int] = (64, 48),
                        seed: int = 0, extension: str = ".jpg", prefix: str = "") -> list[Path]:
    """Writes root/<class>/<prefix><class index>_<n><extension> images; returns their paths."""
    rng = np.random.default_rng(seed)
    if isinstance(images_per_class, int):
        images_per_class = [images_per_class] * len(class_names)
    paths = []
    for label, (name, count) in enumerate(zip(class_names, images_per_class)):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            path = folder / f"{prefix}{label}_{index:04d}{extension}"
            lesion_image(label, len(class_names), size, rng).save(path)
            paths.append(path)
    return paths


def write_demo_dataset(out_dir: str | Path, train_per_class: int = 40, val_per_class: int = 15,
                       size: tuple[int, int] = (96, 72), seed: int = 0) -> Path:
    """The `make demo` dataset: out_dir/train and out_dir/val with the eight ISIC class names."""
    out_dir = Path(out_dir)
    write_class_folders(out_dir / "train", train_per_class, size=size, seed=seed)
    write_class_folders(out_dir / "val", val_per_class, size=size, seed=seed + 1)
    (out_dir / "README.txt").write_text(
        "Synthetic images made by skin_keras.data.synthetic: they show the pipeline, not "
        "medicine.\n")
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m skin_keras.data.synthetic OUT_DIR")
    print(f"synthetic demo dataset written to {write_demo_dataset(sys.argv[1])}")
