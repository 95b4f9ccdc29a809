"""tf.distribute: two mirrored replicas and two workers on localhost train as one device does
(the custom loop of multi-worker training equals fit()); a killed worker stops the other with a
message and --resume finishes the run; a cluster that never comes up ends in bounded time.

The tests of distributed runs are in one file so that they never run beside each other in the
suite's two processes (their collectives wait for CPU: the mirrored test took 19 s alone and
98 s beside the two-worker test)."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from skin_keras.core import options
from skin_keras.core.errors import UserError
from skin_keras.train import custom_loop, distribute, epoch_log, loop
from skin_keras.workflows import training

import small_b0
from conftest import REPO, tiny_config

# The workers run train.py with the small B0 of the reference run in this process.
TRAIN_PY = small_b0.prelude(str(REPO / "tests")) + """
import runpy, sys
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""
# Worker 1 of the test's cluster: train.py, killed (SIGKILL, no clean-up) when epoch 2 begins.
DIES_AT_EPOCH_2 = small_b0.prelude(str(REPO / "tests")) + """
import os, runpy, signal, sys
from skin_keras.train import checkpoints as checkpointing
begin = checkpointing.RunRecorder.on_epoch_begin
def on_epoch_begin(self, epoch, logs=None):
    if epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    begin(self, epoch, logs)
checkpointing.RunRecorder.on_epoch_begin = on_epoch_begin
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _workers(args: list[str], ports: list[int], first_command=None, timeout: float = 240):
    """Runs train.py `args` as worker 0 and 1 of a localhost cluster; their exit codes and
    output."""
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"localhost:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}
        cache = tempfile.mkdtemp(prefix="skin_keras_worker_cache_")
        # One thread each: the suite runs another test file beside this one on two cores.
        # A cache of their own: checking the images, new to them, runs TensorFlow ops before
        # the strategy is made (which then must still be possible).
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "SKIN_KERAS_CACHE": cache,
               "TF_NUM_INTRAOP_THREADS": "1",
               "TF_NUM_INTEROP_THREADS": "1"}
        command = (first_command if index == 1 and first_command else
                   [sys.executable, "-c", TRAIN_PY])
        processes.append(subprocess.Popen([*command, *args], cwd=REPO, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=max(1, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail(f"the workers did not finish within {timeout} s")
    return [process.returncode for process in processes], outputs


def _config(tmp_path, data, **overrides):
    # Frozen backbone (BatchNorm in inference mode) and no dropout: the workers' halves of a
    # batch give exactly the gradient of the whole batch.
    return tiny_config(tmp_path, data, freeze_layers=True, dropout=0.0, batch_size=8, lr=0.01,
                       deterministic=True, feature_cache="none",
                       **{"epochs": 2, "cluster_timeout": 60.0, **overrides})


def _flags(config, folder) -> list[str]:
    """train.py's arguments for `config`: the flagfile the run folder would replay."""
    flagfile = folder / "flags.cfg"
    flagfile.write_text(options.to_flagfile(config))
    return [f"--flagfile={flagfile}"]


def test_the_custom_loop_trains_as_fit_does():
    def run(fit):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(keras.optimizers.Adam(0.05), "categorical_crossentropy",
                      metrics=["accuracy"])
        steps = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: steps.append(float(logs["loss"])))
        history = fit(model, train, validation_data=val, epochs=3, initial_epoch=1,
                      callbacks=[record], class_weight={0: 1.0, 1: 3.0, 2: 0.5}, verbose=0)
        return steps, history.history, model.get_weights()

    x = np.random.RandomState(0).rand(30, 6).astype("float32")
    y = keras.utils.to_categorical(np.arange(30) % 3, 3)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    val = tf.data.Dataset.from_tensor_slices((x[:11], y[:11])).batch(4)
    keras_steps, keras_history, keras_weights = run(
        lambda model, *args, **kwargs: model.fit(*args, shuffle=False, **kwargs))
    steps, history, weights = run(custom_loop.fit)
    assert len(steps) == len(keras_steps) == 2 * 4  # Epochs 2 and 3, four batches each.
    np.testing.assert_allclose(steps, keras_steps, rtol=1e-6)
    assert history.keys() == keras_history.keys() and "val_accuracy" in history
    for name in history:
        np.testing.assert_allclose(history[name], keras_history[name], rtol=1e-6)
    for mine, theirs in zip(weights, keras_weights):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6)


