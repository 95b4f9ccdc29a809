"""Deterministic image shifts: how images from another clinic differ from the training images.

Each shift takes an RGB image (as read from its file, before any resizing) and returns the
image another dermatoscope, camera or photographer might have produced: another illuminant or
white balance, exposure, tone curve, the round field of view of a contact dermatoscope, another
zoom or framing, a softer camera, stronger compression, another orientation. They are written
in NumPy and PIL, independently of the TensorFlow training augmentation, and seeded per image,
so a robustness report is the same every time it runs.
"""

import io

import numpy as np
from PIL import Image

# Gains per channel (R, G, B) of the three colour casts.
CASTS = {"warm": (1.12, 1.0, 0.80), "cool": (0.85, 1.0, 1.15), "green": (0.90, 1.12, 0.90)}


def _as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), np.float32)


def _as_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


def _cast(gains):
    def shift(image, rng):
        del rng
        return _as_image(_as_array(image) * np.asarray(gains, np.float32))
    return shift


def brightness(image, rng):
    del rng
    return _as_image(_as_array(image) + 40.0)


def contrast(image, rng):
    del rng
    pixels = _as_array(image)
    return _as_image(pixels.mean() + 0.6 * (pixels - pixels.mean()))


def gamma(image, rng):
    del rng
    return _as_image(255.0 * (_as_array(image) / 255.0) ** 0.6)


def _outside_circle(image: Image.Image, radius: float, rng, softness: float = 0.02):
    """Darkens what lies outside a circle of `radius` (in units of the shorter side) around a
    centre jittered by up to 3% of the side."""
    pixels = _as_array(image)
    height, width = pixels.shape[:2]
    side = min(height, width)
    centre = np.array([height, width]) / 2 + rng.uniform(-0.03, 0.03, 2) * side
    rows, columns = np.mgrid[0:height, 0:width] + 0.5
    distance = np.hypot(rows - centre[0], columns - centre[1]) / side
    inside = np.clip((radius + softness - distance) / softness, 0.0, 1.0)[..., None]
    dark = rng.uniform(0.0, 15.0)
    return _as_image(pixels * inside + dark * (1.0 - inside))


def vignette(image, rng):
    """A round field of view inside the image (touching its shorter sides)."""
    return _outside_circle(image, 0.5 * rng.uniform(0.92, 1.0), rng)


def corners(image, rng):
    """Black corners only: a field of view a little smaller than the image's diagonal."""
    width, height = image.size
    diagonal = np.hypot(width, height) / min(width, height)
    return _outside_circle(image, 0.5 * diagonal * rng.uniform(0.82, 0.88), rng)


def zoom_in(image, rng):
    """The central 70% of each side: the lesion fills more of the frame."""
    del rng
    width, height = image.size
    left, top = round(0.15 * width), round(0.15 * height)
    return image.crop((left, top, width - left, height - top))


def zoom_out(image, rng):
    """The image shrunk to 70% of each side inside a border filled by reflection (more skin)."""
    del rng
    pixels = _as_array(image)
    height, width = pixels.shape[:2]
    small = np.asarray(image.convert("RGB").resize(
        (round(0.7 * width), round(0.7 * height)), Image.Resampling.BILINEAR), np.float32)
    pad_y, pad_x = height - small.shape[0], width - small.shape[1]
    return _as_image(np.pad(small, ((pad_y // 2, pad_y - pad_y // 2),
                                    (pad_x // 2, pad_x - pad_x // 2), (0, 0)), mode="reflect"))


def square_crop(image, rng):
    """A square around the centre, as many archives store lesions."""
    del rng
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def blur(image, rng):
    """A third of the resolution, scaled back up: a softer camera or an upscaled thumbnail."""
    del rng
    width, height = image.size
    small = image.convert("RGB").resize((max(1, width // 3), max(1, height // 3)),
                                        Image.Resampling.BILINEAR)
    return small.resize((width, height), Image.Resampling.BILINEAR)


def jpeg30(image, rng):
    del rng
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=30)
    return Image.open(io.BytesIO(buffer.getvalue()))


def rotation(image, rng):
    """30 degrees about the centre; the corners it uncovers take the border's median colour."""
    del rng
    pixels = _as_array(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0))
    return image.convert("RGB").rotate(30, resample=Image.Resampling.BILINEAR, fillcolor=fill)


SHIFTS = {
    **{name: _cast(gains) for name, gains in CASTS.items()},
    "brightness": brightness, "contrast": contrast, "gamma": gamma,
    "vignette": vignette, "corners": corners, "zoom_in": zoom_in, "zoom_out": zoom_out,
    "square_crop": square_crop, "blur": blur, "jpeg30": jpeg30, "rotation": rotation,
}
NAMES = tuple(SHIFTS)


def shifted(name: str, image: Image.Image, seed: int) -> Image.Image:
    """`image` under shift `name`, the same for the same seed."""
    return SHIFTS[name](image, np.random.default_rng(seed))
