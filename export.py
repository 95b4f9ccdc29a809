r"""Exports a trained model as a TF Serving SavedModel and TFLite files, with a parity report.

    python export.py --model_path=runs/exp3 --output=exports/skin \
        --formats=saved_model,tflite_fp16 --data_val=data/val

Formats: saved_model (TF Serving layout: <output>/saved_model/<name>/<version>/), tflite_fp32,
tflite_fp16, tflite_dynamic (int8 weights) and tflite_int8 (full integer, calibrated on
--data_val). Every artifact is checked against the Keras model on up to --parity_images images
of --data_val (a metadata model also on its metadata input: --metadata=CSV, or varied); the
table is printed and saved as <output>/report.json. The flags are the fields
of skin_keras.export.job.ExportConfig.
"""

from skin_keras.core import console

console.quiet_tensorflow_startup()  # Before anything imports TensorFlow.

from skin_keras.core import cli  # noqa: E402
from skin_keras.export import job  # noqa: E402

main = cli.script(job.ExportConfig, job.export)

if __name__ == "__main__":
    cli.run(main)
