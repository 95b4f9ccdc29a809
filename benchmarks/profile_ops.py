"""Where a full fine-tune training step spends its CPU time, by layer kind and direction.

    python benchmarks/profile_ops.py --model b0 --img_size 224 --batch_size 16 --steps 3
    python benchmarks/profile_ops.py --model s --batch_size 8 --precision mixed_bfloat16

Runs `train_on_batch` steps of a randomly initialised EfficientNetV2 under the TensorFlow
profiler (after two warm-up steps), reads the trace it writes (the XSpace protobuf that ships
with TensorFlow; no TensorBoard plugin needed) and adds up the CPU time of every TensorFlow op
per step: forward or backward (ops under `gradient_tape/`) or the optimizer's update, and the
kind of layer the op belongs to (convolution, depthwise convolution, BatchNorm, squeeze-excite,
activation, ...), then by op type. Times are CPU time summed over TensorFlow's threads (ops run
in parallel), so they add up to more than the step's wall time.
"""

import argparse
import collections
import glob
import re
import tempfile
import time
from pathlib import Path


from skin_keras.core import console  # noqa: E402

console.quiet_tensorflow_startup()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from skin_keras.model import metrics  # noqa: E402
from skin_keras.model.builder import build_model  # noqa: E402
from skin_keras.model.spec import ModelSpec  # noqa: E402

# The kind of layer an op belongs to, from the Keras layer name in its path (first match).
LAYER_KINDS = (
    ("depthwise convolution", re.compile(r"_dwconv")),
    ("squeeze-excite", re.compile(r"_se_(reduce|expand|squeeze|excite)|_se[/_]")),
    ("BatchNorm", re.compile(r"_bn[/_]|batchnorm|moments")),
    ("convolution", re.compile(r"(_conv|stem_conv|top_conv)[/_]|convolution")),
    ("activation", re.compile(r"activation|Sigmoid|swish|Relu")),
    ("head and loss", re.compile(r"predictions|avg_pool|head_|categorical_crossentropy|"
                                 r"softmax|compile_loss|loss")),
)


def layer_kind(op_path: str) -> str:
    for kind, pattern in LAYER_KINDS:
        if pattern.search(op_path):
            return kind
    return "other"


def direction(op_path: str) -> str:
    if op_path.startswith("gradient_tape/"):
        return "backward"
    if re.match(r"(SGD|sgd|adam|Adam|optimizer)", op_path) or "/update" in op_path:
        return "update"
    return "forward"


def profile(args) -> Path:
    if args.precision == "onednn_bfloat16":  # TensorFlow's graph rewrite, a float32 model.
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16":
                                                      True})
    else:
        keras.mixed_precision.set_global_policy(args.precision)
    model = build_model(ModelSpec(model=args.model, img_size=args.img_size, weights="none",
                                  freeze_layers=False), 8)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[metrics.ConfusionMatrixMetric(8)])
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    images = {"image": rng.uniform(0, 255, (args.batch_size, args.img_size, args.img_size, 3)
                                   ).astype("float32")}
    labels = np.eye(8)[rng.integers(0, 8, args.batch_size)]
    for _ in range(2):  # Tracing and first-call allocations stay out of the profile.
        model.train_on_batch(images, labels)
    folder = Path(tempfile.mkdtemp(prefix="profile_ops_"))
    tf.profiler.experimental.start(str(folder))
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(images, labels)
    wall = (time.perf_counter() - start) / args.steps
    tf.profiler.experimental.stop()
    print(f"{args.model} {args.img_size} px, batch {args.batch_size}: "
          f"{wall * 1000:.0f} ms per step ({args.batch_size / wall:.1f} img/s) under the profiler")
    return Path(glob.glob(str(folder / "plugins" / "profile" / "*" / "*.xplane.pb"))[-1])


def op_times(trace: Path) -> dict[str, float]:
    """Milliseconds of CPU time per TensorFlow op ("path:OpType") in the trace."""
    space = xplane_pb2.XSpace()
    space.ParseFromString(trace.read_bytes())
    times = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and not name.startswith(("ThreadpoolListener", "ExecutorState")):
                    times[name] += event.duration_ps / 1e9
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="b0")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=12, help="op types listed")
    parser.add_argument("--precision", default="float32", help="the Keras dtype policy, or "
                        "onednn_bfloat16 (TensorFlow's oneDNN auto-mixed-precision rewrite)")
    args = parser.parse_args()
    times = op_times(profile(args))
    total = sum(times.values()) / args.steps
    by_kind = collections.Counter()
    by_type = collections.Counter()
    for name, ms in times.items():
        path, op_type = name.rsplit(":", 1)
        by_kind[(direction(path), layer_kind(path))] += ms / args.steps
        by_type[(direction(path), op_type)] += ms / args.steps
    by_direction = collections.Counter()
    for (way, _), ms in by_kind.items():
        by_direction[way] += ms
    print(f"CPU time of TensorFlow ops: {total:.0f} ms per step; "
          + ", ".join(f"{way} {ms:.0f} ms ({ms / total:.0%})"
                      for way, ms in by_direction.most_common()))
    print("\n| direction | layer kind | ms per step | share |\n|---|---|---|---|")
    for (way, kind), ms in by_kind.most_common():
        print(f"| {way} | {kind} | {ms:.0f} | {ms / total:.1%} |")
    print(f"\n| direction | op type (top {args.top}) | ms per step | share |\n|---|---|---|---|")
    for (way, op_type), ms in by_type.most_common(args.top):
        print(f"| {way} | {op_type} | {ms:.0f} | {ms / total:.1%} |")


if __name__ == "__main__":
    main()
