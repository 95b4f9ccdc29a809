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
        info=record.ModelInfo.of(model, list(CLASSES)))
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
