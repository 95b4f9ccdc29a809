"""BatchNormalization's training step on TensorFlow's fused kernel.

Keras 3 computes a training-mode BatchNormalization from separate ops (mean, squared
difference, multiply, add, and as many again for the gradient); Keras 2 used TensorFlow's fused
kernel (`FusedBatchNormV3` and its gradient, which oneDNN accelerates on CPUs). In a full
fine-tune step of EfficientNetV2-B0 on this CPU, those separate ops were 35% of the CPU time
(`benchmarks/profile_ops.py`, numbers in docs/benchmarks.md). `use_fused_kernel(model)` gives
the model's BatchNormalization layers a `call` that runs the fused kernel when it computes the
same function: training mode, a trainable layer, 4-D channels-last input, no mask, no renorm, no
cross-replica synchronisation; otherwise Keras' own `call`. Weights, moving statistics and the
saved file are Keras' own (the layer's class and config do not change).
"""

import keras
import tensorflow as tf


def _fused_call(layer: keras.layers.BatchNormalization, keras_call):
    def call(inputs, training=None, mask=None):
        if not (training and layer.trainable) or mask is not None or layer.renorm or getattr(
                layer, "synchronized", False) or len(inputs.shape) != 4 or layer.axis not in (
                -1, 3) or not (layer.scale and layer.center):
            return keras_call(inputs, training=training, mask=mask)
        # The kernel takes half-precision inputs as they are and computes the statistics in
        # float32, as Keras does under mixed precision (casting them costs 13% of a bf16 step).
        if inputs.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            inputs = tf.cast(inputs, tf.float32)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, tf.cast(layer.gamma, tf.float32),
            tf.cast(layer.beta, tf.float32), epsilon=layer.epsilon, data_format="NHWC",
            is_training=True)
        # The kernel returns the unbiased (Bessel-corrected) batch variance for the moving
        # average; Keras averages the biased one, which it also normalises with.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = layer.momentum
        layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(
            layer.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(outputs, layer.compute_dtype)
    return call


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of `model`, nested models included."""
    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        elif isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
    return found


def use_fused_kernel(model: keras.Model) -> int:
    """Gives every BatchNormalization layer of `model` (nested models included) the fused
    training step; returns how many layers it changed. Idempotent."""
    changed = 0
    for layer in batch_norm_layers(model):
        if not getattr(layer, "_skin_keras_fused", False):
            layer.call = _fused_call(layer, layer.call)
            layer._skin_keras_fused = True  # pylint: disable=protected-access
            changed += 1
    return changed
