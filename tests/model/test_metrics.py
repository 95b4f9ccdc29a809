"""The confusion-matrix metrics equal scikit-learn, streaming, per class and distributed."""

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk

from skin_keras.model import metrics, spec


def sklearn_figures(y_true, y_pred, num_classes):
    labels = list(range(num_classes))
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    matrix = sk.confusion_matrix(y_true, y_pred, labels=labels)
    fp = matrix.sum(axis=0) - np.diag(matrix)
    tn = matrix.sum() - matrix.sum(axis=0) - matrix.sum(axis=1) + np.diag(matrix)
    specificity = np.divide(tn, tn + fp, out=np.zeros(num_classes), where=(tn + fp) > 0)
    macro = sk.precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro",
                                               zero_division=0)
    return {
        "matrix": matrix, "precision": precision, "recall": recall, "f1": f1,
        "support": support, "specificity": specificity,
        "accuracy": sk.accuracy_score(y_true, y_pred),
        "balanced_accuracy": sk.balanced_accuracy_score(y_true, y_pred),
        "mean_precision": macro[0], "mean_recall": macro[1], "mean_f1": macro[2],
        "mean_specificity": specificity.mean(),
    }


def random_case(seed, num_classes=6, size=200):
    """Labels with some classes absent from y_true and some never predicted."""
    rng = np.random.default_rng(seed)
    true_classes = rng.choice(num_classes, size=rng.integers(2, num_classes + 1), replace=False)
    pred_classes = rng.choice(num_classes, size=rng.integers(2, num_classes + 1), replace=False)
    y_true = rng.choice(true_classes, size)
    y_pred = np.where(rng.random(size) < 0.5, y_true, rng.choice(pred_classes, size))
    return y_true, y_pred


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(8))
def test_confusion_stats_equal_sklearn(seed):
    num_classes = 6
    y_true, y_pred = random_case(seed, num_classes)
    expected = sklearn_figures(y_true, y_pred, num_classes)
    matrix = metrics.confusion_matrix(y_true, y_pred, num_classes)
    np.testing.assert_array_equal(matrix, expected["matrix"])
    stats = metrics.stats_numpy(matrix)
    for key in ("precision", "recall", "f1", "support", "specificity", "accuracy",
                "balanced_accuracy", "mean_precision", "mean_recall", "mean_f1",
                "mean_specificity"):
        np.testing.assert_allclose(stats[key], expected[key], atol=1e-6, err_msg=key)


def test_absent_and_never_predicted_classes_are_zero_not_nan():
    # Class 2 never occurs and is never predicted; class 1 occurs but is never predicted.
    y_true = np.array([0, 0, 1, 1, 3])
    y_pred = np.array([0, 3, 0, 3, 3])
    stats = metrics.stats_numpy(metrics.confusion_matrix(y_true, y_pred, 4))
    for key in ("precision", "recall", "f1", "specificity"):
        assert not np.isnan(stats[key]).any(), key
    assert stats["precision"][1] == 0 and stats["recall"][2] == 0 and stats["f1"][2] == 0
    # Balanced accuracy averages over the 3 classes present; mean recall over all 4.
    assert stats["balanced_accuracy"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert stats["mean_recall"] == pytest.approx((0.5 + 0 + 0 + 1) / 4)


def test_empty_matrix_gives_zeros():
    stats = metrics.stats_numpy(np.zeros((3, 3)))
    assert all(np.all(np.asarray(value) == 0) for value in stats.values())


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_keras_metric_streams_over_batches_with_onehot_and_integer_labels():
    num_classes = 5
    y_true, y_pred = random_case(11, num_classes, size=97)
    scores = np.eye(num_classes)[y_pred] * 0.6 + 0.08  # Arg-max is y_pred.
    metric = metrics.ConfusionMatrixMetric(num_classes)
    for start in range(0, len(y_true), 16):
        batch = slice(start, start + 16)
        labels = np.eye(num_classes)[y_true[batch]] if start % 32 else y_true[batch]
        metric.update_state(labels, scores[batch])
    expected = sklearn_figures(y_true, y_pred, num_classes)
    np.testing.assert_array_equal(metric.matrix.numpy(), expected["matrix"])
    result = {key: float(value) for key, value in metric.result().items()}
    assert set(result) == set(spec.SUMMARY_KEYS)
    for key in spec.SUMMARY_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key
    metric.reset_state()
    assert metric.matrix.numpy().sum() == 0


def test_soft_labels_count_their_largest_class():
    metric = metrics.ConfusionMatrixMetric(3)
    metric.update_state(np.array([[0.7, 0.3, 0.0], [0.2, 0.0, 0.8]]),
                        np.array([[0.1, 0.9, 0.0], [0.0, 0.1, 0.9]]))
    np.testing.assert_array_equal(metric.matrix.numpy(), [[0, 1, 0], [0, 0, 0], [0, 0, 1]])


def test_keras_metric_sums_replicas_under_mirrored_strategy():
    devices = [device.name for device in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest configures two logical CPUs"
    strategy = tf.distribute.MirroredStrategy(devices)
    num_classes = 4
    y_true, y_pred = random_case(3, num_classes, size=64)
    with strategy.scope():
        metric = metrics.ConfusionMatrixMetric(num_classes)
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.eye(num_classes, dtype="float32")[y_true],
         np.eye(num_classes, dtype="float32")[y_pred])).batch(16)

    @tf.function
    def step(labels, scores):
        strategy.run(metric.update_state, args=(labels, scores))

    for labels, scores in strategy.experimental_distribute_dataset(dataset):
        step(labels, scores)
    np.testing.assert_array_equal(metric.matrix.numpy(),
                                  sk.confusion_matrix(y_true, y_pred, labels=range(num_classes)))


def test_classification_info_has_the_seed_schema():
    matrix = metrics.confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], 3)
    info = metrics.classification_info(matrix, ["a", "b", "c"])
    assert list(info) == ["accuracy", "balanced accuracy", "a", "b", "c", "mean precision",
                          "mean recall", "mean specificity", "mean f1 score"]
    assert info["b"] == {"Precision": 1.0, "Recall": 0.5, "Specificity": 1.0, "F1 score": 0.6667}
    assert info["accuracy"] == 0.75
