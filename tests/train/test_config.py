"""Configs: every rejected value, paths resolved once, flags generated from the declarations."""

import dataclasses
import os
import subprocess
import sys

import pytest
from absl import flags

from skin_keras.core import cli
from skin_keras.core.errors import UserError
from skin_keras.data.augmentation import Augmentation
from skin_keras.data.isic import PrepareConfig
from skin_keras.evaluate.evaluation import EvaluateConfig
from skin_keras.export.job import ExportConfig
from skin_keras.infer.predict import PredictConfig
from skin_keras.model import spec
from skin_keras.train import config as config_lib
from skin_keras.train.config import TrainConfig
from skin_keras.workflows.fit_calibration import CalibrateConfig

from conftest import REPO, tiny_config


@pytest.mark.parametrize("overrides, message", [
    (dict(model="xl"), "unknown --model=xl"),
    (dict(optim="RMSprop"), "unknown --optim=RMSprop"),
    (dict(monitor="accuracy"), "--monitor=accuracy is not a validation metric"),
    (dict(epochs=0), "--epochs=0 is out of range"),
    (dict(warmup_epochs=2, epochs=2), "--warmup_epochs=2 is out of range"),
    (dict(lr=0.0), "--lr must be positive"),
    (dict(finetune_lr=-1.0), "--finetune_lr must be positive"),
    (dict(img_size=16), "--img_size=16 is out of range"),
    (dict(batch_size=0), "--batch_size=0 is out of range"),
    (dict(class_weight="inverse"), "unknown --class_weight=inverse"),
    (dict(sampling="oversample"), "unknown --sampling=oversample"),
    (dict(patience=-1), "--patience=-1 is out of range"),
    (dict(precision="float8"), "unknown --precision=float8"),
    (dict(strategy="gpu"), "unknown --strategy=gpu"),
    (dict(cluster_timeout=-1.0), r"--cluster_timeout=-1.0 is out of range"),
    (dict(cluster_timeout=float("nan")), r"--cluster_timeout=nan is not a finite number"),
    (dict(lr=float("inf")), r"--lr=inf is not a finite number"),
    (dict(batch_norm="sync"), "unknown --batch_norm=sync"),
    (dict(seed=-1), r"--seed=-1 is out of range \[0, 4294967295\]"),
    (dict(seed=2**32), r"--seed=4294967296 is out of range"),
    (dict(progressive_stages=3, epochs=2), "--progressive_stages=3 is out of range"),
    (dict(progressive_stages=2, min_img_size=64, img_size=48), "--min_img_size=64 is out of"),
    (dict(progressive_stages=2, min_img_size=16), "--min_img_size=16: at least 32"),
    (dict(progressive_stages=2, min_dropout=0.5, dropout=0.2), "--min_dropout=0.5 is out of"),
    (dict(finetune_epochs=2, freeze_layers=False), "--finetune_epochs follows frozen-head"),
    (dict(train_batch_norm=True, freeze_layers=True), "--train_batch_norm lets a training"),
    (dict(unfreeze_blocks=8), "--unfreeze_blocks=8 is out of range"),
    (dict(crop_scale=0.0), "--crop_scale=0.0 is out of range"),
    (dict(randaugment_magnitude=2.0), "--randaugment_magnitude=2.0 is out of range"),
    (dict(mixup_alpha=-1.0), "--mixup_alpha=-1.0 is out of range"),
    (dict(cache_views=9), "--cache_views=9 is out of range"),
    (dict(color_constancy="retinex"), "unknown --color_constancy=retinex"),
    (dict(cc_power=0.0), "--cc_power=0.0 is out of range"),
    (dict(cc_power=-2.0), "--cc_power=-2.0 is out of range"),
    (dict(zoom_out=3.0), "--zoom_out=3.0 is out of range"),
    (dict(vignette_prob=1.5), "--vignette_prob=1.5 is out of range"),
    (dict(illuminant_jitter=-0.1), "--illuminant_jitter=-0.1 is out of range"),
    (dict(jpeg_prob=2.0), "--jpeg_prob=2.0 is out of range"),
])
def test_bad_train_configs_are_rejected_with_the_flag_name(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message) as error:
        tiny_config(tmp_path, tmp_path, **overrides)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("make, message", [
    (lambda: PredictConfig(model_path="m", batch_size=0), "--batch_size=0 is out of range"),
    (lambda: PredictConfig(model_path="m", tta=9), "--tta=9 is out of range"),
    (lambda: PredictConfig(model_path="m", topk=-1), "--topk=-1 must be at least 0"),
    (lambda: PredictConfig(model_path="m", backend="tensorrt"), "unknown --backend=tensorrt"),
    (lambda: PredictConfig(), "--model_path is required"),
    (lambda: EvaluateConfig(model_path="m"), "--data is required"),
    (lambda: ExportConfig(model_path="m", data_val="d", formats=("coreml",)),
     "unknown format\\(s\\) coreml"),
    (lambda: ExportConfig(model_path="m", data_val="d", name="a b"), "--name=a b"),
    (lambda: ExportConfig(model_path="m", data_val="d", parity_images=0),
     "--parity_images=0 must be at least 1"),
    (lambda: PrepareConfig(images="i", ground_truth="g", val_fraction=1.0),
     "--val_fraction=1.0 must be between 0 and 1"),
    (lambda: PrepareConfig(images="i", ground_truth="g", folds=1), "--folds=1: need at least 2"),
    (lambda: PrepareConfig(images="i", ground_truth="g", folds=5, fold=5),
     "--fold=5 is out of range"),
    (lambda: PrepareConfig(images="i", ground_truth="g", link="move"), "--link=move"),
    (lambda: PrepareConfig(images="i", ground_truth="g", jpeg_quality=0),
     "--jpeg_quality=0 is out of range"),
])
def test_bad_script_configs_are_rejected_with_the_flag_name(make, message):
    with pytest.raises(UserError, match=message):
        make()


