"""Class weights, balanced sampling, early stopping, the NaN stop and mixed precision."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from skin_keras.data import pipeline, synthetic
from skin_keras.model import parts
from skin_keras.train import loop, recipe

from conftest import REPO, tiny_config


def test_balanced_class_weights_are_sklearns_and_sqrt_is_milder():
    counts = np.array([90, 30, 10, 0])
    labels = np.repeat(np.arange(4), counts)
    balanced = recipe.class_weights(counts, "balanced")
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose([balanced[i] for i in range(3)], expected)
    assert balanced[3] == 0.0  # A class without training images gets no weight.
    mild = recipe.class_weights(counts, "sqrt")
    for weights in (balanced, mild):  # Mean weight over the training images is 1.
        assert sum(weights[i] * counts[i] for i in range(4)) == pytest.approx(counts.sum())
    assert mild[2] / mild[0] == pytest.approx(np.sqrt(balanced[2] / balanced[0]))
    assert recipe.class_weights(counts, "none") is None


def test_balanced_sampling_gives_every_class_the_same_share():
    counts = [300, 60, 12]
    labels = np.repeat(np.arange(3), counts)
    paths = [f"file_{i}.jpg" for i in range(len(labels))]
    stream = pipeline.balanced_file_stream({"image": paths}, labels, num_classes=4, seed=0)
    drawn = np.concatenate([[label for _, label in stream.as_numpy_iterator()]
                            for _ in range(6)])  # Six epochs of len(paths) draws each.
    assert len(drawn) == 6 * len(labels)
    shares = np.bincount(drawn, minlength=4) / len(drawn)
    np.testing.assert_allclose(shares[:3], 1 / 3, atol=0.025)
    assert shares[3] == 0  # A class with no files is not drawn.
    natural = np.bincount(labels) / len(labels)
    assert natural[2] < 0.04  # Without balancing, the rare class is 3% of the draws.


def test_balancing_by_clinic_draws_each_clinic_of_a_class_as_often():
    labels = np.repeat([0, 0, 1], [300, 20, 100])  # Class 0: clinic a 300, clinic b 20.
    clinics = np.repeat(["a", "b", "a"], [300, 20, 100])
    paths = np.array([f"file_{i}.jpg" for i in range(len(labels))])
    stream = pipeline.balanced_file_stream({"image": paths}, labels, num_classes=2, seed=0,
                                           strata=clinics)
    drawn = [(item["image"].decode(), label) for _ in range(10)
             for item, label in stream.as_numpy_iterator()]
    index = {path: i for i, path in enumerate(paths)}
    of_b = np.mean([clinics[index[path]] == "b" for path, label in drawn if label == 0])
    # 4,200 draws: a share's standard error is about 0.01; without strata clinic b would be
    # 20/320 = 6% of class 0.
    assert abs(of_b - 0.5) < 0.06
    assert abs(np.mean([label for _, label in drawn]) - 0.5) < 0.06


def test_balanced_sampling_pipeline_yields_decoded_batches(tmp_path):
    paths = synthetic.write_class_folders(tmp_path, [20, 2], ("common", "rare"), size=(16, 12))
    labels = np.array([0] * 20 + [1] * 2)
    dataset = pipeline.make_dataset([str(p) for p in paths], labels, 2, img_size=16,
                                    batch_size=11,
                                    training=pipeline.Training(seed=0, sampling="balanced"))
    batches = list(dataset)
    assert sum(b[0]["image"].shape[0] for b in batches) == 22
    assert batches[0][0]["image"].shape[1:] == (16, 16, 3)
    rare = sum(float(b[1].numpy()[:, 1].sum()) for b in batches)
    assert rare > 4  # About half of 22 draws, against 2 in natural order.


@pytest.mark.slow
def test_weighted_balanced_run_logs_its_weights_and_stops_early(tmp_path, tiny_dataset, caplog):
    # An imbalanced copy of the training set: 4, 12 and 12 images.
    shutil.copytree(tiny_dataset, tmp_path / "data")
    for path in sorted((tmp_path / "data" / "train" / "Basal cell carcinoma").iterdir())[4:]:
        path.unlink()
    # A learning rate of 1e-12 leaves the model unchanged, so val_loss never improves.
    config = tiny_config(tmp_path, tmp_path / "data", class_weight="balanced",
                         sampling="balanced", patience=1, epochs=5, lr=1e-12, monitor="val_loss",
                         freeze_layers=True)
    run = loop.train_and_evaluate(config, verbose=0)
    params = json.loads((run / "train_params.json").read_text())
    expected = compute_class_weight("balanced", classes=np.arange(3),
                                    y=np.repeat(np.arange(3), [4, 12, 12]))
    assert params["dataset"]["class weights"] == {
        name: round(float(weight), 6) for name, weight in zip(
            ["Basal cell carcinoma", "Melanocytic nevus", "Melanoma"], expected)}
    assert params["dataset"]["class weights"]["Basal cell carcinoma"] == pytest.approx(7 / 3)
    assert params["train parameters"]["sampling"] == "balanced"
    log = json.loads((run / "log.json").read_text())
    assert list(log) == ["epoch:1", "epoch:2"]
    assert "early stopping after epoch 2" in caplog.text


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_keeps_the_best_weights_and_fails(tmp_path, tiny_dataset):
    # train.py itself: a diverged run must not end with exit code 0.
    command = [sys.executable, str(REPO / "train.py"), "--model=b0", "--weights=none",
               "--img_size=32", "--batch_size=8", "--epochs=4", "--optim=SGD", "--lr=1e30",
               f"--data_train={tiny_dataset / 'train'}", f"--data_val={tiny_dataset / 'val'}",
               f"--save_ret={tmp_path / 'runs'}", f"--feature_cache={tmp_path / 'features'}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == loop.DIVERGED_EXIT_CODE == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert re.match(r"train.py: error: training diverged in epoch \d: the loss became nan",
                    result.stderr.strip().splitlines()[-1])
    run = tmp_path / "runs" / "exp1"
    log = json.loads((run / "log.json").read_text())
    assert len(log) < 4
    assert not np.isfinite(log[f"epoch:{len(log)}"]["train info"]["loss"])
    assert log[f"epoch:{len(log)}"]["non-finite"][0] == "train loss"
    assert (run / "weights" / "last.keras").exists()
    # Only an epoch that ended with a finite loss may be the best one.
    finite = [key for key, entry in log.items() if np.isfinite(entry["train info"]["loss"])]
    assert (run / "weights" / "best.keras").exists() == bool(finite)


@pytest.mark.slow
def test_mixed_precision_run_keeps_float32_weights_and_output(tmp_path, tiny_dataset):
    import keras  # pylint: disable=g-import-not-at-top

    config = tiny_config(tmp_path, tiny_dataset, precision="mixed_bfloat16", epochs=1,
                         freeze_layers=True)
    run = loop.train_and_evaluate(config, verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # Restored afterwards.
    model = keras.models.load_model(run / "weights" / "best.keras")
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    stem = parts.backbone_of(model).get_layer("stem_conv")
    assert stem.dtype_policy.name == "mixed_bfloat16"  # The backbone computes in bfloat16.
    assert all(w.dtype == "float32" for w in model.weights)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probabilities = model.predict({"image": images}, verbose=0)["probabilities"]
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)


def test_balance_by_reads_each_training_images_clinic_from_split_csv(tmp_path, tiny_dataset):
    import csv  # pylint: disable=g-import-not-at-top

    from skin_keras.core.errors import UserError  # pylint: disable=g-import-not-at-top
    from skin_keras.train import inputs  # pylint: disable=g-import-not-at-top

    from conftest import tiny_config  # pylint: disable=g-import-not-at-top

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    with pytest.raises(UserError, match="needs --sampling=balanced"):
        tiny_config(tmp_path, data, balance_by="center")
    config = tiny_config(tmp_path, data, balance_by="center", sampling="balanced")
    with pytest.raises(UserError, match="--balance_by=center: no split.csv"):
        inputs.read_run_data(config)
    images = sorted(data.glob("*/*/*.jpg"))
    with open(data / "split.csv", "w", newline="") as file:
        csv.writer(file).writerows([["image", "class", "lesion_id", "split", "center"]] + [
            [p.stem, p.parent.name, "", p.parent.parent.name, f"c{i % 2}"]
            for i, p in enumerate(images)])
    run_data = inputs.read_run_data(config)
    expected = {p.stem: f"c{i % 2}" for i, p in enumerate(images)}
    assert list(run_data.strata) == [expected[Path(p).stem] for p in run_data.train.paths]
    training = inputs.training_draw(config, run_data, keep=np.arange(3))
    assert list(training.strata) == list(run_data.strata[:3])


def test_statistics_are_measured_on_images_drawn_as_training_drew_them():
    labels = np.repeat([0, 1, 2], [900, 90, 10])
    natural = pipeline.draw_like_training(labels, 6000, 0, "natural")
    balanced = pipeline.draw_like_training(labels, 6000, 0, "balanced")
    np.testing.assert_allclose(np.bincount(labels[natural]) / 6000, [0.9, 0.09, 0.01],
                               atol=0.015)
    np.testing.assert_allclose(np.bincount(labels[balanced]) / 6000, [1 / 3] * 3, atol=0.02)
    clinics = np.repeat(["a", "b", "a", "a"], [890, 10, 90, 10])
    by_clinic = pipeline.draw_like_training(labels, 6000, 0, "balanced", clinics)
    share_b = np.mean(clinics[by_clinic][labels[by_clinic] == 0] == "b")
    assert abs(share_b - 0.5) < 0.03  # Clinic b: 10 of class 0's 900 images, half the draws.
