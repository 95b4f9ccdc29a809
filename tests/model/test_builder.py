"""Model building for every --model, frozen-backbone semantics, local weights and FLOPs."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from skin_keras.core.errors import UserError
from skin_keras.model import builder, fused_batch_norm, io, parts
from skin_keras.model.spec import BACKBONES

import small_b0
from conftest import probabilities, tiny_model


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_model_builds_and_a_frozen_backbone_leaves_only_the_head(name):
    model = tiny_model(8, model=name, freeze_layers=True)
    features = parts.backbone_of(model).output_shape[-1]
    assert parts.count_params(model.trainable_weights) == features * 8 + 8
    if name in ("s", "m", "l", "b0"):
        assert parts.count_params(model.trainable_weights) == 10_248  # The seed's figure.
    assert io.input_names(model) == ("image",)
    assert {name: tuple(t.shape) for name, t in io.output_dict(model).items()} == {
        "probabilities": (None, 8)}
    assert parts.image_size(model) == 32


def test_the_suites_b0_is_the_real_b0_at_a_quarter_of_its_depth():
    real = small_b0.REAL_B0(include_top=False, weights=None, input_shape=(None, None, 3))
    small = builder.build_backbone("b0", weights="none")  # What tests in this process get.
    assert real.count_params() == 5_919_312 and small.count_params() < real.count_params() / 3
    assert {type(layer) for layer in small.layers} == {type(layer) for layer in real.layers}
    named = {layer.name for layer in small.layers if not re.search(r"_[0-9]+$", layer.name)}
    assert named < {layer.name for layer in real.layers}  # The same names, fewer blocks.
    assert {"block5b_add", "block6b_add", "top_activation"} <= named


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'x'; choose one of s, m, l, b0"):
        builder.build_backbone("x", weights="none")


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics_when_training():
    model = tiny_model(freeze_layers=True)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    backbone = parts.backbone_of(model)
    before = [w.copy() for w in backbone.get_weights()]  # Includes BN moving mean/variance.
    head_before = model.get_layer("predictions").get_weights()[0].copy()
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.train_on_batch({"image": images}, np.eye(3)[[0, 1, 2, 0]])
    for old, new in zip(before, backbone.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert not np.array_equal(head_before, model.get_layer("predictions").get_weights()[0])


def test_a_frozen_backbone_computes_in_training_what_it_computes_in_inference(tmp_path):
    # Keras passes fit()'s training=True into nested models; stochastic depth must not apply.
    model = tiny_model(freeze_layers=True, dropout=0.0)
    images = {"image": np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")}
    inference = model(images, training=False)["probabilities"].numpy()
    np.testing.assert_array_equal(model(images, training=True)["probabilities"].numpy(),
                                  inference)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded(images, training=True)["probabilities"].numpy(),
                                  inference)


def test_unfrozen_backbone_from_scratch_trains():
    model = tiny_model()
    assert parts.count_params(model.trainable_weights) > 1_000_000
    # Only BatchNorm's statistics are not trained.
    assert {v.path.rsplit("/", 1)[1] for v in model.non_trainable_weights} == {
        "moving_mean", "moving_variance"}


def test_weights_from_a_local_file_round_trip(tmp_path):
    source = tiny_model()
    path = tmp_path / "backbone.weights.h5"
    parts.backbone_of(source).save_weights(path)
    loaded = tiny_model(5, weights=str(path), freeze_layers=True)
    for expected, actual in zip(parts.backbone_of(source).get_weights(),
                                parts.backbone_of(loaded).get_weights()):
        np.testing.assert_array_equal(expected, actual)
    with pytest.raises(UserError, match="does not fit EfficientNetV2-B1"):
        builder.build_backbone("b1", weights=str(path))
    with pytest.raises(UserError, match="no such file"):
        builder.build_backbone("b0", weights=str(tmp_path / "missing.h5"))


def test_imagenet_download_failure_explains_how_to_work_offline(monkeypatch):
    from keras.src.applications import efficientnet_v2  # pylint: disable=g-import-not-at-top

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example/efficientnetv2-b0_notop.h5")

    monkeypatch.setattr(efficientnet_v2.file_utils, "get_file", offline)
    with pytest.raises(UserError, match="copy efficientnetv2-b0_notop.h5 into .*models/ or pass "
                       "--weights=PATH_TO_FILE; --model=lite0 is pretrained and works offline"):
        builder.build_backbone("b0", weights="imagenet")


def test_flops_are_counted_by_the_profiler_and_grow_with_image_area():
    small = parts.count_flops(tiny_model(8))
    large = parts.count_flops(tiny_model(8, img_size=64))
    assert small > 1e7
    assert 3.5 < large / small < 4.5


@pytest.mark.parametrize("policy, tolerance", [("float32", (1e-4, 1e-5)),
                                               ("mixed_bfloat16", (3e-2, 3e-2))])
def test_the_fused_batchnorm_kernel_computes_what_keras_computes(policy, tolerance):
    def model_and_step(fused):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Conv2D(4, 3, dtype=policy),
                                  keras.layers.BatchNormalization(momentum=0.5, dtype=policy),
                                  keras.layers.GlobalAveragePooling2D(dtype=policy),
                                  keras.layers.Dense(2, dtype="float32")])
        if fused:
            assert fused_batch_norm.use_fused_kernel(model) == 1
            assert fused_batch_norm.use_fused_kernel(model) == 0  # Once.
        images = np.random.default_rng(1).normal(3.0, 2.0, (4, 6, 5, 3)).astype("float32")
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            loss = tf.reduce_sum(outputs ** 2)
        gradients = tape.gradient(loss, model.trainable_weights)
        norm = model.layers[1]
        return (outputs.numpy(), [g.numpy() for g in gradients], norm.moving_mean.numpy(),
                norm.moving_variance.numpy(), model(images, training=False).numpy())

    keras_answer, fused_answer = model_and_step(False), model_and_step(True)
    for theirs, ours in zip(keras_answer, fused_answer):
        for a, b in zip(theirs if isinstance(theirs, list) else [theirs],
                        ours if isinstance(ours, list) else [ours]):
            np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32),
                                       rtol=tolerance[0], atol=tolerance[1])
    # Moving statistics did move (from 0 and 1), so the comparison covers the update.
    assert np.abs(fused_answer[2]).max() > 0.1 and np.abs(fused_answer[3] - 1).max() > 0.1


def test_the_fused_batchnorm_is_a_choice_of_the_spec():
    fused, plain = tiny_model(batch_norm="fused"), tiny_model(batch_norm="keras")
    assert all(getattr(layer, "_skin_keras_fused", False)
               for layer in fused_batch_norm.batch_norm_layers(parts.backbone_of(fused)))
    assert not any(getattr(layer, "_skin_keras_fused", False)
                   for layer in fused_batch_norm.batch_norm_layers(parts.backbone_of(plain)))
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    plain.set_weights(fused.get_weights())
    np.testing.assert_allclose(probabilities(fused, images), probabilities(plain, images),
                               atol=1e-6)


@pytest.mark.parametrize("train_batch_norm", [False, True])
def test_a_pretrained_backbone_learns_batchnorm_statistics_only_when_asked(tmp_path,
                                                                           train_batch_norm):
    path = tmp_path / "backbone.weights.h5"
    parts.backbone_of(tiny_model()).save_weights(path)  # Stands in for ImageNet's weights.
    model = tiny_model(weights=str(path), train_batch_norm=train_batch_norm)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    norm = next(layer for layer in parts.backbone_of(model).layers
                if isinstance(layer, keras.layers.BatchNormalization))
    before = norm.moving_mean.numpy().copy()
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.train_on_batch({"image": images}, np.eye(3)[[0, 1, 2, 0]])
    assert norm.trainable is train_batch_norm
    assert np.array_equal(before, norm.moving_mean.numpy()) is not train_batch_norm
