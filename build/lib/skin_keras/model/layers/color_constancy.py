"""Colour constancy as the model's first layer: every image is seen as if under neutral light.

Dermoscopy images differ in illuminant and white balance from one dermatoscope and camera to the
next (Barata et al. 2015). Shades of Gray (Finlayson & Trezzi 2004) estimates each image's
illuminant per channel as the Minkowski p-norm mean of its values, e_c = mean(I_c^p)^(1/p), and
scales each channel so that the estimate becomes grey: I'_c = I_c · rms(e) / e_c, where rms(e)
keeps the overall brightness. p = 1 is Gray World; p = 6 is what the ISIC 2019 winner used
(Gessert et al. 2020). As a layer inside the model, it runs identically in training, the
feature cache, prediction, Grad-CAM, the SavedModel and every TFLite file.
"""

import keras
import numpy as np
from keras import ops

from skin_keras.model.spec import COLOR_CONSTANCY as METHODS
from skin_keras.model.spec import PACKAGE

# Channel estimates below one grey level (of 255) are treated as one: a channel that is zero
# everywhere (an all-black image, a pure red one) gets a finite gain, never a division by zero.
_FLOOR = 1.0 / 255.0


def power_of(method: str, power: float) -> float:
    return 1.0 if method == "gray_world" else float(power)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ColorConstancy(keras.layers.Layer):
    """[B, H, W, 3] RGB in [0, 255] -> the same images with each channel rescaled so that the
    image's illuminant estimate is neutral grey; values clipped to [0, 255]. Always computes in
    float32 (the p-th powers need its range), whatever the mixed-precision policy."""

    def __init__(self, method: str, power: float, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if method not in METHODS[1:]:
            raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS[1:])}")
        if not power > 0:
            raise ValueError(f"power={power} must be positive")
        self.method = method
        self.power = float(power)

    def call(self, images):
        images = ops.cast(images, "float32")
        scaled = ops.clip(images / 255.0, 0.0, 1.0)
        power = power_of(self.method, self.power)
        if power == 1.0:
            estimate = ops.mean(scaled, axis=(1, 2))
        else:
            estimate = ops.power(ops.mean(ops.power(scaled, power), axis=(1, 2)), 1.0 / power)
        estimate = ops.maximum(estimate, _FLOOR)
        gains = ops.sqrt(ops.mean(ops.square(estimate), axis=-1, keepdims=True)) / estimate
        return ops.clip(images * gains[:, None, None, :], 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "method": self.method, "power": self.power}

    def describe(self) -> str:
        return "gray world" if self.method == "gray_world" else f"shades of gray (p={self.power:g})"


def reference(images: np.ndarray, method: str, power: float) -> np.ndarray:
    """The layer's computation in NumPy float64, the reference the tests compare with."""
    images = np.asarray(images, np.float64)
    scaled = np.clip(images / 255.0, 0.0, 1.0)
    p = power_of(method, power)
    estimate = np.mean(scaled ** p, axis=(1, 2)) ** (1.0 / p)
    estimate = np.maximum(estimate, _FLOOR)
    gains = np.sqrt(np.mean(estimate ** 2, axis=-1, keepdims=True)) / estimate
    return np.clip(images * gains[:, None, None, :], 0.0, 255.0)
