"""Temperature scaling as the model's last layer on its probabilities (the calibrate workflow
fits T; evaluate/calibration.py measures the result)."""

import keras
import numpy as np
from keras import ops

from skin_keras.model.spec import PACKAGE

_FLOOR = 1e-30  # log(0) would be -inf, so probabilities are floored here first.


@keras.saving.register_keras_serializable(package=PACKAGE)
class Temperature(keras.layers.Layer):
    """Probabilities [B, C] -> softmax(log(p) / T), in float32: for a softmax output p =
    softmax(z), the same as softmax(z / T) (arg-max unchanged)."""

    def __init__(self, temperature: float = 1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be positive")
        self.temperature = float(temperature)

    def call(self, probabilities):
        logits = ops.log(ops.maximum(ops.cast(probabilities, "float32"), _FLOOR))
        return ops.softmax(logits / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """What `Temperature(temperature)` does, in NumPy float64."""
    logits = np.log(np.maximum(np.asarray(probabilities, np.float64), _FLOOR)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)
