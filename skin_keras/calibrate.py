r"""Calibrates a trained run: fits temperature scaling on its validation set.

    python -m skin_keras.calibrate --model_path=runs/exp3

Fits one temperature T on the run's --data_val (or --data) by minimising the negative
log-likelihood, keeps the model as trained in weights/best_uncalibrated.keras, writes the
calibrated model to weights/best.keras (same labels; its probabilities, and those of every
export made from it, are calibrated) and records T with ECE, NLL and Brier before and after in
train_params.json. Running it again refits from the model as trained. The flags are the fields of
skin_keras.fit_calibration.CalibrateConfig.
"""

from skin_keras.core import console

console.quiet_tensorflow_startup()  # Before anything imports TensorFlow.

from skin_keras.core import cli  # noqa: E402
from skin_keras.workflows import fit_calibration  # noqa: E402

cli.define_flags(fit_calibration.CalibrateConfig)


def main(argv):
    entry = fit_calibration.calibrate_run(cli.config_from_flags(fit_calibration.CalibrateConfig, argv))
    print(fit_calibration.describe(entry))


if __name__ == "__main__":
    cli.run(main)
