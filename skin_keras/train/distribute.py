"""tf.distribute strategies for training: one device, several on one machine, several machines, TPU.

`--batch_size` is the global batch: every step, each of the N replicas gets batch_size / N images
and the gradients are summed across replicas, so a run on N devices follows the same learning-rate
schedule per image as on one device. Scale --batch_size (and, usually, --lr) with the number of
devices to keep each device as busy as on its own.

multi_worker (MultiWorkerMirroredStrategy, the cluster from TF_CONFIG): Keras 3's fit() fails
under it (keras-team/keras#20585), so training runs `custom_loop.fit` instead. Every worker runs
the same command; the chief (TF_CONFIG's "chief" task, else worker 0) writes the run folder and
the others write theirs into a scratch folder they delete (`worker_scratch`). A cluster that does
not come up (a worker that never starts, a wrong address) ends within --cluster_timeout seconds
(default 300) with a message, not a hang.
"""

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from skin_keras.core.errors import UserError
from skin_keras.model import fused_batch_norm
from skin_keras.train.config import STRATEGIES


def _accelerators() -> list[str]:
    return [device.name for device in tf.config.list_logical_devices("GPU")]


def _tf_config() -> dict:
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as error:
        raise UserError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise UserError("TF_CONFIG must be a JSON object with \"cluster\" and \"task\"")
    return config


def _cluster_task(config: dict) -> tuple[dict, str, int]:
    """TF_CONFIG's cluster, task type and index, checked (UserError naming what is wrong)."""
    cluster, task = config.get("cluster"), config.get("task")
    example = ('e.g. {"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(tasks, list) and tasks and all(
                isinstance(address, str) and _port(address) is not None for address in tasks)
            for tasks in cluster.values()):
        raise UserError(f"TF_CONFIG's \"cluster\" must map task types to lists of host:port "
                        f"addresses (ports 1 to 65535); {example}")
    others = sorted(set(cluster) - {"chief", "worker"})
    if others:  # A parameter server ("ps") belongs to another strategy.
        raise UserError(f"TF_CONFIG names {', '.join(others)} task(s): multi-worker training "
                        "(MultiWorkerMirroredStrategy) takes \"chief\" and \"worker\" tasks only")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise UserError(f"TF_CONFIG's \"task\" must give this process's \"type\" (one of "
                        f"{', '.join(cluster)}) and \"index\"; {example}")
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not (
            0 <= index < len(cluster[task["type"]])):
        raise UserError(f"TF_CONFIG's task index {index!r} is not one of the "
                        f"{len(cluster[task['type']])} {task['type']} addresses")
    return cluster, task["type"], index


def _port(address: str) -> int | None:
    port = address.rpartition(":")[2]
    return int(port) if port.isdigit() and 1 <= int(port) <= 65535 else None


def is_chief_task() -> bool:
    """Whether this process writes the run folder: no cluster in TF_CONFIG, or its "chief"
    task, or worker 0 of a cluster without one (MultiWorkerMirroredStrategy's rule)."""
    config = _tf_config()
    if not config.get("cluster"):
        return True
    cluster, task_type, index = _cluster_task(config)
    return task_type == "chief" or (task_type == "worker" and index == 0
                                    and "chief" not in cluster)



# Sleeps, then says why and ends the process that started it (killed before that when in time).
_WATCHDOG = """
import os, sys, time
time.sleep(float(sys.argv[1]))
sys.stderr.write(sys.argv[2] + "\\n")
sys.stderr.flush()
os.kill(int(sys.argv[3]), 9)
"""


@contextlib.contextmanager
def _deadline(seconds: float, message: str):
    """Ends this process (killed, `message` on stderr) if the block runs longer than
    `seconds`. A watchdog process, not a thread: TensorFlow waits for missing workers inside C++
    calls that hold the interpreter, and ignores SIGTERM meanwhile."""
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(seconds),
                                 f"{os.path.basename(sys.argv[0])}: error: {message}",
                                 str(os.getpid())])
    try:
        yield
    finally:
        watchdog.kill()
        watchdog.wait()


