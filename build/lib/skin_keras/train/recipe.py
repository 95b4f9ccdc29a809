"""The training recipe derived from a config: optimizers and their schedules, the stage plan
(progressive learning, fine-tuning) and the loss weight per class."""

import dataclasses

import keras
import numpy as np

from skin_keras.train.config import TrainConfig


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The seed's optimizers with a per-step cosine schedule from lr to lr·lrf (after warm-up)."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    decay_steps = max(1, config.epochs * steps_per_epoch - warmup_steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else config.lr, decay_steps=decay_steps,
        alpha=config.lrf, warmup_target=config.lr if warmup_steps else None,
        warmup_steps=warmup_steps)
    if config.optim == "SGD":
        return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=config.weight_decay)
    optimizer_class = keras.optimizers.Adam if config.optim == "Adam" else keras.optimizers.AdamW
    return optimizer_class(schedule, weight_decay=config.weight_decay)


def finetune_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The fine-tuning phase's optimizer: cosine from finetune_lr to finetune_lr * lrf."""
    return make_optimizer(dataclasses.replace(
        config, lr=config.finetune_lr, epochs=config.finetune_epochs, warmup_epochs=0),
        steps_per_epoch)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


@dataclasses.dataclass(frozen=True)
class Stage:
    """Epochs [first_epoch, last_epoch) trained at one image size and regularisation."""

    first_epoch: int
    last_epoch: int
    img_size: int
    dropout: float
    randaugment_magnitude: float
    mixup_alpha: float
    finetune: bool = False  # The backbone's top blocks train too (after the frozen-head stages).

    def log_entry(self) -> dict:
        """What log.json records for each epoch of a progressive stage."""
        return {"img_size": self.img_size, "dropout": round(self.dropout, 4),
                "randaugment_magnitude": round(self.randaugment_magnitude, 4),
                "mixup_alpha": round(self.mixup_alpha, 4)}


def stage_plan(config: TrainConfig) -> list[Stage]:
    """Progressive learning (EfficientNetV2, Tan & Le 2021, Algorithm 1).

    The --epochs are split into `progressive_stages` equal stages; image size grows linearly from
    `min_img_size` (default half of `img_size`, rounded to a multiple of 8) to `img_size`, and
    dropout, RandAugment magnitude and MixUp alpha from their minimum to their maximum. One stage
    is plain training at the maximum values. Fine-tuning epochs, if any, form a last stage at the
    maximum values.
    """
    final = Stage(0, config.epochs, config.img_size, config.dropout,
                  config.randaugment_magnitude, config.mixup_alpha)
    finetune = [dataclasses.replace(final, first_epoch=config.epochs, finetune=True,
                                    last_epoch=config.epochs + config.finetune_epochs)
                ] if config.finetune_epochs else []
    count = config.progressive_stages
    bounds = np.linspace(0, config.epochs, count + 1).round().astype(int)
    if count == 1:
        return [final] + finetune
    smallest = config.min_img_size or max(32, 8 * round(config.img_size / 16))
    stages = []
    for index in range(count):
        t = index / (count - 1)
        size = config.img_size if index == count - 1 else max(
            32, 8 * round((smallest + t * (config.img_size - smallest)) / 8))
        stages.append(Stage(
            int(bounds[index]), int(bounds[index + 1]), size,
            config.min_dropout + t * (config.dropout - config.min_dropout),
            config.min_randaugment_magnitude
            + t * (config.randaugment_magnitude - config.min_randaugment_magnitude),
            config.min_mixup_alpha + t * (config.mixup_alpha - config.min_mixup_alpha)))
    return stages + finetune


def class_weights(counts: np.ndarray, mode: str) -> dict[int, float] | None:
    """Loss weight per class from the training counts, or None for mode "none".

    "balanced" is N / (C * n_c) (scikit-learn's formula): every class carries the same total
    weight. "sqrt" is its square root, a milder correction. Both are scaled so that the mean
    weight over the training images is 1, which keeps the loss (and the learning rate) on the
    scale of an unweighted run.
    """
    if mode == "none":
        return None
    counts = np.asarray(counts, np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    if mode == "sqrt":
        weights = np.sqrt(weights)
    weights *= counts.sum() / np.sum(counts * weights)
    return {index: float(weight) for index, weight in enumerate(weights)}