def _one_device_run(tmp_path, data, custom: bool, epochs: int):
    """The reference of a distributed run: the same config on one device, through fit() or
    the custom loop that multi_worker runs (on this pipeline the two give other epoch-1
    figures, train loss 1.1013 against 1.0994: cause not found yet)."""
    with pytest.MonkeyPatch.context() as patch:
        if custom:
            patch.setattr(custom_loop, "needs_custom_loop", lambda strategy: True)
        return loop.train_and_evaluate(
            _config(tmp_path / "single", data, strategy="one_device", epochs=epochs), verbose=0)


def _same_run(run, reference, epochs):
    """Asserts that `run` logged what `reference` did (only float rounding may differ)."""
    logs = [json.loads((r / "log.json").read_text()) for r in (run, reference)]
    matrices = [json.loads((r / epoch_log.MATRICES_FILE).read_text()) for r in (run, reference)]
    for epoch in epochs:
        assert matrices[0][epoch] == matrices[1][epoch]
        for split in ("train info", "valid info"):
            assert logs[0][epoch][split]["balanced accuracy"] == \
                logs[1][epoch][split]["balanced accuracy"]
            assert logs[0][epoch][split]["loss"] == pytest.approx(
                logs[1][epoch][split]["loss"], rel=1e-4)


@pytest.mark.slow
def test_mirrored_training_matches_one_device(tmp_path, tiny_dataset):
    # Frozen backbone (BatchNorm in inference mode) and no dropout: the replicas' halves of a
    # batch then give exactly the gradient of the whole batch, so only float rounding differs.
    one_device_run = _one_device_run(tmp_path, tiny_dataset, custom=False, epochs=1)
    run = loop.train_and_evaluate(_config(tmp_path, tiny_dataset, strategy="mirrored",
                                          epochs=1), verbose=0)
    _same_run(run, one_device_run, epochs=("epoch:1",))
    weights = [keras.models.load_model(r / "weights" / "last.keras").get_weights()[-2:]
               for r in (one_device_run, run)]
    for single, mirrored in zip(*weights):
        np.testing.assert_allclose(mirrored, single, rtol=1e-4, atol=1e-6)
    # The head did train: its bias starts at zero (Dense's initialiser) and moved.
    assert np.abs(weights[0][1]).max() > 1e-4


@pytest.mark.slow
def test_two_workers_train_as_one_device_and_resume_after_one_dies(tmp_path, tiny_dataset):
    one_device_run = _one_device_run(tmp_path, tiny_dataset, custom=True, epochs=2)
    config = _config(tmp_path / "cluster", tiny_dataset, strategy="multi_worker")
    ports = _free_ports(2)

    codes, outputs = _workers(_flags(config, tmp_path), ports,
                              [sys.executable, "-c", DIES_AT_EPOCH_2])
    assert codes[1] == -9, outputs[1]
    assert codes[0] == 2, outputs[0]
    run = tmp_path / "cluster" / "runs" / "exp1"
    assert ("train.py: error: another worker of the cluster stopped or cannot be reached"
            in outputs[0] and f"--resume={run}" in outputs[0] and "Traceback" not in outputs[0])
    assert list(json.loads((run / "log.json").read_text())) == ["epoch:1"]
    # The chief alone wrote a run folder.
    assert sorted(path.name for path in (tmp_path / "cluster" / "runs").iterdir()) == ["exp1"]

    _same_run(run, one_device_run, epochs=("epoch:1",))
    cluster_log = json.loads((run / "log.json").read_text())

    codes, outputs = _workers([f"--flagfile={run / 'flags.cfg'}", f"--resume={run}"], ports)
    assert codes == [0, 0], outputs
    assert f"resuming {run} after epoch 1" in outputs[0]
    resumed = json.loads((run / "log.json").read_text())
    assert list(resumed) == ["epoch:1", "epoch:2"]
    assert resumed["epoch:1"] == cluster_log["epoch:1"]  # Kept, not trained again.
    assert (run / "weights" / "best.keras").is_file()
    assert sorted(path.name for path in (tmp_path / "cluster" / "runs").iterdir()) == ["exp1"]