def test_paths_are_resolved_once_where_the_config_is_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(data_train="d/train", data_val="~/v", save_ret="runs",
                         weights="w/bb.weights.h5", feature_cache="feats", resume="runs/exp1")
    assert config.data_train == str(tmp_path / "d" / "train")
    assert config.data_val == os.path.expanduser("~/v")
    assert config.weights == str(tmp_path / "w" / "bb.weights.h5")
    assert config.resume == str(tmp_path / "runs" / "exp1")
    assert config.feature_cache == str(tmp_path / "feats")
    # Keywords are not paths; neither is an empty --resume.
    keywords = TrainConfig(weights="none", feature_cache="none")
    assert (keywords.weights, keywords.feature_cache, keywords.resume) == ("none", "none", "")
    assert TrainConfig(weights="ImageNet").weights == "ImageNet"
    # A config rebuilt from its own values is the same config (what --resume compares).
    assert dataclasses.replace(config) == config
    monkeypatch.chdir(REPO)
    assert dataclasses.replace(config) == config  # Absolute: the working folder no longer matters.


def test_feature_cache_follows_the_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SKIN_KERAS_CACHE", str(tmp_path / "cache"))
    assert TrainConfig().feature_cache == str(tmp_path / "cache" / "features")


def test_optimizer_names_are_canonical():
    assert TrainConfig(optim="adamw").optim == "AdamW"
    assert TrainConfig(optim="sgd").optim == "SGD"


@pytest.mark.parametrize("config_class", [TrainConfig, PredictConfig, EvaluateConfig,
                                          ExportConfig, PrepareConfig, CalibrateConfig])
def test_flags_are_generated_from_every_field_and_parse_back(config_class):
    values = flags.FlagValues()
    cli.define_flags(config_class, flag_values=values)
    fields = [field.name for field in dataclasses.fields(config_class)]
    assert sorted(values) == sorted(fields + ["verbose"])  # --verbose: console.py.
    required = [f"--{field.name}=x" for field in dataclasses.fields(config_class)
                if field.metadata["required"]]
    values(["prog", *required])
    parsed = cli.config_from_flags(config_class, ["prog"], flag_values=values)
    for field in dataclasses.fields(config_class):
        assert field.metadata["help"] in values[field.name].help
        if not field.metadata["required"] and not field.metadata["path"]:
            assert getattr(parsed, field.name) == field.default, field.name
    with pytest.raises(UserError, match="unexpected arguments: extra"):
        cli.config_from_flags(config_class, ["prog", "extra"], flag_values=values)


def test_a_flagfile_replays_the_config(tmp_path):
    config = tiny_config(tmp_path, tmp_path, rotation=True, crop_scale=0.5, optim="adam",
                         color_constancy="shades_of_gray", cc_power=4.0)
    (tmp_path / "flags.cfg").write_text(config.to_flagfile())
    values = flags.FlagValues()
    cli.define_flags(TrainConfig, flag_values=values)
    values(["prog", f"--flagfile={tmp_path / 'flags.cfg'}"])
    assert cli.config_from_flags(TrainConfig, ["prog"], flag_values=values) == config


def test_base_cfg_sets_nothing_the_defaults_do_not():
    lines = [line for line in (REPO / "configs" / "base.cfg").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    values = flags.FlagValues()
    cli.define_flags(TrainConfig, flag_values=values)
    values(["prog", *lines])
    assert cli.config_from_flags(TrainConfig, ["prog"], flag_values=values) == TrainConfig()


def test_config_module_imports_no_tensorflow():
    code = ("import sys, skin_keras.train.config, skin_keras.core.options; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["False", "False"]


def test_every_choice_tuple_and_option_group_is_declared_once():
    # The model, distribution and colour constancy read their allowed values from one place.
    from skin_keras.model import builder  # pylint: disable=g-import-not-at-top
    from skin_keras.model.layers import color_constancy  # pylint: disable=g-import-not-at-top
    from skin_keras.train import distribute  # pylint: disable=g-import-not-at-top

    assert distribute.STRATEGIES is config_lib.STRATEGIES
    assert builder.BACKBONES is spec.BACKBONES
    assert color_constancy.METHODS is spec.COLOR_CONSTANCY
    # The option groups a config includes are declared once, with their defaults: the config's
    # fields are theirs, and its typed parts are built from them.
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    for group in (spec.ModelSpec, Augmentation, spec.UnknownOptions):
        for field in dataclasses.fields(group):
            assert fields[field.name] is field or fields[field.name].default == field.default
    config = TrainConfig(model="b1", rotation=True, unknown_coverage=0.9)
    assert config.model_spec == spec.ModelSpec(model="b1")
    assert config.augmentation == Augmentation(rotation=True)
    assert config.unknown == spec.UnknownOptions(unknown_coverage=0.9)
    assert CalibrateConfig(model_path="/r", unknown_coverage=0.9).unknown_coverage == 0.9
    assert set(TrainConfig().to_dict()) == set(fields)
