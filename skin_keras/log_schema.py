"""The names of the figures a run logs: Keras metric keys and their spellings in log.json.

`ConfusionMatrixMetric.result()` returns SUMMARY_KEYS; Keras logs them as-is and with a `val_`
prefix (what `--monitor` names); log.json keeps the seed's readable spellings (LOG_NAMES).
"""

SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "mean_precision", "mean_recall",
                "mean_specificity", "mean_f1")
LOG_NAMES = {"loss": "loss", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
             "mean_precision": "mean precision", "mean_recall": "mean recall",
             "mean_specificity": "mean specificity", "mean_f1": "mean f1 score"}
MONITORS = ("val_loss",) + tuple(f"val_{key}" for key in SUMMARY_KEYS)


def monitor_log_key(monitor: str) -> tuple[str, str]:
    """Where a Keras log name (val_balanced_accuracy) lives in log.json (valid info, ...)."""
    return "valid info", LOG_NAMES[monitor.removeprefix("val_")]
