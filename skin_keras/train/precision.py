"""--precision: the compute dtype of training, chosen for this machine, and what it switches on.

- float32.
- mixed_float16, mixed_bfloat16: Keras' dtype policies; every layer computes in half precision
  and casts its own inputs (the way on GPUs and TPUs). On a CPU, mixed_bfloat16 takes the swish
  below too.
- onednn_bfloat16: a float32 model whose training graph TensorFlow's oneDNN rewrite
  (`auto_mixed_precision_onednn_bfloat16`) runs in bfloat16, casts placed once for the whole
  graph; for CPUs with bfloat16 instructions (avx512_bf16, AMX). Swish's gradient is computed
  from its fused forward output (`_MklSwish`) instead of a second Sigmoid, which runs 3x slower
  in bfloat16 than in float32 on such a CPU (docs/benchmarks.md, "bfloat16 training").
- auto: on a machine without GPU or TPU whose CPU has bfloat16 instructions, float32 or
  onednn_bfloat16, whichever trains this run's model faster here: a few steps of each are timed
  before the run (bfloat16 pays for large images and models, not for B0 at 64 px; see
  docs/benchmarks.md); float32 elsewhere. A resumed run keeps what it chose.

Weights and optimizer state stay float32 in every mode (and the softmax under Keras' policies;
the rewrite may run it in bfloat16 during training), so a run folder's model is the same kind
of file whatever trained it. `apply` sets a mode (inside `restored`,
which puts back what was there before); `compute_precision` is both for a block.
"""

import contextlib
import dataclasses
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.tensorflow import nn as keras_tf_nn  # Where keras.ops.silu dispatches.

from skin_keras.core.errors import UserError
from skin_keras.model.builder import build_model

_log = logging.getLogger(__name__)

ONEDNN_BFLOAT16 = "onednn_bfloat16"
_REWRITE = "auto_mixed_precision_onednn_bfloat16"

# CPU instructions that run bfloat16 natively (Linux /proc/cpuinfo names).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags; None where they cannot be read (not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _accelerated() -> bool:
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def _onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process (it decides at import, from
    TF_ENABLE_ONEDNN_OPTS and the CPU; core.tensorflow_env turns them on for the scripts)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # Not in this TensorFlow: what the variable says.
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() not in ("0", "false", "False")


def bfloat16_cpu() -> bool:
    """Whether onednn_bfloat16 can run natively here: a CPU with bfloat16 instructions, oneDNN
    on, no GPU or TPU."""
    flags = cpu_flags() or set()
    return bool(flags & set(BF16_CPU_FLAGS)) and _onednn_enabled() and not _accelerated()


def resolve(precision: str) -> str:
    """An explicit mode, checked (UserError for onednn_bfloat16 where the rewrite cannot run);
    auto stays auto (`choose` decides it)."""
    if precision == ONEDNN_BFLOAT16:
        if _accelerated():
            raise UserError("--precision=onednn_bfloat16 rewrites CPU operations only: use "
                            "--precision=mixed_bfloat16 (or mixed_float16) on a GPU or TPU")
        if not _onednn_enabled():
            raise UserError("--precision=onednn_bfloat16 needs TensorFlow's oneDNN operations, "
                            "which are off in this process (TF_ENABLE_ONEDNN_OPTS=0)")
    return precision


TIMED_STEPS = 3  # Per mode, after one step that traces the graph.
_CHOSEN: dict[tuple, str] = {}  # What auto measured, once per model, size and batch (--folds).


