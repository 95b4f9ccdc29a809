"""tf.distribute strategies for training: one device, several on one machine, several machines, TPU.

`--batch_size` is the global batch: every step, each of the N replicas gets batch_size / N images
and the gradients are summed across replicas, so a run on N devices follows the same learning-rate
schedule per image as on one device. Scale --batch_size (and, usually, --lr) with the number of
devices to keep each device as busy as on its own.

multi_worker (MultiWorkerMirroredStrategy, cluster from TF_CONFIG) is refused with an explanation:
Keras 3's fit() fails under it (keras-team/keras#20585; reproduced with Keras 3.15 and two local
workers: first in the MEAN reduction fit() uses to build the model, then, past that, in the
reduction of the per-step logs).
"""

import json
import os

import tensorflow as tf

from skin_keras.config import STRATEGIES
from skin_keras.errors import UserError


def _accelerators() -> list[str]:
    return [device.name for device in tf.config.list_logical_devices("GPU")]


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


def precision_note(precision: str) -> str | None:
    """What to know about --precision on this machine: a mixed precision that its CPU can only
    emulate (no GPU or TPU to run it) is slower than float32; None when there is nothing to say."""
    if precision == "float32" or _accelerators() or tf.config.list_logical_devices("TPU"):
        return None
    if precision == "mixed_float16":
        return ("--precision=mixed_float16 without a GPU: CPUs emulate float16, so this runs "
                "slower than float32")
    flags = cpu_flags()
    if flags is None or flags & set(BF16_CPU_FLAGS):
        return None
    return (f"--precision={precision}: this CPU has no bfloat16 instructions "
            f"({' or '.join(BF16_CPU_FLAGS)}), so it is emulated and usually slower than float32")


def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as error:
        raise UserError(f"TF_CONFIG is not valid JSON: {error}") from None


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy `name` names. "auto": multi_worker if TF_CONFIG lists a cluster of several
    tasks, mirrored over all GPUs if there are several, else the default (one device)."""
    if name not in STRATEGIES:
        raise UserError(f"unknown --strategy={name}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        cluster = _tf_config().get("cluster", {})
        if sum(len(tasks) for tasks in cluster.values()) > 1:
            name = "multi_worker"
        elif len(_accelerators()) > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = _accelerators()
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    if name == "mirrored":
        # All GPUs; on a machine without any, all logical CPU devices (one, unless configured).
        devices = _accelerators() or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        raise UserError("multi-worker training (--strategy=multi_worker, or TF_CONFIG with a "
                        "cluster) does not run: Keras 3's fit() fails under "
                        "MultiWorkerMirroredStrategy (keras-team/keras#20585); train on one "
                        "machine (--strategy=mirrored for its GPUs) or unset TF_CONFIG")
    try:  # tpu: the TPU named by TPU_NAME, or the local one on a TPU VM.
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise UserError(f"--strategy=tpu: no TPU found ({str(error).splitlines()[0]})") from None
    return tf.distribute.TPUStrategy(resolver)


def check_batch_size(strategy: tf.distribute.Strategy, batch_size: int) -> None:
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(f"--batch_size={batch_size} is the global batch and must be a multiple "
                        f"of the {replicas} replicas of the strategy")

