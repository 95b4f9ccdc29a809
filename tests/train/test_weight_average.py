"""--average_epochs: weights/averaged.keras is the mean of the last epochs' weights, with
BatchNorm statistics of training images; the session's model is left as it was."""

import types

import keras
import numpy as np
import pytest

from skin_keras.core.errors import UserError
from skin_keras.data import folders
from skin_keras.model import record
from skin_keras.train.weight_average import AVERAGED, WeightAverage

from conftest import CLASSES, tiny_config, tiny_model


def test_the_average_of_the_last_epochs_is_written_and_the_model_left_alone(tmp_path,
                                                                           tiny_dataset):
    model = tiny_model()
    (tmp_path / "weights").mkdir()
    session = types.SimpleNamespace(
        model=model, run_dir=tmp_path, config=types.SimpleNamespace(seed=0, sampling="balanced"),
        data=types.SimpleNamespace(train=folders.scan_image_folder(tiny_dataset / "train"),
                                   strata=None),
        info=record.ModelInfo.of(model, list(CLASSES)), log=types.SimpleNamespace(epochs=0))
    averager = WeightAverage(session, epochs=2, last=3)
    rng = np.random.default_rng(0)
    seen = []
    for epoch in range(3):  # Epochs 1, 2, 3: the last two are averaged.
        for variable in model.trainable_variables:
            variable.assign(rng.normal(size=variable.shape).astype(np.float32))
        seen.append([v.numpy().copy() for v in model.trainable_variables])
        averager.on_epoch_end(epoch)
    np.testing.assert_array_equal(model.trainable_variables[0].numpy(), seen[2][0])  # Kept.
    averaged = keras.models.load_model(tmp_path / "weights" / AVERAGED)
    for variable, first, second in zip(averaged.trainable_variables, seen[1], seen[2]):
        np.testing.assert_allclose(variable.numpy(), (first + second) / 2, rtol=1e-6,
                                   atol=1e-6)
    moved = [a.numpy() for a in averaged.non_trainable_variables if "moving_mean" in a.path]
    assert any(np.abs(m).max() > 0 for m in moved)  # Statistics of the training images.


@pytest.mark.parametrize("killed_before_the_sum", [False, True])
def test_a_resumed_run_averages_the_same_epochs(tmp_path, tiny_dataset, killed_before_the_sum):
    # Reliability 2026-12-07 S5: after --resume, averaged.keras was the last epoch alone.
    model = tiny_model()
    (tmp_path / "weights").mkdir()
    log = types.SimpleNamespace(epochs=0)
    session = types.SimpleNamespace(
        model=model, run_dir=tmp_path, config=types.SimpleNamespace(seed=0, sampling="balanced"),
        data=types.SimpleNamespace(train=folders.scan_image_folder(tiny_dataset / "train"),
                                   strata=None),
        info=record.ModelInfo.of(model, list(CLASSES)), log=log)
    rng = np.random.default_rng(0)
    seen = []

    def epoch(averager, number, counted=True):
        for variable in model.trainable_variables:
            variable.assign(rng.normal(size=variable.shape).astype(np.float32))
        seen.append([v.numpy().copy() for v in model.trainable_variables])
        log.epochs = number  # log.json is written before the averager's turn.
        if counted:
            averager.on_epoch_end(number - 1)

    first = WeightAverage(session, epochs=3, last=4)  # Epochs 2, 3, 4.
    first.on_train_begin()
    for number in (1, 2):
        epoch(first, number)
    epoch(first, 3, counted=not killed_before_the_sum)  # Then the power goes.
    resumed = WeightAverage(session, epochs=3, last=4)
    resumed.on_train_begin()  # The model holds epoch 3's weights, as last.keras does.
    epoch(resumed, 4)
    averaged = keras.models.load_model(tmp_path / "weights" / AVERAGED)
    for variable, *values in zip(averaged.trainable_variables, *seen[1:]):
        np.testing.assert_allclose(variable.numpy(), sum(values) / 3, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "weights" / "average_sum.npz").exists()


def test_averaging_needs_the_images_every_epoch_and_enough_epochs(tmp_path, tiny_dataset):
    with pytest.raises(UserError, match="--average_epochs=3: the run has only 2 epochs"):
        tiny_config(tmp_path, tiny_dataset, average_epochs=3)
    with pytest.raises(UserError, match="needs the images every epoch"):
        tiny_config(tmp_path, tiny_dataset, average_epochs=1, freeze_layers=True,
                    feature_cache=str(tmp_path))


@pytest.mark.slow
def test_a_run_with_average_epochs_writes_the_averaged_model(tmp_path, tiny_dataset):
    from skin_keras.infer import load  # pylint: disable=g-import-not-at-top
    from skin_keras.train import loop  # pylint: disable=g-import-not-at-top

    run = loop.train_and_evaluate(tiny_config(tmp_path, tiny_dataset, epochs=1,
                                              average_epochs=1), verbose=0)
    averaged = load.load(run / "weights" / AVERAGED)
    assert averaged.class_names == list(CLASSES)
