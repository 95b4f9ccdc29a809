"""A run killed at any moment continues with --resume and ends with a complete run folder."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import pytest

from skin_keras.core.errors import UserError
from skin_keras.model import parts
from skin_keras.train import loop, resume
from skin_keras.train.config import TrainConfig

from conftest import REPO, Killed, config_from_flagfile, kill_at_log_write, tiny_config, tiny_model


@pytest.mark.slow
def test_killed_run_resumes_to_a_complete_run_folder(tmp_path, tiny_dataset):
    # train.py with the demo flagfile (the README's first command) and a frozen backbone, so the
    # head trains on cached features: epochs take milliseconds, and between the full model saved
    # at epoch 1 and the end of the run only weights/head_checkpoint.npz is written.
    runs = tmp_path / "runs"
    epochs = 30
    command = [sys.executable, str(REPO / "train.py"), "--flagfile=configs/demo.cfg",
               f"--data_train={tiny_dataset / 'train'}", f"--data_val={tiny_dataset / 'val'}",
               f"--save_ret={runs}", "--img_size=32", f"--epochs={epochs}", "--batch_size=4",
               "--freeze_layers", "--warmup_epochs=0", f"--feature_cache={tmp_path / 'features'}"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    log_path = runs / "exp1" / "log.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if log_path.exists() and "epoch:1" in log_path.read_text():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # A power cut: no handler runs.
    process.wait()
    completed = len(json.loads(log_path.read_text()))
    assert 1 <= completed < epochs, "the run should have been killed part way"
    run = runs / "exp1"
    assert (run / "weights" / "head_checkpoint.npz").exists()

    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"--flagfile={run / 'flags.cfg'}",
         f"--resume={run}"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming {run} after epoch {completed}" in result.stdout
    # Not a terminal: one line per epoch, no progress bar redrawn into one endless line.
    assert max(len(line) for line in (result.stdout + result.stderr).splitlines()) <= 400
    # Nor TensorFlow's start-up noise (console.py): CUDA probing, oneDNN notes, deprecations.
    for noise in ("cuInit", "cuda", "oneDNN", "deprecated", "absl::InitializeLog", "retracing"):
        assert noise not in result.stdout + result.stderr, noise
    assert len(re.findall(r"^9/9 - .*loss: ", result.stdout, re.M)) == epochs - completed
    assert re.search(rf"best epoch \d+/{epochs} by val_balanced_accuracy: val accuracy",
                     result.stdout)
    assert result.stdout.rstrip().endswith(f"run folder: {run}")
    flagfile = (run / "flags.cfg").read_text().splitlines()
    assert "--model=b0" in flagfile and "--freeze_layers" in flagfile  # demo.cfg, then overrides.
    assert f"--data_train={tiny_dataset / 'train'}" in flagfile
    log = json.loads(log_path.read_text())
    assert list(log) == [f"epoch:{n}" for n in range(1, epochs + 1)]  # Each epoch once.
    lrs = [entry["lr"] for entry in log.values()]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[completed - 1]  # Schedule went on.
    for name in ("weights/best.keras", "weights/last.keras", "confusion_matrix_val.png",
                 "confusion_matrix_train.png", "curves.png", "class_indices.json",
                 "train_params.json", "flags.cfg"):
        assert (run / name).exists(), name
    assert not list(runs.glob("exp2")), "resuming must not start a new run folder"
    assert not [p for p in run.rglob(".*") if p.is_file()], "temporary files left behind"


@pytest.mark.slow
def test_resume_refuses_other_flags_and_non_runs(trained_run, tiny_dataset, tmp_path):
    params = json.loads((trained_run / "train_params.json").read_text())["train parameters"]
    same = {**params, "resume": str(trained_run)}
    with pytest.raises(UserError, match=r"these differ: epochs \(2 there, 9 now\)"):
        resume.check_resumable(TrainConfig(**{**same, "epochs": 9}))
    resume.check_resumable(TrainConfig(**same))  # The run's own flags are fine.
    with pytest.raises(UserError, match="is not a run folder"):
        resume.check_resumable(tiny_config(tmp_path, tiny_dataset, resume=str(tmp_path)))


@pytest.mark.slow
def test_resume_with_relative_paths_from_any_folder_and_only_with_the_same_classes(
        tmp_path, tiny_dataset, monkeypatch):
    # A run started with relative paths (data, weights, run folder) and killed in its first
    # epoch, before log.json existed.
    work = tmp_path / "work"
    shutil.copytree(tiny_dataset, work / "data")
    (work / "w").mkdir()
    parts.backbone_of(tiny_model()).save_weights(
        work / "w" / "bb.weights.h5")
    monkeypatch.chdir(work)
    config = TrainConfig(data_train="data/train", data_val="data/val", save_ret="runs",
                         weights="w/bb.weights.h5", feature_cache="features", model="b0",
                         img_size=32, batch_size=8, epochs=3, optim="Adam", lr=1e-3)
    kill_at_log_write(monkeypatch, epochs_logged=1)
    with pytest.raises(Killed):
        loop.train_and_evaluate(config, verbose=0)
    monkeypatch.undo()
    run = work / "runs" / "exp1"
    assert not (run / "log.json").exists()
    assert any((run / "tensorboard").rglob("events.*"))  # The killed attempt's curves.
    stale = {str(p) for p in (run / "tensorboard").rglob("events.*")}

    # The README's command, from the folder the run started in: starts again from scratch.
    monkeypatch.chdir(work)
    loop.train_and_evaluate(config_from_flagfile(
        "runs/exp1/flags.cfg", "--resume=runs/exp1"), verbose=0)
    assert list(json.loads((run / "log.json").read_text())) == ["epoch:1", "epoch:2", "epoch:3"]
    assert not stale & {str(p) for p in (run / "tensorboard").rglob("events.*")}
    # From another folder: the same flags.cfg, the same run.
    monkeypatch.chdir(tmp_path)
    point = resume.check_resumable(config_from_flagfile(
        run / "flags.cfg", f"--resume={run}"))
    assert point.completed_epochs == 3
    assert json.loads((run / "train_params.json").read_text())["train parameters"][
        "weights"] == str(work / "w" / "bb.weights.h5")
    # Finished and calibrated, then resumed: nothing trains, so nothing is undone.
    from skin_keras.workflows import fit_calibration  # pylint: disable=g-import-not-at-top
    fit_calibration.calibrate_run(fit_calibration.CalibrateConfig(model_path=str(run)))
    calibrated = (run / "weights" / "best.keras").read_bytes()
    loop.train_and_evaluate(config_from_flagfile(run / "flags.cfg", f"--resume={run}"),
                            verbose=0)
    assert (run / "weights" / "best.keras").read_bytes() == calibrated
    assert "calibration" in json.loads((run / "train_params.json").read_text())

    # Class folders that are not the run's classes: refused, naming the difference.
    resumed = config_from_flagfile(run / "flags.cfg", f"--resume={run}")
    (work / "data" / "train" / "Melanoma").rename(work / "data" / "train" / "Nevus")
    with pytest.raises(UserError, match="not the run's classes .*missing Melanoma; new Nevus"):
        loop.train_and_evaluate(resumed, verbose=0)
    (work / "data" / "train" / "Nevus").rename(work / "data" / "train" / "Melanoma")
    shutil.copytree(work / "data" / "train" / "Melanoma", work / "data" / "train" / "Zoster")
    with pytest.raises(UserError, match="missing none; new Zoster"):
        loop.train_and_evaluate(resumed, verbose=0)
    shutil.rmtree(work / "data" / "train" / "Zoster")

    # A last.keras that safe_mode refuses (a Lambda layer runs arbitrary code).
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(
        run / "weights" / "last.keras")
    with pytest.raises(UserError, match="could not be loaded to resume from: .*Lambda") as error:
        loop.train_and_evaluate(resumed, verbose=0)
    assert "\n" not in str(error.value)


def test_a_folder_that_never_started_training_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "exp1" / "weights").mkdir(parents=True)
    with pytest.raises(UserError, match="stopped before it started training .*start a new run"):
        resume.check_resumable(TrainConfig(resume=str(tmp_path / "exp1")))