@functools.cache
def _mirrored_strategy(devices: tuple[str, ...]) -> tf.distribute.MirroredStrategy:
    """One per process and device set: a second MirroredStrategy over CPUs in the same process
    reuses the first one's collective instance keys, and its all-reduces fail with "Shape
    mismatch in the collective instance" (a cross-validation run with --strategy=mirrored
    trains one model after another)."""
    return tf.distribute.MirroredStrategy(list(devices))


@functools.cache  # TensorFlow's collective ops are configured once per process.
def _multi_worker_strategy(timeout: float) -> tf.distribute.MultiWorkerMirroredStrategy:
    cluster, task_type, index = _cluster_task(_tf_config())
    addresses = ", ".join(f"{kind} {i} {address}" for kind, tasks in cluster.items()
                          for i, address in enumerate(tasks))
    with _deadline(timeout, f"the cluster in TF_CONFIG did not come up within {timeout:g} s "
                            f"({task_type} {index} here; {addresses}): start the same command "
                            f"on every task, check the addresses and ports, or raise "
                            f"--cluster_timeout"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        # A first collective: returns once every worker has joined.
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    return strategy


def make_strategy(name: str, cluster_timeout: float | None = None) -> tf.distribute.Strategy:
    """The strategy `name` names. "auto": multi_worker if TF_CONFIG lists a cluster of several
    tasks, mirrored over all GPUs if there are several, else the default (one device). A
    multi-worker cluster that has not come up after `cluster_timeout` seconds (required then:
    --cluster_timeout) ends the process with a message."""
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
        return _mirrored_strategy(tuple(devices))
    if name == "multi_worker":
        if not _tf_config().get("cluster"):
            raise UserError("--strategy=multi_worker needs TF_CONFIG naming the cluster and this "
                            "process's task (docs/distributed.md)")
        if cluster_timeout is None:
            raise ValueError("a multi-worker strategy needs the cluster_timeout")
        return _multi_worker_strategy(cluster_timeout)
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



@contextlib.contextmanager
def worker_scratch(config):
    """The config a non-chief worker trains with: its run folder in a scratch folder deleted
    afterwards (a copy of the run to resume, made before the cluster meets, so the chief cannot
    have changed it yet). The chief, or a run without a cluster, trains with `config` as it is."""
    if config.strategy not in ("auto", "multi_worker") or not _tf_config().get("cluster"):
        yield config
        return
    if config.folds:
        raise UserError("--folds does not run on a multi-worker cluster: train one fold per "
                        "run there (prepare_isic --folds=K --fold=i)")
    if is_chief_task():
        yield config
        return
    scratch = Path(tempfile.mkdtemp(prefix="skin_keras_worker_"))
    try:
        if config.resume:
            copy = scratch / Path(config.resume).name
            shutil.copytree(config.resume, copy, symlinks=True,
                            ignore=shutil.ignore_patterns("tensorboard"))
            yield dataclasses.replace(config, resume=str(copy))
        else:
            yield dataclasses.replace(config, save_ret=str(scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class AverageMovingStatistics(keras.callbacks.Callback):
    """Gives every replica the mean of the replicas' BatchNormalization moving statistics before
    each validation.

    Keras keeps one copy of a moving mean or variance per replica, each updated from that
    replica's part of the batch (aggregation "none"), so replicas, and the workers of a cluster,
    drift apart: validation would score a mix of slightly different models, and the saved model
    (the chief's copy) would not be the one the best epoch was chosen on. The mean of the moving
    means is the moving mean of the whole batches; for the variances it adds the small spread
    between the replicas' batch means. One collective per epoch."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model):
        super().__init__()
        statistics = [variable for layer in fused_batch_norm.batch_norm_layers(model)
                      for variable in (layer.moving_mean, layer.moving_variance)]

        def average():
            context = tf.distribute.get_replica_context()
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN,
                                       [tf.identity(variable.value) for variable in statistics])
            for variable, mean in zip(statistics, means):
                variable.assign(mean)

        self._average = tf.function(lambda: strategy.run(average)) if statistics else None

    def on_test_begin(self, logs=None):
        if self._average is not None:
            self._average()

