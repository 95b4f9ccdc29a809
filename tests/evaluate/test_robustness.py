"""The simulated shifts of another clinic's images, the training augmentations that mimic them
(on real images), and the robustness report."""

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from skin_keras.core.errors import UserError
from skin_keras.data import augment_ops, folders, pipeline
from skin_keras.data.augmentation import Augmentation
from skin_keras.evaluate import evaluation, robustness, shifts
from skin_keras.evaluate.evaluation import EvaluateConfig


def real_images(ham_200px, count=6, size=64):
    paths = sorted((ham_200px / "ISIC_2019_Training_Input").glob("*.jpg"))[:count]
    return np.stack([pipeline.load_image(str(p), size).numpy() for p in paths])


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
    return np.stack([augment_ops.augment(x, augmentation).numpy() for x in dataset])


@pytest.mark.parametrize("field, value", [
    ("zoom_out", 2.0), ("illuminant_jitter", 0.3), ("gamma_jitter", 0.4), ("vignette_prob", 1.0),
    ("blur_prob", 1.0), ("jpeg_prob", 1.0)])
def test_each_clinic_augmentation_changes_pixels_within_range(ham_200px, field, value):
    image = real_images(ham_200px, count=1, size=48)[0]
    tf.random.set_seed(0)
    plain = one_image_dataset(image, Augmentation())
    changed = one_image_dataset(image, Augmentation(**{field: value}))
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
    whole = pipeline.decode_and_resize(contents, 48).numpy()
    same = pipeline.decode_and_resize(contents, 48, crop=lambda image: image).numpy()
    np.testing.assert_array_equal(whole, same)
    augmentation = Augmentation(crop_scale=0.25, crop_aspect=2.0)
    assert augmentation.decode_size(48) == 136  # 48 * sqrt(2 / 0.25): enough pixels to crop.
    crop = pipeline.decode_and_resize(
        contents, 48, crop=lambda image: augment_ops.random_crop(image, augmentation),
        decode_size=augmentation.decode_size(48)).numpy()
    assert crop.shape == (48, 48, 3) and np.abs(crop - whole).mean() > 1


def test_unknown_shift_names_are_refused():
    with pytest.raises(UserError, match="unknown --shifts=fog; choose one of all, warm"):
        evaluation.EvaluateConfig(model_path="m", data="d", shifts=("warm", "fog"))


@pytest.mark.slow
def test_robustness_report_has_each_shift_asked_for_and_its_clean_row_is_plain_evaluate(
        untrained_run, tiny_dataset, tmp_path):
    # Three shifts, in the report's order whatever the order asked (every shift's pixels:
    # test_every_shift_changes_the_image_the_same_way_for_a_seed); "all" names every one.
    assert robustness.shift_names(("all",)) == list(shifts.NAMES)
    chosen = ["vignette", "zoom_out", "jpeg30"]
    assert robustness.shift_names(chosen[::-1]) == chosen
    result = evaluation.evaluate_model_path(EvaluateConfig(
        model_path=str(untrained_run), data=str(tiny_dataset / "val"), output=str(tmp_path / "r"),
        batch_size=8, shifts=tuple(chosen[::-1])))
    plain = evaluation.evaluate_model_path(EvaluateConfig(
        model_path=str(untrained_run), data=str(tiny_dataset / "val"), output=str(tmp_path / "p"),
        batch_size=8))
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




def test_shifts_and_copies_read_16_bit_pngs_as_the_model_does(tmp_path):
    grey = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "data" / "NV" / "deep.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(grey).save(path)  # PIL mode I;16: convert("RGB") makes it white.
    pixels = pipeline.read_rgb(path)
    assert pixels.shape == (48, 64, 3) and 100 < pixels.mean() < 155  # Not all 255.
    folder = folders.scan_image_folder(tmp_path / "data")
    shifted = robustness.write_shifted(folder, "gamma", tmp_path / "shifted")
    with Image.open(shifted.paths[0]) as image:
        assert 100 < np.asarray(image).mean() < 230 and np.asarray(image).std() > 10


def test_printed_reports_say_no_figure_instead_of_nan_or_minus_zero():
    from skin_keras.evaluate import report as reports  # pylint: disable=g-import-not-at-top

    assert [reports.figure(v) for v in (None, float("nan"), -1e-9, 0.12345)] == [
        "-", "-", "0.0000", "0.1235"]
    rows = {"clean": {"balanced accuracy": 0.5, "accuracy": 0.5, "mean roc auc": None,
                      "drop": 0.0},
            "warm": {"balanced accuracy": 0.5, "accuracy": 0.5, "mean roc auc": None,
                     "drop": -1e-12}}
    text = robustness.describe({"shifts": rows, "images": 5, "worst shift": "warm",
                                "worst drop": -1e-12})
    assert "nan" not in text and "-0.0000" not in text
    assert text.endswith("no shift lowers the balanced accuracy")


def test_a_set_of_one_class_draws_its_roc_figure_without_warnings(tmp_path):
    import warnings  # pylint: disable=g-import-not-at-top

    from skin_keras.core import plots  # pylint: disable=g-import-not-at-top

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib: "No artists with labels found".
        plots.roc_curves({}, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 0
