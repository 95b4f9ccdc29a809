r"""Predicts the class of every image in files or folders with a trained model.

    python predict.py --model_path=runs/exp3 --source=inference/img --output=inference/out

--model_path is a run folder (weights/best.keras + class_indices.json) or a .keras file of one.
Writes predictions.csv (path,label,score,<one column per class>,error) and predictions.json;
unreadable files get an error row and the others are still predicted. --explain adds Grad-CAM
overlays (output/explain/), --save_images labelled copies (output/images/).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow is imported.

from absl import flags  # pylint: disable=g-import-not-at-top

from skin_keras import UserError, cli, inference  # pylint: disable=g-import-not-at-top

_MODEL_PATH = flags.DEFINE_string(
    "model_path", None, "Run folder (uses weights/best.keras) or a .keras file.", required=True)
_SOURCE = flags.DEFINE_multi_string(
    "source", ["inference/img"], "Image file or folder (searched recursively); repeat for more.")
_OUTPUT = flags.DEFINE_string("output", "inference/out", "Folder for the results.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per batch.")
_TTA = flags.DEFINE_integer(
    "tta", 1, "Test-time augmentation: average 1-8 flipped/rotated views (1 = off).")
_TOPK = flags.DEFINE_integer("topk", 0, "Also list the k most likely labels per image.")
_SAVE_IMAGES = flags.DEFINE_boolean(
    "save_images", False, "Write copies of the images with label and score drawn on them.")
_EXPLAIN = flags.DEFINE_boolean(
    "explain", False, "Write a Grad-CAM heat map of the predicted class beside each image.")

_BACKEND = flags.DEFINE_enum("backend", "auto", list(inference.BACKENDS),
                             inference.BACKEND_HELP)


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    inference.predict_to_folder(
        _MODEL_PATH.value, _SOURCE.value, _OUTPUT.value, batch_size=_BATCH_SIZE.value,
        tta=_TTA.value, topk=_TOPK.value, save_images=_SAVE_IMAGES.value,
        explain=_EXPLAIN.value, backend=_BACKEND.value)


if __name__ == "__main__":
    cli.run(main)
