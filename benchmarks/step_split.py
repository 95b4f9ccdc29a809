"""Where a training step's time goes: forward pass (training mode) alone, then forward + backward,
EfficientNetV2-S, batch 8 of 224 px random images, 2 threads; median of 4 after a warm-up.

    python benchmarks/step_split.py keras                                # skin_keras' model
    benchmarks/.peer-venv/bin/python benchmarks/step_split.py torch      # torchvision's

The difference of the two lines is the backward pass; a full train step adds the optimizer.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BATCH, SIZE, CLASSES = 8, 224, 8


def timed(step) -> float:
    step()
    times = []
    for _ in range(4):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def keras_steps():
    import keras  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from skin_keras.model.builder import build_model  # pylint: disable=g-import-not-at-top
    from skin_keras.model.spec import ModelSpec  # pylint: disable=g-import-not-at-top

    model = build_model(ModelSpec(model="s", img_size=SIZE, weights="none", freeze_layers=False),
                        CLASSES)
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (BATCH, SIZE, SIZE, 3)),
                         tf.float32)
    labels = tf.one_hot(np.arange(BATCH) % CLASSES, CLASSES)
    loss = keras.losses.CategoricalCrossentropy()

    @tf.function
    def forward():
        return loss(labels, model({"image": images}, training=True)["probabilities"])

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            value = loss(labels, model({"image": images}, training=True)["probabilities"])
        return tape.gradient(value, model.trainable_variables)

    return (lambda: forward().numpy(),
            lambda: [g.numpy() for g in forward_backward()])


def torch_steps():
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(2)
    model = torchvision.models.efficientnet_v2_s(weights=None, num_classes=CLASSES).train()
    images, labels = torch.rand(BATCH, 3, SIZE, SIZE), torch.arange(BATCH) % CLASSES

    def forward():
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(images), labels)

    def forward_backward():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()

    return forward, forward_backward


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", nargs="?", default="keras", choices=("keras", "torch"))
    side = parser.parse_args().side
    forward, forward_backward = {"keras": keras_steps, "torch": torch_steps}[side]()
    print(f"{side}: forward {timed(forward):.3f} s/batch, "
          f"forward + backward {timed(forward_backward):.3f} s/batch")


if __name__ == "__main__":
    main()
