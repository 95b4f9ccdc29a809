"""The "unknown" answer: scores, the coverage threshold, the score layer, the OOD folder."""

import hashlib
import shutil

import keras
import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from skin_keras.core.errors import UserError
from skin_keras.data import ood_synthesis
from skin_keras.evaluate import ood as open_set
from skin_keras.model import io, parts
from skin_keras.model.layers import UnknownScore
from skin_keras.model.layers.unknown import UnknownRule
from skin_keras.train.config import TrainConfig
from skin_keras.workflows.fit_calibration import CalibrateConfig

from conftest import corrupt_files, probabilities, tiny_model


@pytest.mark.parametrize("coverage", [0.5, 0.8, 0.95, 0.999, 1.0])
def test_threshold_keeps_the_coverage_half_way_between_scores(coverage):
    scores = np.random.default_rng(1).normal(size=203)
    threshold = open_set.threshold_for_coverage(scores, coverage)
    rule = UnknownRule(threshold, coverage)
    flagged = 203 - int(np.ceil(coverage * 203))
    assert rule.flags(scores).sum() == flagged and np.mean(scores >= threshold) >= coverage
    ordered = np.sort(scores)
    if flagged:  # Half-way: a little float noise does not move an image across it.
        assert threshold == pytest.approx((ordered[flagged - 1] + ordered[flagged]) / 2)
    else:
        assert ordered[0] - 0.01 < threshold < ordered[0]


@pytest.mark.parametrize("coverage", [0.0, -0.1, 1.5, float("nan")])
def test_coverage_outside_0_1_is_refused_with_one_line(coverage, tmp_path):
    refused = r"unknown_coverage=.* (must be in \(0, 1\]|is not a finite number)"
    with pytest.raises(UserError, match=refused):
        TrainConfig(data_train=str(tmp_path), data_val=str(tmp_path), unknown_coverage=coverage)
    with pytest.raises(UserError, match=refused):
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


def test_the_score_layer_scores_as_numpy_and_survives_saving(tmp_path):
    model = tiny_model()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    raw = probabilities(model, images)
    features = parts.feature_model(model)({"image": images})["features"].numpy()
    fitted = open_set.fit_feature_distance(
        np.r_[features, features + rng.normal(size=features.shape)], np.r_[0, 1, 2, 0, 1, 2, 0,
                                                                           1], 3)
    score = UnknownScore("feature_distance", -7.5, 0.9, 3, features.shape[1],
                         name="unknown_score")
    calibrated = io.calibrated(model, 1.0, score)
    score.set_weights(fitted)
    answer = calibrated({"image": images})
    np.testing.assert_allclose(answer["probabilities"], raw, atol=1e-6)  # T = 1.
    np.testing.assert_allclose(answer["unknown_score"],
                               open_set.feature_distance(features, *fitted), rtol=1e-4)
    calibrated.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert io.unknown_layer(loaded).rule == UnknownRule(-7.5, 0.9, "feature_distance")
    np.testing.assert_allclose(loaded({"image": images})["unknown_score"],
                               answer["unknown_score"], rtol=1e-5)
    # max_probability needs no features: the top calibrated probability.
    other = io.calibrated(model, 2.0, UnknownScore("max_probability", 0.4, 0.9))
    answer = other({"image": images})
    np.testing.assert_allclose(answer["unknown_score"], answer["probabilities"].numpy().max(1),
                               rtol=1e-6)
    assert io.unknown_layer(model) is None


def test_ood_folder_has_every_kind_is_seeded_and_never_overwrites(tiny_dataset, tmp_path):
    config = ood_synthesis.OodConfig(output=str(tmp_path / "a"), lesions=str(tiny_dataset / "val"),
                                  count=2, size=40)
    counts = ood_synthesis.make_ood_folder(config)
    assert counts == {kind: 2 for kind in ood_synthesis.FAR_KINDS + ood_synthesis.NEAR_KINDS}

    def digest(folder):
        return hashlib.sha1(b"".join(p.read_bytes() for p in sorted(folder.rglob("*.jpg")))
                            ).hexdigest()

    again = ood_synthesis.OodConfig(output=str(tmp_path / "b"), lesions=str(tiny_dataset / "val"),
                                 count=2, size=40)
    ood_synthesis.make_ood_folder(again)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    with pytest.raises(UserError, match="not an empty folder"):
        ood_synthesis.make_ood_folder(config)
    no_lesions = ood_synthesis.make_ood_folder(ood_synthesis.OodConfig(output=str(tmp_path / "c"),
                                                                 count=1, size=40))
    assert set(no_lesions) == set(ood_synthesis.FAR_KINDS)


def test_ood_lesions_training_would_leave_out_are_left_out_and_nothing_is_half_written(
        tiny_dataset, tmp_path):
    lesions = tmp_path / "lesions"
    shutil.copytree(tiny_dataset / "val", lesions)
    corrupt_files(lesions / "Melanoma")  # Pass the header check; TensorFlow rejects two.
    counts = ood_synthesis.make_ood_folder(ood_synthesis.OodConfig(
        output=str(tmp_path / "o"), lesions=str(lesions), count=40, size=32))
    assert counts["corrupted"] == 40  # Every near image made from a readable lesion.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lesions", "o"]  # No staging left.
