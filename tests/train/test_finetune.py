"""Staged fine-tuning: frozen-head epochs, then the top blocks unfrozen with BatchNorm frozen."""

import json

import keras
import numpy as np
import pytest

from skin_keras.model import builder, parts
from skin_keras.train import loop

from conftest import tiny_config, tiny_model


def test_unfreeze_top_blocks_keeps_batchnorm_and_lower_blocks_frozen():
    model = tiny_model(freeze_layers=True)
    backbone = parts.backbone_of(model)
    builder.unfreeze_top_blocks(backbone, 1)
    trainable = [layer.name for layer in backbone.layers if layer.trainable and layer.weights]
    assert trainable and all(name.startswith(("block6", "top_conv")) for name in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                   for layer in backbone.layers)
    # One training step changes the top block only; BatchNorm statistics stay as they were.
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    before = {w.path: w.numpy().copy() for w in backbone.weights}
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.train_on_batch(images, np.eye(3)[[0, 1, 2, 0]])
    changed = {w.path for w in backbone.weights if not np.array_equal(before[w.path], w.numpy())}
    assert changed and all("block6" in path or "top_conv" in path for path in changed)
    assert not any("_bn/" in path for path in changed)
    builder.unfreeze_top_blocks(backbone, 0)
    assert backbone.get_layer("stem_conv").trainable
    assert not backbone.get_layer("stem_bn").trainable


@pytest.mark.slow
def test_finetune_phase_continues_the_log_and_trains_only_the_top(tmp_path, tiny_dataset, caplog):
    config = tiny_config(tmp_path, tiny_dataset, epochs=1, freeze_layers=True, finetune_epochs=1,
                         unfreeze_blocks=1, finetune_lr=1e-3)
    run = loop.train_and_evaluate(config, verbose=0)
    log = json.loads((run / "log.json").read_text())
    assert list(log) == ["epoch:1", "epoch:2"]
    assert "fine-tuning: epochs 2-2" in caplog.text
    last = parts.backbone_of(keras.models.load_model(run / "weights" / "last.keras"))
    assert last.get_layer("block6a_expand_conv").trainable
    assert not last.get_layer("stem_conv").trainable
    assert np.isfinite(log["epoch:2"]["train info"]["loss"])
