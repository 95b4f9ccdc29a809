"""The training plan as phases: each a range of epochs with its model, datasets and checkpoint
policy, set up when it begins (or when a resumed run continues inside it).

    CachedHead   the head alone on cached backbone features (frozen backbone, the seed's
                 recipe): milliseconds per epoch, head-only checkpoints (checkpoints.py)
    FullImages   the model on decoded images; one per progressive stage, each at its image size
                 and regularisation (recipe.stage_plan)
    FineTune     after the frozen epochs: the backbone's top blocks trainable, a new optimizer

A new optional stage is a new phase here, not a branch in the loop.
"""

import dataclasses
import logging

from skin_keras.core.layout import RunFolder
from skin_keras.data import pipeline
from skin_keras.model import builder, parts
from skin_keras.train import resume
from skin_keras.train.checkpoints import FullModelCheckpoints, HeadCheckpoints
from skin_keras.train.inputs import training_draw
from skin_keras.train.recipe import Stage, stage_plan
from skin_keras.train.session import Session

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class FullImages:
    """Epochs of the model on decoded, augmented images at the stage's size."""

    stage: Stage
    progressive: bool = False
    @property
    def log_entry(self) -> dict | None:
        """What log.json records with each epoch (a progressive stage's size and regularisation)."""
        return self.stage.log_entry() if self.progressive else None

    def enter(self, session: Session) -> None:
        if self.progressive:
            _log.info(f"stage: epochs {self.stage.first_epoch + 1}-{self.stage.last_epoch}, "
                      f"{self.stage.log_entry()}")
            parts.head_of(session.model).dropout.rate = self.stage.dropout
            session.train_model.train_function = None  # Retrace: the dropout rate is traced in.

    def resume(self, session: Session) -> None:
        """Continues a killed run inside this phase: the weights and optimizer state of
        weights/last.keras (its step count drives the schedule)."""
        with session.strategy.scope():
            saved = resume.load_for_resume(RunFolder(session.run_dir).last)
            session.model.set_weights(saved.get_weights())
            for variable, value in zip(session.model.optimizer.variables,
                                       saved.optimizer.variables):
                variable.assign(value)

    def fit_model(self, session: Session):
        return session.train_model

    def datasets(self, session: Session) -> tuple:
        config, data = session.config, session.data
        augmentation = dataclasses.replace(
            config.augmentation, randaugment_magnitude=self.stage.randaugment_magnitude,
            mixup_alpha=self.stage.mixup_alpha)
        train = pipeline.make_dataset(
            data.train.paths, data.train.labels, data.train.num_classes, self.stage.img_size,
            config.batch_size, data.inputs["train"], training_draw(config, data, augmentation))
        val = pipeline.make_dataset(data.val.paths, data.val.labels, data.val.num_classes,
                                    config.img_size, config.batch_size, data.inputs["val"])
        return train, val

    def checkpoints(self, session: Session):
        return FullModelCheckpoints(RunFolder(session.run_dir).weights, session.model, session.info)


@dataclasses.dataclass
class FineTune(FullImages):
    """Full images with the backbone's top `--unfreeze_blocks` trainable (BatchNorm frozen) and
    the fine-tuning optimizer."""

    def enter(self, session: Session) -> None:
        config = session.config
        with session.strategy.scope():
            builder.unfreeze_top_blocks(parts.backbone_of(session.model), config.unfreeze_blocks)
        session.compile(finetune=True, models=(session.model, session.train_model))
        _log.info(f"fine-tuning: epochs {self.stage.first_epoch + 1}-{self.stage.last_epoch}, "
                  f"{parts.count_params(session.model.trainable_weights):,} trainable "
                  f"parameters, lr {config.finetune_lr}")


@dataclasses.dataclass
class CachedHead(FullImages):
    """The head on cached backbone features; the full model is saved from them (checkpoints)."""

    def resume(self, session: Session) -> None:
        super().resume(session)
        # A head checkpoint the killed run left: written out as last.keras and best.keras.
        HeadCheckpoints(RunFolder(session.run_dir).weights, session.model, session.info,
                        session.head).resume(session.log.epochs, session.log)

    def fit_model(self, session: Session):
        return session.head

    def datasets(self, session: Session) -> tuple:
        return session.cached_datasets()

    def checkpoints(self, session: Session):
        return HeadCheckpoints(RunFolder(session.run_dir).weights, session.model, session.info,
                               session.head, best_on_disk=session.log.best_epoch)


def plan(session: Session) -> list[FullImages]:
    """The run's phases in order."""
    config = session.config
    blocker = config.feature_cache_blocker
    if session.head is None and blocker and config.freeze_layers and (
            config.feature_cache != "none"):
        _log.info(f"feature cache not used: {blocker}")
    phases = []
    for stage in stage_plan(config):
        if stage.finetune:
            phases.append(FineTune(stage))
        elif session.head is not None:
            phases.append(CachedHead(stage))
        else:
            phases.append(FullImages(stage, progressive=config.progressive_stages > 1))
    return phases
