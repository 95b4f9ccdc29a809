"""The typed configuration of a training run.

Field names are the command-line flag names of `train.py`, and the defaults here are the flags'
defaults (train.py reads them from this class), so a config, its flags and the `flags.cfg`
written into every run folder are one and the same thing.
"""

import dataclasses
import os

from skin_keras.distribute import STRATEGIES
from skin_keras.errors import UserError
from skin_keras.metrics import SUMMARY_KEYS
from skin_keras.models import BACKBONES

OPTIMIZERS = ("SGD", "Adam", "AdamW")
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
SAMPLINGS = ("natural", "balanced")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MONITORS = ("val_loss",) + tuple(f"val_{key}" for key in SUMMARY_KEYS)
# Fields that hold file system paths: flags.cfg stores them absolute so it replays from anywhere.
_PATH_FIELDS = ("data_train", "data_val", "save_ret")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (see train.py --help for each field)."""

    data_train: str = "data/train"
    data_val: str = "data/val"
    save_ret: str = "runs"
    model: str = "s"
    weights: str = "imagenet"
    freeze_layers: bool = True
    img_size: int = 224
    dropout: float = 0.2
    batch_size: int = 16
    epochs: int = 50
    optim: str = "SGD"
    lr: float = 0.01
    lrf: float = 0.001
    warmup_epochs: int = 0
    weight_decay: float = 5e-5
    label_smoothing: float = 0.0
    monitor: str = "val_balanced_accuracy"
    class_weight: str = "none"
    sampling: str = "natural"
    patience: int = 0
    precision: str = "float32"
    strategy: str = "auto"
    crop_scale: float = 1.0
    rotation: bool = False
    color_jitter: float = 0.0
    randaugment_magnitude: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    progressive_stages: int = 1
    min_img_size: int = 0
    min_dropout: float = 0.1
    min_randaugment_magnitude: float = 0.0
    min_mixup_alpha: float = 0.0
    finetune_epochs: int = 0
    unfreeze_blocks: int = 0
    finetune_lr: float = 0.001
    feature_cache: str = "~/.cache/skin_keras/features"
    cache_views: int = 1
    seed: int = 0
    deterministic: bool = False
    resume: str = ""

    def __post_init__(self):
        _check_range("epochs", self.epochs, 1, 100000)  # Other checks depend on it.
        if self.model not in BACKBONES:
            raise UserError(f"unknown --model={self.model}; choose one of {', '.join(BACKBONES)}")
        if self.optim.lower() not in {name.lower() for name in OPTIMIZERS}:
            raise UserError(f"unknown --optim={self.optim}; choose one of {', '.join(OPTIMIZERS)}")
        if self.monitor not in MONITORS:
            raise UserError(f"--monitor={self.monitor} is not a validation metric; choose one of "
                            f"{', '.join(MONITORS)}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise UserError(f"unknown --class_weight={self.class_weight}; choose one of "
                            f"{', '.join(CLASS_WEIGHTS)}")
        if self.sampling not in SAMPLINGS:
            raise UserError(f"unknown --sampling={self.sampling}; choose one of "
                            f"{', '.join(SAMPLINGS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision={self.precision}; choose one of "
                            f"{', '.join(PRECISIONS)}")
        if self.strategy not in STRATEGIES:
            raise UserError(f"unknown --strategy={self.strategy}; choose one of "
                            f"{', '.join(STRATEGIES)}")
        _check_range("patience", self.patience, 0, 100000)
        _check_range("cache_views", self.cache_views, 1, 8)
        _check_range("crop_scale", self.crop_scale, 0.05, 1.0)
        _check_range("color_jitter", self.color_jitter, 0.0, 0.9)
        _check_range("randaugment_magnitude", self.randaugment_magnitude, 0.0, 1.0)
        _check_range("mixup_alpha", self.mixup_alpha, 0.0, 10.0)
        _check_range("cutmix_alpha", self.cutmix_alpha, 0.0, 10.0)
        _check_range("progressive_stages", self.progressive_stages, 1, self.epochs)
        _check_range("finetune_epochs", self.finetune_epochs, 0, 100000)
        _check_range("unfreeze_blocks", self.unfreeze_blocks, 0, 7)
        if self.finetune_epochs and not self.freeze_layers:
            raise UserError("--finetune_epochs follows frozen-head epochs: it needs "
                            "--freeze_layers (use --nofreeze_layers alone to train everything)")
        if not self.finetune_lr > 0:
            raise UserError(f"--finetune_lr must be positive, got {self.finetune_lr}")
        if self.progressive_stages > 1:
            _check_range("min_img_size", self.min_img_size, 0, self.img_size)
            if 0 < self.min_img_size < 32:
                raise UserError(f"--min_img_size={self.min_img_size}: at least 32 (0: half of "
                                "--img_size)")
            _check_range("min_dropout", self.min_dropout, 0.0, self.dropout)
            _check_range("min_randaugment_magnitude", self.min_randaugment_magnitude, 0.0,
                         self.randaugment_magnitude)
            _check_range("min_mixup_alpha", self.min_mixup_alpha, 0.0, self.mixup_alpha)
        _check_range("img_size", self.img_size, 32, 2048)
        _check_range("batch_size", self.batch_size, 1, 65536)
        _check_range("warmup_epochs", self.warmup_epochs, 0, self.epochs - 1)
        _check_range("dropout", self.dropout, 0.0, 0.99)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.99)
        _check_range("lrf", self.lrf, 0.0, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")

    @property
    def augmentation(self):
        from skin_keras.input_pipeline import Augmentation  # pylint: disable=g-import-not-at-top

        # Its fields are flags of the same names.
        return Augmentation(**{field.name: getattr(self, field.name)
                               for field in dataclasses.fields(Augmentation)})

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
        for name, off in (("crop_scale", 1.0), ("rotation", False), ("color_jitter", 0.0),
                          ("randaugment_magnitude", 0.0), ("mixup_alpha", 0.0),
                          ("cutmix_alpha", 0.0)):
            if getattr(self, name) != off:
                return f"--{name} changes the images every epoch"
        return None

    @property
    def optimizer_name(self) -> str:
        """The canonical spelling of `optim` (the flag accepts any letter case)."""
        return next(name for name in OPTIMIZERS if name.lower() == self.optim.lower())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_flagfile(self) -> str:
        """An absl flagfile that replays this config: `python train.py --flagfile=flags.cfg`."""
        lines = []
        for name, value in self.to_dict().items():
            if isinstance(value, bool):
                lines.append(f"--{name}" if value else f"--no{name}")
                continue
            if name in _PATH_FIELDS or (name == "weights" and os.path.isfile(value)) or (
                    name == "feature_cache" and value != "none"):
                value = os.path.abspath(os.path.expanduser(value))
            lines.append(f"--{name}={value}")
        return "\n".join(lines) + "\n"


def _check_range(name: str, value, low, high) -> None:
    if not low <= value <= high:
        raise UserError(f"--{name}={value} is out of range [{low}, {high}]")
