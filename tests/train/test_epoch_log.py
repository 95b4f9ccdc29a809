"""The epoch log on its own: entries, the best epoch, non-finite epochs, restore."""

import json
import math

import numpy as np
import pytest

from skin_keras.model import metrics
from skin_keras.train.epoch_log import EpochLog

NAMES = ["a", "b", "c"]
GOOD = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 5]])
HALF = np.array([[5, 0, 0], [5, 0, 0], [0, 0, 5]])
# What all-NaN outputs look like through arg-max: every image in class 0.
NAN_ARGMAX = np.array([[5, 0, 0], [5, 0, 0], [5, 0, 0]])


def test_entries_follow_the_seed_schema_and_the_best_epoch_is_tracked(tmp_path):
    log = EpochLog(NAMES, "val_balanced_accuracy")
    assert log.add(1, GOOD, HALF, 1.0, 1.2, 0.01) is True
    assert log.add(2, GOOD, GOOD, 0.5, 0.6, 0.005, stage={"img_size": 32}) is True
    assert log.add(3, GOOD, HALF, 0.4, 0.7, 0.001) is False
    assert log.best_epoch == 2 and log.epochs == 3
    entry = log.entries["epoch:2"]
    assert entry["valid info"] == {**metrics.classification_info(GOOD, NAMES), "loss": 0.6}
    assert entry["lr"] == 0.005 and entry["stage"] == {"img_size": 32}
    np.testing.assert_array_equal(log.best_matrices()[1], GOOD)
    log.write_log(tmp_path)
    log.write_matrices(tmp_path)
    restored = EpochLog.restore(tmp_path, NAMES, "val_balanced_accuracy")
    assert restored.entries == json.loads((tmp_path / "log.json").read_text())
    assert restored.best_epoch == 2


def test_val_loss_monitor_picks_the_lowest():
    log = EpochLog(NAMES, "val_loss")
    for epoch, loss in enumerate([0.9, 0.5, 0.7], start=1):
        log.add(epoch, GOOD, HALF, 1.0, loss, 0.01)
    assert log.best_epoch == 2


@pytest.mark.parametrize("train_loss, val_loss, flagged", [
    (1.18, math.nan, ["val loss"]),  # Outputs NaN in inference mode, finite weights.
    (math.nan, 0.5, ["train loss"]),
    (math.inf, math.nan, ["train loss", "val loss"]),
])
def test_an_epoch_with_a_non_finite_loss_is_flagged_and_never_best(tmp_path, train_loss,
                                                                   val_loss, flagged):
    log = EpochLog(NAMES, "val_balanced_accuracy")
    # Arg-max of NaN outputs still gives a balanced accuracy (1/3 here): it must not count.
    assert log.add(1, GOOD, NAN_ARGMAX, train_loss, val_loss, 0.01) is False
    assert log.best_epoch is None
    assert log.entries["epoch:1"]["non-finite"] == flagged
    assert log.add(2, GOOD, HALF, 1.0, 1.1, 0.01) is True  # A later finite epoch is best.
    log.write_log(tmp_path)
    log.write_matrices(tmp_path)
    assert EpochLog.restore(tmp_path, NAMES, "val_balanced_accuracy").best_epoch == 2


def test_a_restored_log_never_makes_an_epoch_of_non_finite_loss_best(tmp_path):
    log = EpochLog(NAMES, "val_balanced_accuracy")
    log.add(1, GOOD, GOOD, 1.0, 1.0, 0.01)
    log.add(2, GOOD, NAN_ARGMAX, 1.0, 1.0, 0.01)
    entries = log.entries
    entries["epoch:1"]["valid info"]["loss"] = math.nan  # Unflagged, yet not eligible.
    log.write_log(tmp_path)
    log.write_matrices(tmp_path)
    assert EpochLog.restore(tmp_path, NAMES, "val_balanced_accuracy").best_epoch == 2