@pytest.mark.slow
def test_a_cluster_that_never_comes_up_ends_with_a_message(tmp_path, tiny_dataset):
    ports = _free_ports(2)  # Worker 1 is never started.
    tf_config = {"cluster": {"worker": [f"localhost:{port}" for port in ports]},
                 "task": {"type": "worker", "index": 0}}
    config = _config(tmp_path, tiny_dataset, strategy="multi_worker", cluster_timeout=3.0)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "train.py", *_flags(config, tmp_path)], cwd=REPO, text=True,
        capture_output=True, env={**os.environ, "TF_CONFIG": json.dumps(tf_config),
                                  "SKIN_KERAS_CACHE": str(tmp_path / "new_cache")},
        timeout=120)
    assert result.returncode == -9  # Killed: TensorFlow ignores SIGTERM while it waits.
    assert "train.py: error: the cluster in TF_CONFIG did not come up within 3 s" in result.stderr
    assert f"worker 1 localhost:{ports[1]}" in result.stderr
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('["a:1"]', "must be a JSON object"),
    ('{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}',
     "host:port"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}}', '"task" must give'),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "ps", "index": 0}}',
     '"task" must give'),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "task index 2 is not one of the 2 worker addresses"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": true}}',
     "task index True is not one of"),
    ('{"cluster": {"worker": ["a:1", "b:99999"]}, "task": {"type": "worker", "index": 0}}',
     r"host:port addresses \(ports 1 to 65535\)"),
    ('{"cluster": {"chief": ["a:1"], "worker": ["b:1"], "ps": ["c:1"]}, '
     '"task": {"type": "ps", "index": 0}}', "names ps task\\(s\\): multi-worker training"),
])
def test_a_malformed_tf_config_is_named(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match=message):
        distribute.make_strategy("multi_worker", cluster_timeout=3.0)


def test_multi_worker_needs_a_cluster_and_refuses_folds(monkeypatch, tmp_path, tiny_dataset):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="needs TF_CONFIG"):
        distribute.make_strategy("multi_worker", cluster_timeout=3.0)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, '
                                    '"task": {"type": "worker", "index": 1}}')
    assert not distribute.is_chief_task()
    with pytest.raises(UserError, match="--folds does not run on a multi-worker cluster"):
        training.run(_config(tmp_path, tiny_dataset, folds=2, strategy="multi_worker"))


def test_mirrored_uses_the_two_logical_cpus():
    assert distribute.make_strategy("mirrored").num_replicas_in_sync == 2
    assert distribute.make_strategy("auto").num_replicas_in_sync == 1  # No GPU, no TF_CONFIG.


def test_batch_must_split_evenly_over_replicas():
    with pytest.raises(UserError, match="multiple of the 2 replicas"):
        distribute.check_batch_size(distribute.make_strategy("mirrored"), 7)


def test_replicas_validate_and_save_one_set_of_batchnorm_statistics():
    strategy = distribute.make_strategy("mirrored")
    x = np.random.RandomState(0).rand(32, 4).astype("float32") * np.arange(32)[:, None]
    y = keras.utils.to_categorical(np.arange(32) % 2, 2)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def replica_means(callbacks):
        with strategy.scope():
            model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(),
                                      keras.layers.Dense(2, activation="softmax")])
            model.compile("sgd", "categorical_crossentropy")
        if callbacks:
            callbacks = [distribute.AverageMovingStatistics(strategy, model)]
        model.fit(data, validation_data=data, epochs=1, verbose=0, callbacks=callbacks)
        copies = strategy.experimental_local_results(model.layers[0].moving_mean.value)
        return [copy.numpy() for copy in copies]

    apart = replica_means(False)  # Each replica saw other rows: its statistics differ.
    assert np.abs(apart[0] - apart[1]).max() > 1e-3
    first, second = replica_means(True)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, (apart[0] + apart[1]) / 2, rtol=1e-5)