def choose(config, classes: int, recorded: str | None = None,
           multi_worker: bool = False) -> str:
    """The mode a run trains in: its --precision (checked), or for auto what `recorded` (a
    resumed run's choice) says, else float32 unless this is a bfloat16 CPU, where the faster
    of float32 and onednn_bfloat16 on a few training steps of the run's model (same
    architecture, size, batch and trainable layers; untrained weights; random images)."""
    if config.precision != "auto":
        return resolve(config.precision)
    if recorded in ("float32", ONEDNN_BFLOAT16):
        return recorded
    if not bfloat16_cpu():
        return "float32"
    if multi_worker:  # Each worker would time its own and might choose another.
        _log.info("--precision=auto: float32 on a cluster (set --precision=onednn_bfloat16 "
                  "for bfloat16 on every worker)")
        return "float32"
    spec = dataclasses.replace(config.model_spec, weights="none")
    key = (repr(spec), classes, config.batch_size)
    if key not in _CHOSEN:
        speeds = {mode: _images_per_second(spec, classes, config.batch_size, mode)
                  for mode in ("float32", ONEDNN_BFLOAT16)}
        _CHOSEN[key] = max(speeds, key=speeds.get)
        keras.backend.clear_session()  # The timed models' graphs and layer names go.
        _log.info(f"--precision=auto: {_CHOSEN[key]} (training steps here: "
                  f"{', '.join(f'{mode} {rate:.1f} img/s' for mode, rate in speeds.items())})")
    return _CHOSEN[key]


def _images_per_second(spec, classes: int, batch: int, mode: str) -> float:
    rng = np.random.default_rng(0)
    images = {"image": rng.uniform(0, 255, (batch, spec.img_size, spec.img_size, 3)
                                   ).astype("float32")}
    labels = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch)]
    with compute_precision(mode):
        model = build_model(spec, classes)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
        model.train_on_batch(images, labels)
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            model.train_on_batch(images, labels)
        return TIMED_STEPS * batch / (time.perf_counter() - start)


def precision_note(precision: str) -> str | None:
    """What to know about `precision` (resolved) on this machine: a mixed precision that its
    CPU can only emulate (no GPU or TPU to run it) is slower than float32; None when there is
    nothing to say."""
    if precision in ("float32", "auto") or _accelerated():
        return None
    if precision == "mixed_float16":
        return ("--precision=mixed_float16 without a GPU: CPUs emulate float16, so this runs "
                "slower than float32")
    flags = cpu_flags()
    if flags is None or flags & set(BF16_CPU_FLAGS):
        return None
    return (f"--precision={precision}: this CPU has no bfloat16 instructions "
            f"({' or '.join(BF16_CPU_FLAGS)}), so it is emulated and usually slower than float32")


@tf.custom_gradient
def silu_from_output(x):
    """x * sigmoid(x), whose gradient reuses the output: sigmoid(x) = y / x (1/2 at x = 0), so
    the forward stays one fused swish and the backward needs no Sigmoid of its own."""
    y = x * tf.sigmoid(x)

    def grad(upstream):
        gate = tf.where(tf.equal(x, 0), tf.constant(0.5, x.dtype), y / x)
        return upstream * (gate + y * (1 - gate))

    return y, grad


def apply(mode: str) -> None:
    """Sets `mode` (not auto) for what runs next: the dtype policy, the graph rewrite, swish."""
    mode = resolve(mode)
    onednn = mode == ONEDNN_BFLOAT16
    keras.mixed_precision.set_global_policy("float32" if onednn else mode)
    tf.config.optimizer.set_experimental_options({_REWRITE: onednn})
    # Keras' mixed_bfloat16 on a CPU has the same slow bfloat16 Sigmoid (measured there only).
    cpu_bf16 = onednn or (mode == "mixed_bfloat16" and not _accelerated())
    keras_tf_nn.silu = silu_from_output if cpu_bf16 else _TENSORFLOW_SILU


_TENSORFLOW_SILU = keras_tf_nn.silu


@contextlib.contextmanager
def restored():
    """Puts back the dtype policy, the graph rewrite and swish as they were before the body."""
    policy = keras.mixed_precision.global_policy()
    rewrite = tf.config.optimizer.get_experimental_options().get(_REWRITE, False)
    silu = keras_tf_nn.silu
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)
        tf.config.optimizer.set_experimental_options({_REWRITE: rewrite})
        keras_tf_nn.silu = silu


@contextlib.contextmanager
def compute_precision(mode: str):
    """Runs the body in `mode` (not auto), then restores what was there."""
    with restored():
        apply(mode)
        yield
