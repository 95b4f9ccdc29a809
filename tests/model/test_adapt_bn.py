"""Test-time adaptation of BatchNorm statistics: every layer's moving statistics become those of
its inputs on the new images, nothing else changes, and evaluate.py --adapt_bn uses them."""

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from skin_keras.data import pipeline
from skin_keras.model import adapt_bn
from skin_keras.model import parts
from skin_keras.model.fused_batch_norm import batch_norm_layers

from conftest import tiny_model


def test_statistics_become_those_of_the_new_images_and_nothing_else_changes(tmp_path):
    model = tiny_model(freeze_layers=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(12):  # A "clinic" whose images are dark and blue.
        pixels = rng.integers(0, 256, (40, 40, 3)) * np.array([0.3, 0.4, 0.9])
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(pixels.astype(np.uint8)).save(paths[-1])
    layers = batch_norm_layers(model)
    before = {id(layer): (layer.trainable, layer.momentum) for layer in layers}
    others = [w.numpy().copy() for w in model.weights
              if "moving" not in w.path]
    used = adapt_bn.adapt_batch_norm(model, [str(p) for p in paths])
    assert used == 12
    assert {id(layer): (layer.trainable, layer.momentum) for layer in layers} == before
    np.testing.assert_array_equal(
        np.concatenate([w.ravel() for w in others]),
        np.concatenate([w.numpy().ravel() for w in model.weights if "moving" not in w.path]))
    # The stem's BatchNorm: its moving mean is the mean of its input over the new images.
    backbone = parts.backbone_of(model)
    stem_bn = backbone.get_layer("stem_bn")
    probe = keras.Model(backbone.inputs, stem_bn.input)
    images = tf.stack([pipeline.load_image(tf.constant(str(p)), 32) for p in paths])
    features = probe(images, training=False).numpy()
    np.testing.assert_allclose(stem_bn.moving_mean.numpy(), features.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stem_bn.moving_variance.numpy(), features.var(axis=(0, 1, 2)),
                               rtol=1e-3, atol=1e-4)


def test_evaluate_adapts_on_the_evaluated_images_and_leaves_the_file_alone(untrained_run,
                                                                          tiny_dataset,
                                                                          tmp_path):
    from skin_keras.evaluate import evaluation  # pylint: disable=g-import-not-at-top

    model_file = untrained_run / "weights" / "best.keras"
    digest = model_file.read_bytes()

    def evaluate(output, **options):
        return evaluation.evaluate_model_path(evaluation.EvaluateConfig(
            model_path=str(untrained_run), data=str(tiny_dataset / "val"),
            output=str(tmp_path / output), bootstrap=0, **options))

    plain, adapted = evaluate("plain"), evaluate("adapted", adapt_bn=True)
    assert adapted["batch_norm_adapted"] and not plain["batch_norm_adapted"]
    assert adapted["calibration"] != plain["calibration"]  # Other probabilities.
    assert model_file.read_bytes() == digest


def test_many_images_are_taken_a_chunk_at_a_time(tmp_path, monkeypatch):
    # 512 images of 192 px in one batch held 20 GB for Lite0 and were killed (2026-12-07).
    monkeypatch.setattr(adapt_bn, "CHUNK", 5)  # Chunks of 5, 5 and 2 of the 12 images.
    model = tiny_model(freeze_layers=True)
    rng = np.random.default_rng(1)
    paths = []
    for index in range(12):
        pixels = rng.integers(0, 256, (40, 40, 3)) * rng.uniform(0.2, 1.0, 3)
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(pixels.astype(np.uint8)).save(paths[-1])
    assert adapt_bn.adapt_batch_norm(model, [str(p) for p in paths]) == 12
    stem_bn = parts.backbone_of(model).get_layer("stem_bn")
    probe = keras.Model(parts.backbone_of(model).inputs, stem_bn.input)
    images = tf.stack([pipeline.load_image(tf.constant(str(p)), 32) for p in sorted(
        paths, key=lambda p: int(p.stem))])
    features = probe(images, training=False).numpy()
    chunks = [features[0:5], features[5:10], features[10:12]]
    np.testing.assert_allclose(stem_bn.moving_mean.numpy(), features.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-4)  # The mean over all the images.
    expected = sum(len(c) * c.var(axis=(0, 1, 2)) for c in chunks) / 12
    np.testing.assert_allclose(stem_bn.moving_variance.numpy(), expected, rtol=1e-3, atol=1e-4)
