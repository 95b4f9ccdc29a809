"""Bootstrap intervals resampled by lesion: each draw's figures equal scikit-learn's on the
explicitly repeated set, and the intervals equal a plain NumPy bootstrap of the same seed."""

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from skin_keras.evaluate import bootstrap, calibration


def a_test_set(images=120, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, images)
    logits = rng.normal(size=(images, classes)) + 1.5 * np.eye(classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probabilities[:10] = np.round(probabilities[:10], 1)  # Ties, as a saturated model has.
    clusters = np.repeat(np.arange(images // 2), 2)[rng.permutation(images)]  # Two per lesion.
    return labels, probabilities, clusters


def reference_figures(labels, probabilities, classes):
    """The figures with scikit-learn (and calibration's ECE) on a set as it is."""
    predicted = probabilities.argmax(1)
    present = np.unique(labels)
    recall = sk_metrics.recall_score(labels, predicted, labels=range(classes), average=None,
                                     zero_division=np.nan)
    recall[~np.isin(np.arange(classes), present)] = np.nan
    aucs = [sk_metrics.roc_auc_score(labels == c, probabilities[:, c])
            if 0 < np.sum(labels == c) < len(labels) else np.nan for c in range(classes)]
    balanced = sk_metrics.balanced_accuracy_score(labels, predicted) if len(present) == len(
        np.unique(np.r_[labels, predicted])) else np.nanmean(recall)
    return np.array([balanced, calibration.expected_calibration_error(probabilities, labels),
                     *recall, *aucs])


def test_each_draw_equals_scikit_learn_on_the_repeated_images():
    labels, probabilities, clusters = a_test_set()
    weighted = bootstrap._Weighted(labels, probabilities, 3)  # pylint: disable=protected-access
    np.testing.assert_allclose(weighted.figures(np.ones(len(labels))),
                               reference_figures(labels, probabilities, 3), atol=1e-12)
    for weights in bootstrap.draws(clusters, 20, seed=1):
        repeated = np.repeat(np.arange(len(labels)), weights.astype(int))
        np.testing.assert_allclose(
            weighted.figures(weights),
            reference_figures(labels[repeated], probabilities[repeated], 3), atol=1e-12)


def test_intervals_equal_a_plain_bootstrap_of_lesions_with_the_same_seed():
    labels, probabilities, clusters = a_test_set(seed=3)
    found = bootstrap.intervals(labels, probabilities, clusters, ["a", "b", "c"], 200, seed=7)
    # The plain way: draw lesions with NumPy, gather their images, score with scikit-learn.
    lesions = np.unique(clusters)
    rng = np.random.default_rng(7)
    table = []
    for _ in range(200):
        chosen = lesions[rng.integers(0, len(lesions), len(lesions))]
        rows = np.concatenate([np.flatnonzero(clusters == lesion) for lesion in chosen])
        table.append(reference_figures(labels[rows], probabilities[rows], 3))
    table = np.array(table)
    low, high = np.nanpercentile(table, [2.5, 97.5], axis=0)
    assert found["balanced accuracy"] == pytest.approx([low[0], high[0]], abs=1e-4)
    assert found["expected calibration error"] == pytest.approx([low[1], high[1]], abs=1e-4)
    for index, name in enumerate("abc"):
        assert found["per class"][name]["recall"] == pytest.approx(
            [low[2 + index], high[2 + index]], abs=1e-4)
        assert found["per class"][name]["ROC AUC"] == pytest.approx(
            [low[5 + index], high[5 + index]], abs=1e-4)
    point = bootstrap.point_figures(labels, probabilities, 3)[0]
    assert found["balanced accuracy"][0] < point < found["balanced accuracy"][1]


def test_a_class_of_few_images_is_flagged_not_hidden():
    labels, probabilities, clusters = a_test_set()
    labels[labels == 2] = 0
    labels[:4] = 2  # Four images of class c.
    found = bootstrap.intervals(labels, probabilities, clusters, ["a", "b", "c"], 50, seed=0)
    assert found["per class"]["c"] == {**found["per class"]["c"], "images": 4,
                                       "too small to judge": True}
    assert not found["per class"]["a"]["too small to judge"]


def test_evaluate_reports_subgroups_and_intervals_of_the_right_images(untrained_run,
                                                                     tiny_dataset, tmp_path):
    import csv  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    import shutil  # pylint: disable=g-import-not-at-top
    from pathlib import Path  # pylint: disable=g-import-not-at-top

    from skin_keras.core.errors import UserError  # pylint: disable=g-import-not-at-top
    from skin_keras.evaluate import evaluation  # pylint: disable=g-import-not-at-top

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "val", data / "test")
    images = sorted(data.glob("test/*/*.jpg"))
    center = {p.stem: "north" if i % 3 else "south" for i, p in enumerate(images)}
    with open(data / "split.csv", "w", newline="") as file:  # As prepare_isic --groups writes.
        writer = csv.writer(file)
        writer.writerow(["image", "class", "lesion_id", "split", "center"])
        writer.writerows([p.stem, p.parent.name, f"L{i // 2}", "test", center[p.stem]]
                         for i, p in enumerate(images))
    (data / "metadata.csv").write_text("image,age_approx,sex,anatom_site_general\n" + "".join(
        f"{p.stem},{20 + 5 * i},{'male' if i % 2 else 'female'},\n"
        for i, p in enumerate(images)))

    def evaluate(**options):
        return evaluation.evaluate_model_path(evaluation.EvaluateConfig(
            model_path=str(untrained_run), data=str(data / "test"), output=str(tmp_path / "e"),
            **options))

    with pytest.raises(UserError, match="--group_by: no clinic .*there are: age, center, sex, "
                                        "site"):
        evaluate(group_by=("clinic", "age"))
    report = evaluate(group_by=("center", "age", "sex"), bootstrap=100, bootstrap_seed=3)
    assert set(report["subgroups"]) == {"center", "age", "sex"}
    assert set(report["subgroups"]["age"]) == {"<30", "30-44", "45-59", "60-74", "75+"} & set(
        report["subgroups"]["age"])
    rows = list(csv.DictReader(open(tmp_path / "e" / "predictions.csv")))
    names = list(json.loads((untrained_run / "class_indices.json").read_text()).values())
    labels = np.array([names.index(Path(r["path"]).parent.name) for r in rows])
    probabilities = np.array([[float(r[n]) for n in names] for r in rows])
    lesions = np.array([f"L{images.index(Path(r['path']))  // 2}" for r in rows])
    for value, row in report["subgroups"]["center"].items():
        mask = np.array([center[Path(r["path"]).stem] == value for r in rows])
        assert row["images"] == mask.sum()
        assert row["balanced accuracy"] == pytest.approx(sk_metrics.balanced_accuracy_score(
            labels[mask], probabilities[mask].argmax(1)), abs=1e-4)
        expected = bootstrap.intervals(labels[mask], probabilities[mask], lesions[mask], names,
                                       100, 3)
        assert row["intervals"] == expected
        assert row["too small to judge"] == [n for n in names
                                             if 0 < np.sum(labels[mask] == names.index(n)) < 10]
    assert report["intervals"]["lesions"] == len(set(lesions))
    assert report["intervals"]["balanced accuracy"] == bootstrap.intervals(
        labels, probabilities, lesions, names, 100, 3)["balanced accuracy"]
    assert (tmp_path / "e" / "subgroups.png").stat().st_size > 0
    # The model card: front matter with model-index results, every number's source named.
    card = (tmp_path / "e" / "model_card.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "model-index:" in front and "type: balanced_accuracy" in front
    assert f"value: {round(report['balanced accuracy'], 4)}" in front
    for source in ("metrics.json", "train_params.json", "split.csv"):
        assert source in body
    assert "## Subgroups" in body and "| center | north |" in body
    assert "skin types" in body and "## Training data" in body


def test_too_few_resamples_for_a_95_percent_interval_are_refused_and_images_are_images():
    # Reliability 2026-12-07 C5, C6.
    from skin_keras.core.errors import UserError  # pylint: disable=g-import-not-at-top
    from skin_keras.evaluate import report  # pylint: disable=g-import-not-at-top
    from skin_keras.evaluate.evaluation import EvaluateConfig  # pylint: disable=g-import-not-at-top

    for resamples in (1, 39):
        with pytest.raises(UserError, match=f"--bootstrap={resamples}: a 95% interval needs "
                                            "at least 40 resamples"):
            EvaluateConfig(model_path="m", data="d", bootstrap=resamples)
    EvaluateConfig(model_path="m", data="d", bootstrap=40)
    found = {"level": "95%", "resamples": 40, "resampled": "by image (no split.csv)",
             "lesions": 17, "balanced accuracy": None, "expected calibration error": None,
             "per class": {}}
    assert "17 images)" in report._describe_intervals(found)[0]
    assert "17 lesions)" in report._describe_intervals({**found, "resampled": "by lesion"})[0]
