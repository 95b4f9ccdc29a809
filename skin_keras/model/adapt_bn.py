"""Test-time adaptation of BatchNorm statistics to a new clinic (AdaBN: Li et al. 2016;
Schneider et al. 2020, "Improving robustness against common corruptions by covariate shift
adaptation").

A BatchNormalization layer normalises with the mean and variance of its inputs on the training
images. Another clinic's camera and light move those statistics; re-estimating them on the new
clinic's images, without their labels, undoes that part of the shift. Forward passes of the
model in training mode over the adaptation images, CHUNK at a time, normalise every layer with
each chunk's own statistics, and each layer's momentum is set so that its moving statistics
become the mean of the chunks' statistics, weighted by their sizes (PyTorch's cumulative
average, as SWA's BatchNorm update does): the mean of the images for a layer's mean, the mean
of the chunks' variances for its variance. Weights do not change. (One batch of all 512 images
held EfficientNet-Lite0's activations at 192 px in 20 GB and was killed for lack of memory.)
"""

import keras
import numpy as np
import tensorflow as tf

from skin_keras.data import pipeline
from skin_keras.model import io, parts
from skin_keras.model.fused_batch_norm import batch_norm_layers

MAX_IMAGES = 512  # A sample of the images is enough for the statistics.
CHUNK = 32  # Images per forward pass: what bounds the memory.


def adapt_batch_norm(model: keras.Model, paths, seed: int = 0) -> int:
    """Re-estimates the moving statistics of every BatchNormalization layer of `model` (in
    place) on the images of `paths` (at most MAX_IMAGES, drawn with `seed`); returns how many
    images were used."""
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.permutation(len(paths))[:MAX_IMAGES])]
    size = parts.image_size(model)
    layers = batch_norm_layers(model)
    saved = [(layer.trainable, layer.momentum) for layer in layers]
    # Dropout (EfficientNet's stochastic depth) would be on in training mode and change what
    # the later layers see: off for this pass, so each layer sees what inference will give it.
    dropouts = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for start in range(0, len(chosen), CHUNK):
            images = tf.stack([pipeline.load_image(tf.constant(str(path)), size)
                               for path in chosen[start:start + CHUNK]])
            momentum = start / (start + len(images))  # The running mean of the chunks'.
            for layer in layers:  # A frozen layer would run in inference mode in training.
                layer.trainable, layer.momentum = True, momentum
            model(parts.model_inputs(model, {io.IMAGE: images}), training=True)
    finally:
        for layer, (trainable, momentum) in zip(layers, saved):
            layer.trainable, layer.momentum = trainable, momentum
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate
    return len(chosen)


def _all_layers(model: keras.Model) -> list:
    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        found.append(layer)
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
    return found
