"""The frozen-backbone feature cache: same features, same predictions, same run folder."""

import dataclasses
import json
import shutil

import keras
import numpy as np
import pytest

from skin_keras.data import folders, pipeline
from skin_keras.model import parts
from skin_keras.train import checkpoints as checkpointing
from skin_keras.train import feature_cache, loop

from conftest import (
    Killed,
    corrupt_files,
    kill_at_log_write,
    probabilities,
    tiny_config,
    tiny_model,
)


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory, tiny_dataset):
    # Undecodable training files (left out and named before the cache sees them) and colour
    # constancy in the model (computed once, inside the cached features).
    tmp_path = tmp_path_factory.mktemp("cached")
    shutil.copytree(tiny_dataset, tmp_path / "data")
    corrupt_files(tmp_path / "data" / "train" / "Melanoma")
    config = tiny_config(tmp_path, tmp_path / "data", freeze_layers=True, cache_views=2, lr=0.01,
                         color_constancy="shades_of_gray")
    return config, loop.train_and_evaluate(config, verbose=0)


def images_of(paths, size):
    return np.stack([pipeline.load_image(path, size).numpy() for path in paths])


def test_cached_features_are_the_backbone_features_of_each_view(tmp_path, tiny_dataset):
    model = tiny_model(freeze_layers=True)
    paths = folders.scan_image_folder(tiny_dataset / "val").paths[:4]
    cache = feature_cache.FeatureCache(tmp_path, model, "float32")
    features, ok = cache.features(paths, views=3)
    assert ok.all() and features.shape == (4, 3, 1280)
    extractor = parts.feature_model(model)
    for view, images in enumerate(pipeline.dihedral_views(images_of(paths, 32))[:3]):
        np.testing.assert_allclose(
            features[:, view], extractor.predict({"image": images}, verbose=0)["features"],
            rtol=1e-5, atol=1e-5)
    assert not np.allclose(features[:, 0], features[:, 1])  # The views differ.


def test_a_cache_that_cannot_be_written_computes_and_says_so(tmp_path, tiny_dataset, caplog):
    model = tiny_model(freeze_layers=True)
    paths = folders.scan_image_folder(tiny_dataset / "val").paths[:2]
    (tmp_path / "a_file").write_text("")  # Under a file, no folder can be made (as read-only).
    unwritable = feature_cache.FeatureCache(tmp_path / "a_file" / "cache", model, "float32")
    features, ok = unwritable.features(paths, views=1)
    expected, _ = feature_cache.FeatureCache(tmp_path / "ok", model, "float32").features(
        paths, views=1)
    assert ok.all()
    np.testing.assert_array_equal(features, expected)
    assert caplog.text.count("features are not cached") == 1


def test_the_cache_is_keyed_by_content_and_computes_nothing_twice(tmp_path, tiny_dataset,
                                                                  monkeypatch):
    model = tiny_model(freeze_layers=True)
    paths = folders.scan_image_folder(tiny_dataset / "val").paths[:3]
    cache = feature_cache.FeatureCache(tmp_path, model, "float32")
    first, _ = cache.features(paths, views=1)
    copy = tmp_path / "copy.jpg"  # Same content under another name: found in the cache.
    copy.write_bytes(open(paths[0], "rb").read())

    def fail(*args):
        raise AssertionError("computed again")

    monkeypatch.setattr(cache, "_compute", fail)
    again, _ = cache.features(list(paths) + [str(copy)], views=1)
    np.testing.assert_array_equal(again[:3], first)
    np.testing.assert_array_equal(again[3], first[0])
    with pytest.raises(AssertionError, match="computed again"):  # A view not cached yet.
        cache.features(paths, views=2)
    # Other weights or another size: another folder.
    other = tiny_model(freeze_layers=True)
    assert feature_cache.FeatureCache(tmp_path, other, "float32").folder != cache.folder
    bigger = tiny_model(freeze_layers=True, img_size=48)
    bigger.set_weights(model.get_weights())
    assert feature_cache.FeatureCache(tmp_path, bigger, "float32").folder != cache.folder


@pytest.mark.slow
def test_a_cached_run_writes_the_same_run_folder(cached_run, trained_run):
    config, run = cached_run
    dataset = json.loads((run / "train_params.json").read_text())["dataset"]
    assert dataset["trainset number"] == 37 and len(dataset["bad files"]) == 2
    assert "corrupt_scan.jpg" in dataset["decode warnings"][0]
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in trained_run.iterdir())
    log, plain_log = (json.loads((r / "log.json").read_text()) for r in (run, trained_run))
    assert list(log) == list(plain_log)
    for entry, plain in zip(log.values(), plain_log.values()):
        assert entry.keys() == plain.keys()
        assert entry["valid info"].keys() == plain["valid info"].keys()
    assert (run / "weights" / "best.keras").exists() and (run / "weights" / "last.keras").exists()


