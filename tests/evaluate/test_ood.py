"""The "unknown" answer: scores, the coverage threshold, the detector layer, the OOD folder."""

import hashlib
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from skin_keras.infer import load as artifacts, predict as inference
from skin_keras.model import builder as models
from skin_keras.data import ood_images
from skin_keras.evaluate import ood as open_set
from skin_keras.train.config import TrainConfig
from skin_keras.core.errors import UserError
from skin_keras.workflows.calibrate import CalibrateConfig


@pytest.mark.parametrize("coverage", [0.5, 0.8, 0.95, 0.999, 1.0])
def test_threshold_keeps_the_coverage_half_way_between_scores(coverage):
    scores = np.random.default_rng(1).normal(size=203)
    threshold = open_set.threshold_for_coverage(scores, coverage)
    rule = open_set.UnknownRule(threshold, coverage)
    flagged = 203 - int(np.ceil(coverage * 203))
    assert rule.flags(scores).sum() == flagged and np.mean(scores >= threshold) >= coverage
    ordered = np.sort(scores)
    if flagged:  # Half-way: a little float noise does not move an image across it.
        assert threshold == pytest.approx((ordered[flagged - 1] + ordered[flagged]) / 2)
    else:
        assert ordered[0] - 0.01 < threshold < ordered[0]


@pytest.mark.parametrize("coverage", [0.0, -0.1, 1.5, float("nan")])
def test_coverage_outside_0_1_is_refused_with_one_line(coverage, tmp_path):
    with pytest.raises(UserError, match=r"unknown_coverage=.* must be in \(0, 1\]"):
        TrainConfig(data_train=str(tmp_path), data_val=str(tmp_path), unknown_coverage=coverage)
    with pytest.raises(UserError, match=r"must be in \(0, 1\]"):
        CalibrateConfig(model_path=str(tmp_path), unknown_coverage=coverage)


def test_energy_is_the_tempered_logsumexp():
    logits = np.array([[1000.0, 999.0, -5.0], [0.1, 0.2, 0.3]])
    expected = [1000 + np.log1p(np.exp(-1) + np.exp(-1005)),
                np.log(np.exp(0.1) + np.exp(0.2) + np.exp(0.3))]
    np.testing.assert_allclose(open_set.energy(logits), expected)
    np.testing.assert_allclose(open_set.energy(logits[1:], 2.0),
                               [2 * np.log(np.exp(logits[1] / 2).sum())])


def test_feature_distance_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 12)) + np.repeat(np.eye(3, 12) * 4, 20, axis=0)
    labels = np.repeat([0, 1, 2], 20)
    projection, centres = open_set.fit_feature_distance(features, labels, 4)  # Class 3: none.
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    precision = LedoitWolf().fit(features - means[labels]).precision_
    queries = rng.normal(size=(7, 12)) * 3
    gaps = queries[:, None] - means[None]
    expected = -np.einsum("ncd,de,nce->nc", gaps, precision, gaps).min(axis=1)
    np.testing.assert_allclose(open_set.feature_distance(queries, projection, centres), expected,
                               rtol=1e-4)


def test_the_detector_layer_scores_as_numpy_leaves_the_output_and_survives_saving(tmp_path):
    model = models.build_model("b0", 3, 32, "none", freeze_backbone=False)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    features = models.feature_model(model)(images).numpy()
    fitted = open_set.fit_feature_distance(
        np.r_[features, features + rng.normal(size=features.shape)], np.r_[0, 1, 2, 0, 1, 2, 0,
                                                                           1], 3)
    detector = open_set.UnknownDetector("feature_distance", -7.5, 0.9, 3, features.shape[1],
                                        name="unknown_detector")
    with_detector = models.with_detector(model, detector)
    detector.set_weights(fitted)
    np.testing.assert_array_equal(with_detector(images), model(images))
    probabilities, scores = models.scored_model(with_detector)(images)
    np.testing.assert_allclose(scores, open_set.feature_distance(features, *fitted), rtol=1e-4)
    with_detector.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert open_set.detector_of(loaded).rule == open_set.UnknownRule(-7.5, 0.9,
                                                                     "feature_distance")
    np.testing.assert_allclose(models.scored_model(loaded)(images)[1], scores, rtol=1e-5)
    # Another rule replaces the first; max_probability needs no features.
    other = models.with_detector(loaded, open_set.UnknownDetector("max_probability", 0.4, 0.9))
    assert [type(layer).__name__ for layer in other.layers].count("UnknownDetector") == 1
    np.testing.assert_allclose(models.scored_model(other)(images)[1],
                               probabilities.numpy().max(axis=1), rtol=1e-6)
    assert models.scored_model(model) is None


def test_ood_folder_has_every_kind_is_seeded_and_never_overwrites(tiny_dataset, tmp_path):
    config = ood_images.OodConfig(output=str(tmp_path / "a"), lesions=str(tiny_dataset / "val"),
                                  count=2, size=40)
    counts = ood_images.make_ood_folder(config)
    assert counts == {kind: 2 for kind in ood_images.FAR_KINDS + ood_images.NEAR_KINDS}

    def digest(folder):
        return hashlib.sha1(b"".join(p.read_bytes() for p in sorted(folder.rglob("*.jpg")))
                            ).hexdigest()

    again = ood_images.OodConfig(output=str(tmp_path / "b"), lesions=str(tiny_dataset / "val"),
                                 count=2, size=40)
    ood_images.make_ood_folder(again)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    with pytest.raises(UserError, match="not empty"):
        ood_images.make_ood_folder(config)
    no_lesions = ood_images.make_ood_folder(ood_images.OodConfig(output=str(tmp_path / "c"),
                                                                 count=1, size=40))
    assert set(no_lesions) == set(ood_images.FAR_KINDS)


def test_a_nan_score_is_the_model_s_error_not_a_known_image(tiny_dataset):
    paths = sorted((tiny_dataset / "val").rglob("*.jpg"))[:4]

    def forward(images, metadata=None):
        scores = np.zeros(len(images), np.float32)
        scores[0] = np.nan  # Only the first image of each batch.
        return np.full((len(images), 3), 1 / 3, np.float32), scores

    loaded = artifacts.LoadedModel(["a", "b", "c"], 32, Path("m"), forward=forward,
                                   unknown=open_set.UnknownRule(-1.0, 0.95))
    _, scores, errors = inference.predict_scored_files(loaded, paths, batch_size=2,
                                                       show_progress=False)
    assert errors == [inference.MODEL_NAN, None, inference.MODEL_NAN, None]
    rows = inference.prediction_rows(paths, np.full((4, 3), 1 / 3), errors, ["a", "b", "c"],
                                     unknown=(loaded.unknown, scores))
    assert [row["unknown"] for row in rows] == [None, False, None, False]
