"""Progressive learning: image size and regularisation grow stage by stage (EfficientNetV2)."""

import json

import keras
import pytest

from skin_keras.model import parts
from skin_keras.train import loop, recipe

from conftest import tiny_config


def test_stage_plan_grows_size_and_regularisation_linearly(tmp_path):
    config = tiny_config(tmp_path, tmp_path, epochs=10, progressive_stages=3, img_size=128,
                         min_img_size=64, dropout=0.3, min_dropout=0.1,
                         randaugment_magnitude=0.6, min_randaugment_magnitude=0.2,
                         mixup_alpha=0.2)
    stages = recipe.stage_plan(config)
    assert [(s.first_epoch, s.last_epoch) for s in stages] == [(0, 3), (3, 7), (7, 10)]
    assert [s.img_size for s in stages] == [64, 96, 128]
    assert [round(s.dropout, 6) for s in stages] == [0.1, 0.2, 0.3]
    assert [round(s.randaugment_magnitude, 6) for s in stages] == [0.2, 0.4, 0.6]
    assert [round(s.mixup_alpha, 6) for s in stages] == [0.0, 0.1, 0.2]
    single = recipe.stage_plan(tiny_config(tmp_path, tmp_path, epochs=4, dropout=0.3))
    assert [(s.first_epoch, s.last_epoch, s.img_size, s.dropout) for s in single] == [
        (0, 4, 32, 0.3)]
    tuned = recipe.stage_plan(tiny_config(tmp_path, tmp_path, epochs=4, freeze_layers=True,
                                            finetune_epochs=3))
    assert [(s.first_epoch, s.last_epoch, s.finetune) for s in tuned] == [(0, 4, False),
                                                                        (4, 7, True)]
    halves = recipe.stage_plan(tiny_config(tmp_path, tmp_path, epochs=4, img_size=224,
                                             progressive_stages=2))
    assert [s.img_size for s in halves] == [112, 224]  # Default start: half the size.


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["b0", "lite0"])
def test_progressive_run_trains_one_model_at_growing_sizes(tmp_path, tiny_dataset, backbone):
    config = tiny_config(tmp_path, tiny_dataset, epochs=3, progressive_stages=3, img_size=64,
                         min_img_size=32, dropout=0.3, min_dropout=0.1, freeze_layers=True,
                         model=backbone)
    run = loop.train_and_evaluate(config, verbose=0)
    log = json.loads((run / "log.json").read_text())
    assert [entry["stage"]["img_size"] for entry in log.values()] == [32, 48, 64]
    assert [entry["stage"]["dropout"] for entry in log.values()] == [0.1, 0.2, 0.3]
    lrs = [entry["lr"] for entry in log.values()]
    assert lrs == sorted(lrs, reverse=True)  # One schedule across the stages.
    model = keras.models.load_model(run / "weights" / "last.keras")
    assert parts.image_size(model) == 64  # The saved model keeps the final size.
    assert model.get_layer("head_dropout").rate == pytest.approx(0.3)
