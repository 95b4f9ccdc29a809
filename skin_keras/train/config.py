"""The typed configuration of a training run: the one declaration of every train.py flag.

Each field's type, default, allowed values and help text are declared with `option()`, here or
in the option group it belongs to (`ModelSpec`, `Augmentation`, `UnknownOptions`); train.py
generates its flags from this class, `flags.cfg` and `train_params.json` are written from an
instance of it, and `--resume` compares instances. Paths are made absolute when the config is
built, so all three see the same value. No TensorFlow here: a config can be built, checked and
printed without loading it.
"""

import dataclasses

from skin_keras.core import cache
from skin_keras.core.errors import UserError
from skin_keras.core.options import (
    canonical_choice,
    check_options,
    check_range,
    option,
    part,
    resolve_paths,
    to_flagfile,
)
from skin_keras.data.augmentation import Augmentation
from skin_keras.model.spec import MONITORS, ModelSpec, UnknownOptions, check_coverage

OPTIMIZERS = ("SGD", "Adam", "AdamW")
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
SAMPLINGS = ("natural", "balanced")
PRECISIONS = ("auto", "float32", "onednn_bfloat16", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
JIT_COMPILES = ("auto", "on", "off")
MAX_EPOCHS = 100000


@dataclasses.dataclass(frozen=True)
class TrainConfig(UnknownOptions, Augmentation, ModelSpec):
    """Everything that defines a training run; `python train.py --helpshort` shows each field.

    The model's options (`ModelSpec`), the augmentation (`Augmentation`) and the unknown rule's
    (`UnknownOptions`) are declared with their parts and included here; `model_spec`,
    `augmentation` and `unknown` give them back as typed parts.
    """

    # --- Data ---
    data_train: str = option("data/train", "Training set: a folder with one sub-folder per "
                             "class.", path=True)
    data_val: str = option("data/val", "Validation set, with the same class folders as "
                           "--data_train.", path=True)
    save_ret: str = option("runs", "Where run folders go: each run writes a new "
                           "<save_ret>/expN.", path=True)
    metadata: str = option(
        "none", "Patient metadata fused into the model: a CSV with an image column (file name "
        "without extension) and age_approx, sex, anatom_site_general; auto = metadata.csv "
        "beside the data folders (prepare_isic writes it) when it exists; none = image only.",
        path=True, keywords=("none", "auto"))
    metadata_dropout: float = option(0.2, "With --metadata: probability that a training "
                                     "image's metadata is blanked to missing, so the model "
                                     "also works without it.", low=0.0, high=0.95)
    # --- Optimisation ---
    batch_size: int = option(16, "Images per batch (the global batch under --strategy).",
                             low=1, high=65536)
    epochs: int = option(50, "Training epochs.", low=1, high=MAX_EPOCHS)
    optim: str = option("SGD", "SGD (momentum 0.9), Adam or AdamW.", choices=OPTIMIZERS,
                        case_sensitive=False)
    lr: float = option(0.01, "Initial learning rate (peak, after warm-up).")
    lrf: float = option(0.001, "Final learning rate = lr * lrf, reached by a cosine schedule.",
                        low=0.0, high=1.0)
    warmup_epochs: int = option(0, "Epochs of linear warm-up from 0 to lr (fewer than "
                                "--epochs).", low=0)
    weight_decay: float = option(5e-5, "Decoupled weight decay of the optimizer.", low=0.0,
                                 high=1.0)
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy loss.", low=0.0,
                                    high=0.99)
    monitor: str = option("val_balanced_accuracy", "Validation metric that picks "
                          "weights/best.keras (val_balanced_accuracy is ISIC's metric).",
                          choices=MONITORS, kind="a validation metric")
    class_weight: str = option("none", "Loss weight per class from the training counts: none, "
                               "balanced (N / (C * n_c)) or sqrt (its square root); logged in "
                               "train_params.json.", choices=CLASS_WEIGHTS)
    sampling: str = option("natural", "natural: each image once per epoch; balanced: draw every "
                           "class with the same probability.", choices=SAMPLINGS)
    balance_by: str = option("", "With --sampling=balanced: within each class, draw every value "
                             "of this column of the split.csv beside --data_train (e.g. center: "
                             "every clinic as likely) with the same probability.")
    patience: int = option(0, "Stop when --monitor has not improved for this many epochs (0: "
                           "never stop early).", low=0, high=MAX_EPOCHS)
    precision: str = option("float32", "Compute dtype: float32; onednn_bfloat16 (TensorFlow's "
                            "oneDNN bfloat16 rewrite, CPUs with avx512_bf16/AMX); mixed_bfloat16 "
                            "or mixed_float16 (Keras' policies, GPUs and TPUs); auto: on such a CPU "
                            "without GPU, whichever of float32 and onednn_bfloat16 a few timed "
                            "training steps of this model find faster, else float32. Weights "
                            "stay float32 in every mode.",
                            choices=PRECISIONS)
    jit_compile: str = option("auto", "XLA compilation of the training step: auto (Keras' "
                              "choice: on with a GPU or TPU, off on CPU-only machines), on or "
                              "off.", choices=JIT_COMPILES)
    strategy: str = option("auto", "tf.distribute strategy: auto (TF_CONFIG with a cluster: "
                           "multi_worker; several GPUs: mirrored; else one device), one_device, "
                           "mirrored (all GPUs, else all logical CPUs), multi_worker (the "
                           "machines TF_CONFIG names, docs/distributed.md) or tpu (TPU_NAME). "
                           "--batch_size is the global batch.", choices=STRATEGIES)
    cluster_timeout: float = option(300.0, "With --strategy=multi_worker: seconds to wait for "
                                    "every worker of the cluster to join before giving up with "
                                    "a message naming the addresses.", low=1.0, high=86400.0)
    # --- Progressive learning (EfficientNetV2): small images, weak regularisation first ---
    progressive_stages: int = option(1, "Split training into N stages whose image size and "
                                     "regularisation grow linearly (1 = off).", low=1)
    min_img_size: int = option(0, "Image size of the first stage (0: half --img_size).", low=0)
    min_dropout: float = option(0.1, "Dropout of the first stage (grows to --dropout).", low=0.0)
    min_randaugment_magnitude: float = option(
        0.0, "RandAugment factor of the first stage (grows to --randaugment_magnitude).", low=0.0)
    min_mixup_alpha: float = option(0.0, "MixUp alpha of the first stage (grows to "
                                    "--mixup_alpha).", low=0.0)
    # --- Staged fine-tuning: after --epochs with a frozen backbone ---
    finetune_epochs: int = option(0, "Epochs of fine-tuning after the frozen-head epochs (0 = "
                                  "none); needs --freeze_layers.", low=0, high=MAX_EPOCHS)
    unfreeze_blocks: int = option(0, "How many of the backbone's top blocks fine-tuning trains "
                                  "(0 = all); BatchNorm stays frozen.", low=0, high=7)
    finetune_lr: float = option(0.001, "Peak learning rate of the fine-tuning phase.")
    # --- Frozen-backbone feature cache ---
    feature_cache: str = option(
        "auto", "With a frozen backbone and no augmentation beyond flips/rotations, compute "
        "each image's pooled backbone features once, keep them in this folder (keyed by file "
        "content, model, weights, size, precision) and train the head on them. auto = "
        "<cache>/features (~/.cache/skin_keras or $SKIN_KERAS_CACHE); none = off.",
        path=True, keywords=("none",))
    cache_views: int = option(1, "Flips/rotations cached per training image (1-8); each epoch "
                              "draws one of them. 1 = the image as it is (fastest), 8 = all "
                              "that the uncached pipeline draws from.", low=1, high=8)
    # --- Run ---
    folds: int = option(0, "K >= 2: K-fold cross-validation of the training images (lesion-"
                        "grouped by the split.csv prepare_isic writes beside them): one run per "
                        "fold in <run>/fold_i, out-of-fold predictions and balanced accuracy, "
                        "and the ensemble of the K members as the run's model (scored on "
                        "--data_val). 0 = one model.", low=0, high=50)
    average_epochs: int = option(0, "Also write weights/averaged.keras: the mean of the weights "
                                 "over the last K epochs, BatchNorm statistics re-estimated on "
                                 "training images (SWA/SWAD, for other clinics). 0 = off.",
                                 low=0, high=1000)
    fold_by: str = option("", "With --folds: leave one group out instead, one member per value "
                          "of this column of the split.csv beside --data_train (e.g. center, "
                          "from prepare_isic --groups); --folds is the number of values.")
    calibrate: bool = option(False, "After training, fit temperature scaling on the validation "
                             "set: weights/best.keras then outputs calibrated probabilities "
                             "(python -m skin_keras.calibrate does it for an existing run).")
    seed: int = option(0, "Random seed (shuffling, init, augmentation).", low=0, high=2**32 - 1)
    deterministic: bool = option(False, "Same flags and data give the same batches and "
                                 "augmentations (slower input pipeline). For bit-identical runs "
                                 "on GPUs, also set TF_DETERMINISTIC_OPS=1.")
    resume: str = option("", "Continue an interrupted run folder from its last completed "
                         "epoch, with the run's own flags: train.py "
                         "--flagfile=runs/expN/flags.cfg --resume=runs/expN", path=True)

    def __post_init__(self):
        if self.feature_cache == "auto":
            object.__setattr__(self, "feature_cache", str(cache.cache_root() / "features"))
        check_options(self)
        object.__setattr__(self, "optim", canonical_choice("optim", self.optim, OPTIMIZERS,
                                                           case_sensitive=False))
        resolve_paths(self)
        # Checks that involve several fields.
        check_range("warmup_epochs", self.warmup_epochs, 0, self.epochs - 1)
        check_range("progressive_stages", self.progressive_stages, 1, self.epochs)
        check_coverage(self.unknown_coverage)
        if self.folds == 1:
            raise UserError("--folds=1 is no cross-validation: give K >= 2 folds, or 0 for one "
                            "model")
        if self.finetune_epochs and not self.freeze_layers:
            raise UserError("--finetune_epochs follows frozen-head epochs: it needs "
                            "--freeze_layers (use --nofreeze_layers alone to train everything)")
        if self.train_batch_norm and self.freeze_layers:
            raise UserError("--train_batch_norm lets a training backbone's BatchNormalization "
                            "learn: it needs --nofreeze_layers")
        if self.balance_by and self.sampling != "balanced":
            raise UserError(f"--balance_by={self.balance_by} balances within classes: it needs "
                            "--sampling=balanced")
        if self.average_epochs > self.epochs + self.finetune_epochs:
            raise UserError(f"--average_epochs={self.average_epochs}: the run has only "
                            f"{self.epochs + self.finetune_epochs} epochs")
        if self.average_epochs and self.feature_cache_blocker is None:
            raise UserError("--average_epochs averages the whole model: it needs the images "
                            "every epoch (--feature_cache=none, or a training backbone)")
        for name in ("lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.progressive_stages > 1:
            check_range("min_img_size", self.min_img_size, 0, self.img_size)
            if 0 < self.min_img_size < 32:
                raise UserError(f"--min_img_size={self.min_img_size}: at least 32 (0: half of "
                                "--img_size)")
            check_range("min_dropout", self.min_dropout, 0.0, self.dropout)
            check_range("min_randaugment_magnitude", self.min_randaugment_magnitude, 0.0,
                        self.randaugment_magnitude)
            check_range("min_mixup_alpha", self.min_mixup_alpha, 0.0, self.mixup_alpha)

    @property
    def model_spec(self) -> ModelSpec:
        return part(self, ModelSpec)

    @property
    def augmentation(self) -> Augmentation:
        return part(self, Augmentation)

    @property
    def unknown(self) -> UnknownOptions:
        return part(self, UnknownOptions)

    @property
    def feature_cache_blocker(self) -> str | None:
        """Why cached backbone features cannot stand in for the backbone, or None if they can.

        They can when the backbone is frozen and every epoch sees the same images up to a flip
        or 90-degree rotation (the views the cache stores).
        """
        if self.feature_cache == "none":
            return "--feature_cache=none"
        if not self.freeze_layers:
            return "the backbone trains (--nofreeze_layers)"
        if self.progressive_stages > 1:
            return "progressive stages change the image size"
        changing = self.augmentation.changes_images()
        if changing:
            return f"--{changing[0]} changes the images every epoch"
        return None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_flagfile(self) -> str:
        """An absl flagfile that replays this config: `python train.py --flagfile=flags.cfg`."""
        return to_flagfile(self)
