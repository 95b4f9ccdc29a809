"""Swish's gradient as one fused C++ kernel (swish_grad_op.cc) in place of precision.py's
element-wise ops: builds the op with g++ against the installed TensorFlow, checks it against
TensorFlow's gradient, and times EfficientNetV2-S training steps (benchmarks/measure_keras.py).

    python benchmarks/experiments/swish_grad_op.py check
    python benchmarks/experiments/swish_grad_op.py time {ours|op} {onednn_bfloat16|float32}
    python benchmarks/experiments/swish_grad_op.py pair {onednn_bfloat16|float32} [steps]

Run `time ours ...` and `time op ...` in turn, several rounds (the machine drifts); `pair`
builds both models in one process and alternates their steps (drift cancels).
"""

import os
import runpy
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The rewrite keeps an op it does not list in float32 (casts around it): run it in bfloat16
# where its inputs are.
os.environ["TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_INFERLIST_ADD"] = "SkinKerasSwishGrad"

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from skin_keras.train import precision  # pylint: disable=g-import-not-at-top

HERE = Path(__file__).resolve().parent
LIBRARY = Path("/tmp/swish_grad_op.so")


def build() -> Path:
    command = (["g++", "-std=c++17", "-shared", "-fPIC", "-O3", "-w",
                str(HERE / "swish_grad_op.cc"), "-o", str(LIBRARY)]
               + tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags())
    subprocess.run(command, check=True)
    return LIBRARY


OPS = tf.load_op_library(str(build()))


@tf.custom_gradient
def silu_fused_gradient(x):
    y = x * tf.sigmoid(x)

    def grad(upstream):
        return OPS.skin_keras_swish_grad(upstream, x, y)

    return y, grad


def check():
    """Largest difference from TensorFlow's gradient and from precision.py's, per dtype."""
    x = np.concatenate([np.linspace(-90, 90, 10001), [0, 1e-30, -1e-30]]).astype("float32")
    upstream = np.linspace(-2, 2, x.size).astype("float32")
    for dtype in (tf.float32, tf.bfloat16):
        grads = {}
        for name, fn in (("op", silu_fused_gradient), ("ours", precision.silu_from_output),
                         ("tensorflow", tf.nn.silu)):
            features = tf.cast(x, dtype)
            with tf.GradientTape() as tape:
                tape.watch(features)
                y = fn(features)
            grads[name] = tf.cast(tape.gradient(y, features, tf.cast(upstream, dtype)),
                                  tf.float32).numpy()
        for name in ("ours", "tensorflow"):
            print(f"{dtype.name}: op vs {name}: max |difference| "
                  f"{np.max(np.abs(grads['op'] - grads[name])):.3g}")


def time_training(variant: str, mode: str):
    if variant == "op":
        precision.silu_from_output = silu_fused_gradient  # What onednn_bfloat16 installs.
        precision._TENSORFLOW_SILU = silu_fused_gradient  # What float32 installs.
    sys.argv = ["measure_keras.py", "train", "--steps=5", f"--precision={mode}", "--model=s",
                "--img_size=224", "--batch_size=8", "--classes=8"]
    runpy.run_path(str(HERE.parent / "measure_keras.py"), run_name="__main__")


def pair(mode: str, steps: int):
    """Both swish gradients in one process, steps alternated: seconds per step of each."""
    import statistics  # pylint: disable=g-import-not-at-top
    import time  # pylint: disable=g-import-not-at-top

    import keras  # pylint: disable=g-import-not-at-top

    from skin_keras.model.builder import build_model  # pylint: disable=g-import-not-at-top
    from skin_keras.model.spec import ModelSpec  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(0)
    images = {"image": rng.uniform(0, 255, (8, 224, 224, 3)).astype("float32")}
    labels = np.eye(8, dtype="float32")[rng.integers(0, 8, 8)]
    models = {}
    with precision.compute_precision(mode):
        for name, silu in (("ours", None), ("op", silu_fused_gradient)):
            if silu is not None:
                precision.keras_tf_nn.silu = silu
            model = build_model(ModelSpec(model="s", img_size=224, weights="none",
                                          freeze_layers=False), 8)
            model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                          loss="categorical_crossentropy")
            model.train_on_batch(images, labels)  # Traced with this swish.
            model.train_on_batch(images, labels)
            models[name] = model
        seconds = {name: [] for name in models}
        for _ in range(steps):
            for name, model in models.items():
                start = time.perf_counter()
                model.train_on_batch(images, labels)
                seconds[name].append(time.perf_counter() - start)
    for name, values in seconds.items():
        print(f"{mode} {name}: {8 / statistics.median(values):.2f} img/s "
              f"(median of {steps} steps; {', '.join(f'{8 / v:.2f}' for v in values)})")
    print(f"op / ours: {statistics.median(seconds['ours']) / statistics.median(seconds['op']):.3f}")


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check()
    elif sys.argv[1] == "pair":
        pair(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 10)
    else:
        time_training(sys.argv[2], sys.argv[3])
