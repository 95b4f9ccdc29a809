"""Colour constancy in the model, the dermoscopy-aware augmentations, the shifts and the
robustness report."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from skin_keras.data import augment as augmentation_lib
from skin_keras.model.layers import color_constancy
from skin_keras.evaluate import evaluation
from skin_keras import \
    feature_cache, input_pipeline, models, robustness, shifts
from skin_keras.core.errors import UserError


def real_images(ham_200px, count=6, size=64):
    paths = sorted((ham_200px / "ISIC_2019_Training_Input").glob("*.jpg"))[:count]
    return np.stack([input_pipeline.load_image(str(p), size).numpy() for p in paths])


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
    plain = models.build_model("b0", 3, 32, weights="none", freeze_backbone=True)
    balanced = models.build_model("b0", 3, 32, weights="none", freeze_backbone=True,
                                  color_constancy="shades_of_gray", cc_power=4.0)
    balanced.set_weights(plain.get_weights())  # Same backbone and head weights.
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    images[..., 2] *= 0.5  # A colour cast for the layer to remove.
    assert not np.allclose(plain(images).numpy(), balanced(images).numpy())
    balanced.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(loaded(images).numpy(), balanced(images).numpy(), atol=1e-6)
    layer = loaded.get_layer("color_constancy")
    assert (layer.method, layer.power) == ("shades_of_gray", 4.0)
    assert models.describe_preprocessing(loaded) == "shades of gray (p=4) colour constancy"
    # The cache folder depends on the preprocessing, not only on the backbone's weights.
    folders = {feature_cache.FeatureCache(tmp_path, model, "float32").folder
               for model in (plain, balanced, loaded)}
    assert len(folders) == 2
    # Mixed precision elsewhere: the layer still computes in float32.
    assert balanced.get_layer("color_constancy").compute_dtype == "float32"


@pytest.mark.parametrize("name", shifts.NAMES)
def test_every_shift_changes_the_image_the_same_way_for_a_seed(ham_200px, name):
    path = sorted((ham_200px / "ISIC_2019_Training_Input").glob("*.jpg"))[0]
    with Image.open(path) as image:
        original = np.asarray(image.convert("RGB"), np.float32)
        first = shifts.shifted(name, image, seed=3)
        again = shifts.shifted(name, image, seed=3)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    shifted = np.asarray(first.convert("RGB"), np.float32)
    if shifted.shape == original.shape:
        assert np.abs(shifted - original).mean() > 2.0, name
    else:
        assert name in ("zoom_in", "square_crop")
    if name == "square_crop":
        assert first.size[0] == first.size[1] == min(original.shape[:2])
    if name in ("vignette", "corners"):
        assert shifted[0, 0].max() < 20 and shifted[0, 0].max() < original[0, 0].max()


def one_image_dataset(image, augmentation, count=16):
    dataset = tf.data.Dataset.from_tensors(tf.constant(image)).repeat(count)
    return np.stack([augmentation_lib.augment(x, augmentation).numpy() for x in dataset])


@pytest.mark.parametrize("field, value", [
    ("zoom_out", 2.0), ("illuminant_jitter", 0.3), ("gamma_jitter", 0.4), ("vignette_prob", 1.0),
    ("blur_prob", 1.0), ("jpeg_prob", 1.0)])
def test_each_clinic_augmentation_changes_pixels_within_range(ham_200px, field, value):
    image = real_images(ham_200px, count=1, size=48)[0]
    tf.random.set_seed(0)
    plain = one_image_dataset(image, augmentation_lib.Augmentation())
    changed = one_image_dataset(image, augmentation_lib.Augmentation(**{field: value}))
    assert changed.shape == plain.shape == (16, 48, 48, 3)
    assert changed.min() >= 0 and changed.max() <= 255
    views = [np.rot90(f, k) for f in (image, image[:, ::-1]) for k in range(4)]
    # Not just one of the flips/turns that always happen (a zoom near 1 may change nothing).
    assert np.median([min(np.abs(x - v).mean() for v in views) for x in changed]) > 0.5, field
    if field == "vignette_prob":
        corners = changed[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert np.mean(corners.max(axis=-1) < 40) > 0.5  # Mostly dark corners.
    if field == "illuminant_jitter":
        ratios = changed.reshape(16, -1, 3).mean(1) / image.reshape(-1, 3).mean(0)
        assert ratios.std(axis=1).max() > 0.02  # The channels moved apart.


def test_crop_decodes_through_the_one_decode_and_resize(ham_200px):
    contents = tf.io.read_file(str(sorted(
        (ham_200px / "ISIC_2019_Training_Input").glob("*.jpg"))[0]))
    whole = input_pipeline.decode_and_resize(contents, 48).numpy()
    same = input_pipeline.decode_and_resize(contents, 48, crop=lambda image: image).numpy()
    np.testing.assert_array_equal(whole, same)
    augmentation = augmentation_lib.Augmentation(crop_scale=0.25, crop_aspect=2.0)
    assert augmentation.decode_size(48) == 136  # 48 * sqrt(2 / 0.25): enough pixels to crop.
    crop = input_pipeline.decode_and_resize(
        contents, 48, crop=lambda image: augmentation_lib.random_crop(image, augmentation),
        decode_size=augmentation.decode_size(48)).numpy()
    assert crop.shape == (48, 48, 3) and np.abs(crop - whole).mean() > 1


def test_unknown_shift_names_are_refused():
    with pytest.raises(UserError, match="unknown --shifts=fog; choose one of all, warm"):
        evaluation.EvaluateConfig(model_path="m", data="d", shifts=("warm", "fog"))


@pytest.mark.slow
def test_robustness_report_has_each_shift_asked_for_and_its_clean_row_is_plain_evaluate(
        trained_run, tiny_dataset, tmp_path):
    # Three shifts, in the report's order whatever the order asked (every shift's pixels:
    # test_every_shift_changes_the_image_the_same_way_for_a_seed); "all" names every one.
    assert robustness.shift_names(("all",)) == list(shifts.NAMES)
    chosen = ["vignette", "zoom_out", "jpeg30"]
    assert robustness.shift_names(chosen[::-1]) == chosen
    result = evaluation.evaluate_model_path(trained_run, tiny_dataset / "val", tmp_path / "r",
                                            batch_size=8, shift_names=tuple(chosen[::-1]))
    plain = evaluation.evaluate_model_path(trained_run, tiny_dataset / "val", tmp_path / "p",
                                           batch_size=8)
    saved = json.loads((tmp_path / "r" / "robustness.json").read_text())
    assert saved == result
    assert list(result["shifts"]) == ["clean", *chosen]
    clean = result["shifts"]["clean"]
    assert clean["balanced accuracy"] == plain["balanced accuracy"]
    assert clean["mean roc auc"] == plain["mean roc auc"]
    assert clean["drop"] == 0
    for name in chosen:
        row = result["shifts"][name]
        assert row["drop"] == pytest.approx(clean["balanced accuracy"] - row["balanced accuracy"])
        assert set(row["recall"]) == set(plain) & set(row["recall"])
        metrics = json.loads((tmp_path / "r" / "shifts" / name / "metrics.json").read_text())
        assert metrics["balanced accuracy"] == row["balanced accuracy"]
        assert metrics["images"] == 15
    assert result["worst drop"] == max(result["shifts"][n]["drop"] for n in chosen)
    assert (tmp_path / "r" / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    # The plain report's files are the clean row's.
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["balanced accuracy"] == \
        plain["balanced accuracy"]


