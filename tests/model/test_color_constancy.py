"""Colour constancy as the model's first layer: equal to its NumPy reference on real images,
defined on any image, saved with the model, and part of the feature cache's key."""

import keras
import numpy as np
import pytest

from skin_keras.data import pipeline
from skin_keras.model import parts
from skin_keras.model.layers import color_constancy
from skin_keras.train import feature_cache

from conftest import probabilities, tiny_model


def real_images(ham_200px, count=6, size=64):
    paths = sorted((ham_200px / "ISIC_2019_Training_Input").glob("*.jpg"))[:count]
    return np.stack([pipeline.load_image(str(p), size).numpy() for p in paths])


@pytest.mark.parametrize("method, power", [("shades_of_gray", 6.0), ("gray_world", 1.0),
                                           ("shades_of_gray", 2.5)])
def test_color_constancy_equals_the_numpy_reference_on_real_images(ham_200px, method, power):
    images = real_images(ham_200px)
    layer = color_constancy.ColorConstancy(method, power)
    np.testing.assert_allclose(layer(images).numpy(),
                               color_constancy.reference(images, method, power), atol=2e-3)
    # The illuminant estimate of the output is grey: equal channels (up to clipping at 255).
    out = color_constancy.reference(images, method, power)
    p = color_constancy.power_of(method, power)
    estimate = np.mean((out / 255) ** p, axis=(1, 2)) ** (1 / p)
    assert np.all(estimate.std(axis=1) < 0.03 * estimate.mean(axis=1))
    assert np.all(images.reshape(len(images), -1, 3).mean(1).std(1) > 10)  # Inputs were not.


@pytest.mark.parametrize("method", ["shades_of_gray", "gray_world"])
def test_color_constancy_is_defined_on_black_and_single_channel_images(method):
    layer = color_constancy.ColorConstancy(method, 6.0)
    images = np.zeros((3, 8, 8, 3), np.float32)
    images[1, ..., 0] = 200.0  # Pure red: two channels all zero.
    images[2] = 255.0
    out = layer(images).numpy()
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[2], 255)
    with pytest.raises(ValueError, match="power=0"):
        color_constancy.ColorConstancy("shades_of_gray", 0.0)


def test_a_model_with_color_constancy_saves_loads_and_caches_under_another_key(tmp_path):
    plain = tiny_model(freeze_layers=True)
    balanced = tiny_model(freeze_layers=True, color_constancy="shades_of_gray", cc_power=4.0)
    balanced.set_weights(plain.get_weights())  # Same backbone and head weights.
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    images[..., 2] *= 0.5  # A colour cast for the layer to remove.
    assert not np.allclose(probabilities(plain, images), probabilities(balanced, images))
    balanced.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(probabilities(loaded, images), probabilities(balanced, images),
                               atol=1e-6)
    layer = loaded.get_layer("color_constancy")
    assert (layer.method, layer.power) == ("shades_of_gray", 4.0)
    assert parts.describe_preprocessing(loaded) == "shades of gray (p=4) colour constancy"
    # The cache folder depends on the preprocessing, not only on the backbone's weights.
    folders = {feature_cache.FeatureCache(tmp_path, model, "float32").folder
               for model in (plain, balanced, loaded)}
    assert len(folders) == 2
    # Mixed precision elsewhere: the layer still computes in float32.
    assert balanced.get_layer("color_constancy").compute_dtype == "float32"
