r"""Scores a trained model on a labelled class-folder set (e.g. a held-out test set).

    python evaluate.py --model_path=runs/exp3 --data=data/test --output=runs/exp3/test

Writes metrics.json (the training log's "valid info" schema plus per-class ROC AUC and support),
confusion_matrix.png, roc_curves.png, misclassified.csv (most confident mistakes first) and
predictions.csv. --tta averages flipped/rotated views; --explain adds Grad-CAM overlays.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow is imported.

from absl import flags  # pylint: disable=g-import-not-at-top

from skin_keras import UserError, cli, evaluation, inference  # pylint: disable=g-import-not-at-top

_MODEL_PATH = flags.DEFINE_string(
    "model_path", None, "Run folder (uses weights/best.keras) or a .keras file.", required=True)
_DATA = flags.DEFINE_string(
    "data", None, "Labelled images: one sub-folder per class, named as the model's classes "
    "(a class may be absent).", required=True)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Folder for the report (default: <model run folder>/eval_<data folder>).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per batch.")
_TTA = flags.DEFINE_integer(
    "tta", 1, "Test-time augmentation: average 1-8 flipped/rotated views (1 = off).")
_EXPLAIN = flags.DEFINE_boolean(
    "explain", False, "Write a Grad-CAM heat map of the predicted class for every image.")

_BACKEND = flags.DEFINE_enum("backend", "auto", list(inference.BACKENDS),
                             inference.BACKEND_HELP)


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    evaluation.evaluate_model_path(_MODEL_PATH.value, _DATA.value, _OUTPUT.value,
                                   batch_size=_BATCH_SIZE.value, tta=_TTA.value,
                                   explain=_EXPLAIN.value, backend=_BACKEND.value)


if __name__ == "__main__":
    cli.run(main)
