r"""Trains an EfficientNetV2 skin-lesion classifier on class folders and writes a run folder.

    python train.py --flagfile=configs/efficientnetv2_s.cfg \
        --data_train=data/train --data_val=data/val

Put --flagfile first; flags after it override the file. Every run writes <save_ret>/expN/ with
weights/best.keras (best epoch by --monitor on validation), weights/last.keras, class_indices.json,
flags.cfg (replays the run), train_params.json, log.json and plots. See README.md.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow is imported.

from absl import flags  # pylint: disable=g-import-not-at-top

from skin_keras import UserError, cli, config as config_lib, training  # pylint: disable=g-import-not-at-top

_DEFAULTS = config_lib.TrainConfig

# --- Data ---
_DATA_TRAIN = flags.DEFINE_string(
    "data_train", _DEFAULTS.data_train, "Training set: a folder with one sub-folder per class.")
_DATA_VAL = flags.DEFINE_string(
    "data_val", _DEFAULTS.data_val, "Validation set, with the same class folders as --data_train.")
_SAVE_RET = flags.DEFINE_string(
    "save_ret", _DEFAULTS.save_ret, "Where run folders go: each run writes a new <save_ret>/expN.")
_IMG_SIZE = flags.DEFINE_integer(
    "img_size", _DEFAULTS.img_size, "Images are resized to img_size x img_size.")
# --- Model ---
_MODEL = flags.DEFINE_enum(
    "model", _DEFAULTS.model, list(config_lib.BACKBONES),
    "EfficientNetV2 variant: s, m, l (the seed's three) or b0-b3 (small, for phones and quick runs).")
_WEIGHTS = flags.DEFINE_string(
    "weights", _DEFAULTS.weights,
    "imagenet (Keras downloads and caches them), none (random init) or a path to a backbone "
    "weights file (.weights.h5, or Keras' efficientnetv2-*_notop.h5) for machines offline.")
_FREEZE_LAYERS = flags.DEFINE_boolean(
    "freeze_layers", _DEFAULTS.freeze_layers,
    "Freeze the backbone (inference mode) and train only the head, as the seed does.")
_DROPOUT = flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Dropout rate before the last layer.")
# --- Optimisation ---
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Images per batch.")
_EPOCHS = flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Training epochs.")
_OPTIM = flags.DEFINE_string("optim", _DEFAULTS.optim, "SGD (momentum 0.9), Adam or AdamW.")
_LR = flags.DEFINE_float("lr", _DEFAULTS.lr, "Initial learning rate (peak, after warm-up).")
_LRF = flags.DEFINE_float(
    "lrf", _DEFAULTS.lrf, "Final learning rate = lr * lrf, reached by a cosine schedule.")
_WARMUP_EPOCHS = flags.DEFINE_integer(
    "warmup_epochs", _DEFAULTS.warmup_epochs, "Epochs of linear warm-up from 0 to lr.")
_WEIGHT_DECAY = flags.DEFINE_float(
    "weight_decay", _DEFAULTS.weight_decay, "Decoupled weight decay of the optimizer.")
_LABEL_SMOOTHING = flags.DEFINE_float(
    "label_smoothing", _DEFAULTS.label_smoothing, "Label smoothing of the cross-entropy loss.")
_MONITOR = flags.DEFINE_string(
    "monitor", _DEFAULTS.monitor,
    "Validation metric that picks weights/best.keras: val_balanced_accuracy (ISIC's metric), "
    "val_accuracy, val_mean_f1, val_mean_recall, val_mean_precision, val_mean_specificity or "
    "val_loss.")
_CLASS_WEIGHT = flags.DEFINE_enum(
    "class_weight", _DEFAULTS.class_weight, list(config_lib.CLASS_WEIGHTS),
    "Loss weight per class from the training counts: none, balanced (N / (C * n_c)) or sqrt "
    "(its square root); logged in train_params.json.")
_SAMPLING = flags.DEFINE_enum(
    "sampling", _DEFAULTS.sampling, list(config_lib.SAMPLINGS),
    "natural: each image once per epoch; balanced: draw every class with the same probability.")
_PATIENCE = flags.DEFINE_integer(
    "patience", _DEFAULTS.patience,
    "Stop when --monitor has not improved for this many epochs (0: never stop early).")
_PRECISION = flags.DEFINE_enum(
    "precision", _DEFAULTS.precision, list(config_lib.PRECISIONS),
    "Compute dtype: float32, or mixed precision (float16 on GPUs, bfloat16 on TPUs and recent "
    "CPUs); weights and the softmax output stay float32.")
_STRATEGY = flags.DEFINE_enum(
    "strategy", _DEFAULTS.strategy, list(config_lib.STRATEGIES),
    "tf.distribute strategy: auto (several GPUs: mirrored; else one device), one_device, "
    "mirrored (all GPUs, else all logical CPUs) or tpu (TPU_NAME); multi_worker is refused "
    "(Keras 3 fit() fails under it, see README). --batch_size is the global batch, split evenly "
    "over the replicas.")
# --- Augmentation (training only, in the input pipeline; all off by default) ---
_CROP_SCALE = flags.DEFINE_float(
    "crop_scale", _DEFAULTS.crop_scale,
    "Random resized crop keeping at least this fraction of the area (1.0 = off).")
_ROTATION = flags.DEFINE_boolean(
    "rotation", _DEFAULTS.rotation, "Random rotation by any angle (borders reflected).")
_COLOR_JITTER = flags.DEFINE_float(
    "color_jitter", _DEFAULTS.color_jitter,
    "Strength of random brightness/contrast/saturation/hue changes (0 = off).")
_RANDAUGMENT_MAGNITUDE = flags.DEFINE_float(
    "randaugment_magnitude", _DEFAULTS.randaugment_magnitude,
    "keras.layers.RandAugment factor in (0, 1] (0 = off).")
_MIXUP_ALPHA = flags.DEFINE_float(
    "mixup_alpha", _DEFAULTS.mixup_alpha, "MixUp alpha (0 = off); labels become soft.")
_CUTMIX_ALPHA = flags.DEFINE_float(
    "cutmix_alpha", _DEFAULTS.cutmix_alpha,
    "CutMix factor (0 = off); with MixUp too, each batch gets one of the two.")
# --- Progressive learning (EfficientNetV2): small images, weak regularisation first ---
_PROGRESSIVE_STAGES = flags.DEFINE_integer(
    "progressive_stages", _DEFAULTS.progressive_stages,
    "Split training into N stages whose image size and regularisation grow linearly (1 = off).")
_MIN_IMG_SIZE = flags.DEFINE_integer(
    "min_img_size", _DEFAULTS.min_img_size, "Image size of the first stage (0: half --img_size).")
_MIN_DROPOUT = flags.DEFINE_float(
    "min_dropout", _DEFAULTS.min_dropout, "Dropout of the first stage (grows to --dropout).")
_MIN_RANDAUGMENT_MAGNITUDE = flags.DEFINE_float(
    "min_randaugment_magnitude", _DEFAULTS.min_randaugment_magnitude,
    "RandAugment factor of the first stage (grows to --randaugment_magnitude).")
_MIN_MIXUP_ALPHA = flags.DEFINE_float(
    "min_mixup_alpha", _DEFAULTS.min_mixup_alpha,
    "MixUp alpha of the first stage (grows to --mixup_alpha).")
# --- Staged fine-tuning: after --epochs with a frozen backbone ---
_FINETUNE_EPOCHS = flags.DEFINE_integer(
    "finetune_epochs", _DEFAULTS.finetune_epochs,
    "Epochs of fine-tuning after the frozen-head epochs (0 = none); needs --freeze_layers.")
_UNFREEZE_BLOCKS = flags.DEFINE_integer(
    "unfreeze_blocks", _DEFAULTS.unfreeze_blocks,
    "How many of the backbone's top blocks fine-tuning trains (0 = all); BatchNorm stays frozen.")
_FINETUNE_LR = flags.DEFINE_float(
    "finetune_lr", _DEFAULTS.finetune_lr, "Peak learning rate of the fine-tuning phase.")
# --- Frozen-backbone feature cache ---
_FEATURE_CACHE = flags.DEFINE_string(
    "feature_cache", _DEFAULTS.feature_cache,
    "With a frozen backbone and no augmentation beyond flips/rotations, compute each image's "
    "pooled backbone features once, keep them in this folder (keyed by file content, model, "
    "weights, size, precision) and train the head on them. none = off.")
_CACHE_VIEWS = flags.DEFINE_integer(
    "cache_views", _DEFAULTS.cache_views,
    "Flips/rotations cached per training image (1-8); each epoch draws one of them. 1 = the "
    "image as it is (fastest), 8 = all that the uncached pipeline draws from.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed (shuffling, init, augmentation).")
_DETERMINISTIC = flags.DEFINE_boolean(
    "deterministic", _DEFAULTS.deterministic,
    "Same flags and data give the same batches and augmentations (slower input pipeline). For "
    "bit-identical runs on GPUs, also set TF_DETERMINISTIC_OPS=1.")
_RESUME = flags.DEFINE_string(
    "resume", _DEFAULTS.resume,
    "Continue an interrupted run folder from its last completed epoch, with the run's own flags: "
    "train.py --flagfile=runs/expN/flags.cfg --resume=runs/expN")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_lib.TrainConfig(**{
        field: flags.FLAGS[field].value for field in config_lib.TrainConfig.__dataclass_fields__})
    training.train_and_evaluate(config)


if __name__ == "__main__":
    cli.run(main)
