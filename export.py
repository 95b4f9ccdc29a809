r"""Exports a trained model as a TF Serving SavedModel and TFLite files, with a parity report.

    python export.py --model_path=runs/exp3 --output=exports/skin \
        --formats=saved_model,tflite_fp16 --data_val=data/val

Formats: saved_model (TF Serving layout: <output>/saved_model/<name>/<version>/), tflite_fp32,
tflite_fp16, tflite_dynamic (int8 weights) and tflite_int8 (full integer, calibrated on
--data_val). Every artifact is checked against the Keras model on up to --parity_images images
of --data_val; the table is printed and saved as <output>/report.json.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow is imported.

from absl import flags  # pylint: disable=g-import-not-at-top

from skin_keras import UserError, cli, exporting  # pylint: disable=g-import-not-at-top

_MODEL_PATH = flags.DEFINE_string(
    "model_path", None, "Run folder (uses weights/best.keras) or a .keras file.", required=True)
_OUTPUT = flags.DEFINE_string("output", "exports/skin", "Folder for the exported artifacts.")
_FORMATS = flags.DEFINE_list(
    "formats", ["saved_model", "tflite_fp16"], f"Comma-separated: {', '.join(exporting.FORMATS)}.")
_DATA_VAL = flags.DEFINE_string(
    "data_val", None, "Class-folder images for the parity check and int8 calibration.",
    required=True)
_NAME = flags.DEFINE_string("name", "skin", "Model name (TF Serving's model_name, file names).")
_VERSION = flags.DEFINE_integer("version", 0, "SavedModel version; 0 = the next free number.")
_PARITY_IMAGES = flags.DEFINE_integer(
    "parity_images", 200, "Images of --data_val on which every artifact is compared to Keras.")
_CALIBRATION_IMAGES = flags.DEFINE_integer(
    "calibration_images", 100, "Images of --data_val that calibrate tflite_int8.")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    exporting.export(exporting.ExportConfig(
        model_path=_MODEL_PATH.value, output=_OUTPUT.value, data_val=_DATA_VAL.value,
        formats=tuple(_FORMATS.value), name=_NAME.value, version=_VERSION.value,
        parity_images=_PARITY_IMAGES.value, calibration_images=_CALIBRATION_IMAGES.value))


if __name__ == "__main__":
    cli.run(main)
