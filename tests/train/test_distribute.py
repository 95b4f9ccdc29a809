"""tf.distribute: the same data gives the same run on two mirrored replicas as on one device."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from skin_keras.core.errors import UserError
from skin_keras.train import distribute, epoch_log, loop

from conftest import tiny_config


def test_mirrored_uses_the_two_logical_cpus():
    assert distribute.make_strategy("mirrored").num_replicas_in_sync == 2
    assert distribute.make_strategy("auto").num_replicas_in_sync == 1  # No GPU, no TF_CONFIG.


@pytest.mark.slow
def test_mirrored_training_matches_one_device(tmp_path, tiny_dataset):
    # Frozen backbone (BatchNorm in inference mode) and no dropout: the replicas' halves of a
    # batch then give exactly the gradient of the whole batch, so only float rounding differs.
    runs = {}
    for strategy in ("one_device", "mirrored"):
        config = tiny_config(tmp_path / strategy, tiny_dataset, strategy=strategy,
                             freeze_layers=True, dropout=0.0, batch_size=8, lr=0.01,
                             deterministic=True, feature_cache="none", epochs=1)
        runs[strategy] = loop.train_and_evaluate(config, verbose=0)
    logs = {name: json.loads((run / "log.json").read_text()) for name, run in runs.items()}
    matrices = {name: json.loads((run / epoch_log.MATRICES_FILE).read_text())
                for name, run in runs.items()}
    assert matrices["mirrored"] == matrices["one_device"]
    for epoch in logs["one_device"]:
        for split in ("train info", "valid info"):
            single, mirrored = logs["one_device"][epoch][split], logs["mirrored"][epoch][split]
            assert mirrored["balanced accuracy"] == single["balanced accuracy"]
            assert mirrored["loss"] == pytest.approx(single["loss"], rel=1e-4)
    weights = {name: keras.models.load_model(run / "weights" / "last.keras").get_weights()[-2:]
               for name, run in runs.items()}
    for single, mirrored in zip(weights["one_device"], weights["mirrored"]):
        np.testing.assert_allclose(mirrored, single, rtol=1e-4, atol=1e-6)
    # The head did train: its bias starts at zero (Dense's initialiser) and moved.
    assert np.abs(weights["one_device"][1]).max() > 1e-4


def test_batch_must_split_evenly_over_replicas():
    with pytest.raises(UserError, match="multiple of the 2 replicas"):
        distribute.check_batch_size(distribute.make_strategy("mirrored"), 7)


def test_a_mixed_precision_the_cpu_can_only_emulate_is_said(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni\n")
    assert distribute.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx512f", "avx512_vnni"}
    assert distribute.cpu_flags(str(tmp_path / "absent")) is None
    monkeypatch.setattr(distribute, "cpu_flags", lambda: {"avx512f"})
    assert "no bfloat16 instructions" in distribute.precision_note("mixed_bfloat16")
    assert "emulate float16" in distribute.precision_note("mixed_float16")
    assert distribute.precision_note("float32") is None
    monkeypatch.setattr(distribute, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert distribute.precision_note("mixed_bfloat16") is None  # This machine's CPU.
    monkeypatch.setattr(distribute, "cpu_flags", lambda: None)  # Unknown: nothing to say.
    assert distribute.precision_note("mixed_bfloat16") is None


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
