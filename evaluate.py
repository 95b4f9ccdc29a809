r"""Scores a trained model on a labelled class-folder set (e.g. a held-out test set).

    python evaluate.py --model_path=runs/exp3 --data=data/test --output=runs/exp3/test

Writes metrics.json (the training log's "valid info" schema plus per-class ROC AUC and support),
confusion_matrix.png, roc_curves.png, misclassified.csv (most confident mistakes first) and
predictions.csv. --tta averages flipped/rotated views; --explain adds Grad-CAM overlays; a model
trained with patient metadata takes --metadata=CSV, and --metadata_ablation scores it again with
the metadata blanked. The flags are the fields of skin_keras.evaluate.evaluation.EvaluateConfig.
"""

from skin_keras.core import console

console.quiet_tensorflow_startup()  # Before anything imports TensorFlow.

from skin_keras.core import cli  # noqa: E402
from skin_keras.evaluate import evaluation  # noqa: E402

main = cli.script(evaluation.EvaluateConfig, evaluation.evaluate_model_path)

if __name__ == "__main__":
    cli.run(main)
