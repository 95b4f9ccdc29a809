"""Training augmentation in the input pipeline: crops, rotation, colour, RandAugment, MixUp, CutMix."""

import json
import shutil

import numpy as np
import pytest

from skin_keras.data import augment_ops, pipeline, synthetic
from skin_keras.data.augmentation import Augmentation
from skin_keras.train import loop

from conftest import corrupt_files, tiny_config


@pytest.fixture
def files(tmp_path):
    paths = synthetic.write_class_folders(tmp_path, 8, ("a", "b", "c"), size=(40, 30))
    return [str(p) for p in paths], np.repeat(np.arange(3), 8)


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_labels_are_soft_and_sum_to_one(files, mixup, cutmix):
    paths, labels = files
    augmentation = Augmentation(mixup_alpha=mixup, cutmix_alpha=cutmix, randaugment_magnitude=0.5)
    dataset = pipeline.make_dataset(paths, labels, 3, img_size=24, batch_size=8,
                                    training=pipeline.Training(seed=0, augmentation=augmentation))
    soft = 0
    for inputs, mixed in dataset:
        images = inputs["image"]
        np.testing.assert_allclose(mixed.numpy().sum(axis=1), 1.0, atol=1e-5)
        assert images.shape[1:] == (24, 24, 3)
        assert float(images.numpy().min()) >= 0.0 and float(images.numpy().max()) <= 255.0
        soft += int(np.sum((mixed.numpy() > 1e-3) & (mixed.numpy() < 1 - 1e-3)))
    assert soft > 0  # Some labels were actually mixed.


def test_per_image_augmentation_changes_pixels_but_not_shape_or_range(files):
    paths, labels = files
    plain = next(iter(pipeline.make_dataset(paths[:1], labels[:1], 3, 24, 1)))[0]["image"].numpy()
    augmentation = Augmentation(crop_scale=0.5, rotation=True, color_jitter=0.3)
    dataset = pipeline.make_dataset(paths[:1] * 16, labels[:1].repeat(16), 3, 24, 16,
                                    training=pipeline.Training(seed=0, augmentation=augmentation))
    images = next(iter(dataset))[0]["image"].numpy()
    assert images.shape == (16, 24, 24, 3)
    assert images.min() >= 0.0 and images.max() <= 255.0
    # Not just one of the 8 flips/turns of the plain image: something else happened too.
    variants = [np.rot90(f, k) for f in (plain[0], plain[0][:, ::-1]) for k in range(4)]
    assert all(min(np.abs(image - v).mean() for v in variants) > 1.0 for image in images[:4])


def test_rotation_by_a_quarter_turn_equals_rot90():
    image = np.random.default_rng(0).uniform(0, 255, (9, 9, 3)).astype("float32")
    rotated = augment_ops._rotate(image, np.float32(np.pi / 2)).numpy()  # pylint: disable=protected-access
    turned = [np.rot90(image, k) for k in (1, 3)]
    assert min(np.abs(rotated - t).max() for t in turned) < 1e-3


@pytest.mark.slow
def test_training_with_every_augmentation_counts_and_names_every_file(tmp_path, tiny_dataset):
    # Files the header check lets through but TensorFlow's decoder rejects, and a JPEG it
    # decodes with repairs, in the training set: the backbone trains, no feature cache.
    shutil.copytree(tiny_dataset, tmp_path / "data")
    corrupt_files(tmp_path / "data" / "train" / "Melanoma")
    config = tiny_config(tmp_path, tmp_path / "data", epochs=1, freeze_layers=True,
                         crop_scale=0.6, rotation=True, color_jitter=0.2,
                         randaugment_magnitude=0.3, mixup_alpha=0.3, cutmix_alpha=1.0,
                         zoom_out=1.5, illuminant_jitter=0.2, gamma_jitter=0.2,
                         vignette_prob=0.5, blur_prob=0.3, jpeg_prob=0.3,
                         color_constancy="gray_world")
    run = loop.train_and_evaluate(config, verbose=0)
    dataset = json.loads((run / "train_params.json").read_text())["dataset"]
    assert dataset["trainset number"] == 37  # 36 + the repaired JPEG.
    assert sorted(entry.split(": ")[0].rsplit("/", 1)[1] for entry in dataset["bad files"]) == [
        "corrupt_idat.png", "header_only.jpg"]
    assert [entry.split(": ")[0].rsplit("/", 1)[1] for entry in dataset["decode warnings"]] == [
        "corrupt_scan.jpg"]
    matrices = json.loads((run / "confusion_matrices.json").read_text())["epoch:1"]
    assert np.sum(matrices["train"]) == 37  # Every training image counted once, by arg-max.
    assert np.sum(matrices["val"]) == 15
    flagfile = (run / "flags.cfg").read_text().splitlines()
    assert "--rotation" in flagfile and "--mixup_alpha=0.3" in flagfile
    assert "--vignette_prob=0.5" in flagfile and "--color_constancy=gray_world" in flagfile


def test_style_mixing_changes_colour_statistics_and_keeps_what_the_image_shows():
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from skin_keras.data import augment_ops  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(0)
    pattern = rng.uniform(0, 1, (8, 32, 32, 1))
    casts = rng.uniform(40, 200, (8, 1, 1, 3))  # Each image its own colour and contrast.
    images = tf.constant(pattern * casts * 0.5 + casts * 0.5, tf.float32)
    styled = augment_ops.style_mix(images, 1.0, seed=1).numpy()
    assert np.array_equal(augment_ops.style_mix(images, 0.0, seed=1).numpy(), images.numpy())
    moved = np.abs(styled.mean((1, 2)) - images.numpy().mean((1, 2))).max(axis=1)
    # Beta(0.1, 0.1) weights are near 0 or 1: about half of the images take on another's
    # statistics, the others keep theirs.
    assert (moved > 5).sum() >= 2
    for before, after in zip(images.numpy(), styled):  # All show the same thing.
        correlation = np.corrcoef(before[..., 0].ravel(), after[..., 0].ravel())[0, 1]
        assert correlation > 0.99
    assert styled.min() >= 0 and styled.max() <= 255
