r"""Trains an EfficientNetV2 skin-lesion classifier on class folders and writes a run folder.

    python train.py --flagfile=configs/efficientnetv2_s.cfg \
        --data_train=data/train --data_val=data/val

Put --flagfile first; flags after it override the file. Every run writes <save_ret>/expN/ with
weights/best.keras (best epoch by --monitor on validation), weights/last.keras, class_indices.json,
flags.cfg (replays the run), train_params.json, log.json and plots. The flags are the fields of
skin_keras.train.config.TrainConfig (`--helpshort` lists them); --metadata=auto fuses the patient
metadata.csv that prepare_isic writes. See README.md.
"""

from skin_keras.core import console

console.quiet_tensorflow_startup()  # Before anything imports TensorFlow.

from skin_keras.core import cli  # noqa: E402
from skin_keras.train.config import TrainConfig  # noqa: E402
from skin_keras.workflows import training  # noqa: E402

main = cli.script(TrainConfig, training.run)

if __name__ == "__main__":
    cli.run(main)
