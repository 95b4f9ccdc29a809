"""Test-time adaptation of BatchNorm statistics to a new clinic (AdaBN: Li et al. 2016;
Schneider et al. 2020, "Improving robustness against common corruptions by covariate shift
adaptation").

A BatchNormalization layer normalises with the mean and variance of its inputs on the training
images. Another clinic's camera and light move those statistics; re-estimating them on the new
clinic's images, without their labels, undoes that part of the shift. One forward pass of the
model in training mode over the adaptation images as one batch normalises every layer with the
batch's own statistics, which are then exactly the statistics to keep: each layer's momentum is
set to 0 for that pass, so its moving statistics become the batch's. Weights do not change.
"""

import keras
import numpy as np
import tensorflow as tf

from skin_keras.data import pipeline
from skin_keras.model import parts
from skin_keras.model.fused_batch_norm import batch_norm_layers

MAX_IMAGES = 512  # A sample of the images is enough for the statistics; memory stays bounded.


def adapt_batch_norm(model: keras.Model, paths, seed: int = 0) -> int:
    """Re-estimates the moving statistics of every BatchNormalization layer of `model` (in
    place) on the images of `paths` (at most MAX_IMAGES, drawn with `seed`); returns how many
    images were used."""
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.permutation(len(paths))[:MAX_IMAGES])]
    size = parts.image_size(model)
    images = tf.stack([pipeline.load_image(tf.constant(str(path)), size) for path in chosen])
    layers = batch_norm_layers(model)
    saved = [(layer.trainable, layer.momentum) for layer in layers]
    # Dropout (EfficientNet's stochastic depth) would be on in training mode and change what
    # the later layers see: off for this pass, so each layer sees what inference will give it.
    dropouts = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    try:
        for layer in layers:  # A frozen layer would run in inference mode even in training.
            layer.trainable, layer.momentum = True, 0.0
        for layer in dropouts:
            layer.rate = 0.0
        model(parts.full_inputs(model, images), training=True)
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