@pytest.mark.slow
def test_the_saved_model_predicts_on_images_what_the_head_learned_on_features(cached_run):
    config, run = cached_run
    model = keras.models.load_model(run / "weights" / "last.keras")
    assert parts.count_params(parts.backbone_of(model).weights) == parts.count_params(
        parts.backbone_of(tiny_model(img_size=config.img_size)).weights)  # Whole model.
    val = folders.scan_image_folder(config.data_val)
    on_images = probabilities(model, images_of(val.paths, config.img_size))
    cache = feature_cache.FeatureCache(config.feature_cache, model, "float32")
    features, _ = cache.features(val.paths, views=1)
    on_features = parts.head_model(model).predict({"features": features[:, 0]},
                                                  verbose=0)["probabilities"]
    np.testing.assert_allclose(on_images, on_features, rtol=1e-5, atol=1e-6)
    # The logged validation loss of the last epoch is the loss of the saved model on the images.
    last = json.loads((run / "log.json").read_text())[f"epoch:{config.epochs}"]
    loss = keras.losses.categorical_crossentropy(np.eye(3)[val.labels], on_images)
    assert last["valid info"]["loss"] == pytest.approx(float(np.mean(loss)), rel=1e-4)


def test_augmentation_that_changes_images_turns_the_cache_off(tmp_path, tiny_dataset):
    assert tiny_config(tmp_path, tiny_dataset, freeze_layers=True).feature_cache_blocker is None
    assert "crop_scale" in tiny_config(tmp_path, tiny_dataset, freeze_layers=True,
                                       crop_scale=0.5).feature_cache_blocker
    assert "trains" in tiny_config(tmp_path, tiny_dataset).feature_cache_blocker


def saved_val_loss(path, config):
    """Validation loss of a saved model on the images (what log.json records)."""
    model = keras.models.load_model(path)
    val = folders.scan_image_folder(config.data_val)
    answer = probabilities(model, images_of(val.paths, config.img_size))
    return float(np.mean(keras.losses.categorical_crossentropy(np.eye(3)[val.labels],
                                                               answer))), model


@pytest.mark.slow
def test_a_run_killed_in_the_cached_head_phase_resumes_from_the_head_checkpoint(
        tmp_path, tiny_dataset, monkeypatch):
    # The head trains on cached features and the full model is saved only when that phase
    # ends; the epochs in between live in weights/head_checkpoint.npz. Kill the run between
    # writing epoch 3's checkpoint and its log entry: the checkpoint is then one epoch ahead.
    config = tiny_config(tmp_path, tiny_dataset, freeze_layers=True, epochs=6, lr=0.05)
    # Uninterrupted first: best.keras and last.keras hold their epochs.
    check_best_and_last(loop.train_and_evaluate(config, verbose=0), config)
    kill_at_log_write(monkeypatch, epochs_logged=3)
    with pytest.raises(Killed):
        loop.train_and_evaluate(config, verbose=0)
    monkeypatch.undo()
    run = tmp_path / "runs" / "exp2"
    checkpoint = run / "weights" / checkpointing.HEAD_CHECKPOINT
    assert sorted(checkpointing.read_head_checkpoint(checkpoint)) == [2, 3]
    assert len(json.loads((run / "log.json").read_text())) == 2

    loop.train_and_evaluate(dataclasses.replace(config, resume=str(run)), verbose=0)
    log = json.loads((run / "log.json").read_text())
    assert list(log) == [f"epoch:{n}" for n in range(1, 7)]
    assert not checkpoint.exists()
    # Epoch 3 was done again from epoch 2's state: 6 epochs of 5 steps, not 7.
    assert int(check_best_and_last(run, config).optimizer.iterations) == 6 * 5


def check_best_and_last(run, config) -> keras.Model:
    """best.keras and last.keras give the logged validation loss of their epochs; returns the
    last model."""
    log = json.loads((run / "log.json").read_text())
    assert not (run / "weights" / checkpointing.HEAD_CHECKPOINT).exists()
    loss, last = saved_val_loss(run / "weights" / "last.keras", config)
    assert loss == pytest.approx(log[f"epoch:{len(log)}"]["valid info"]["loss"], rel=1e-4)
    # The best epoch by val balanced accuracy (the first of equals), here not the last one.
    accuracies = [entry["valid info"]["balanced accuracy"] for entry in log.values()]
    best = accuracies.index(max(accuracies)) + 1
    assert best < len(log)
    loss, _ = saved_val_loss(run / "weights" / "best.keras", config)
    assert loss == pytest.approx(log[f"epoch:{best}"]["valid info"]["loss"], rel=1e-4)
    return last
