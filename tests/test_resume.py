"""A run killed at any moment continues with --resume and ends with a complete run folder."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny_config
from skin_keras import training
from skin_keras.errors import UserError


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


def test_resume_refuses_other_flags_and_non_runs(trained_run, tiny_dataset, tmp_path):
    params = json.loads((trained_run / "train_params.json").read_text())["train parameters"]
    same = {**params, "resume": str(trained_run)}
    with pytest.raises(UserError, match=r"these differ: epochs \(2 there, 9 now\)"):
        training.check_resumable(training.TrainConfig(**{**same, "epochs": 9}))
    training.check_resumable(training.TrainConfig(**same))  # The run's own flags are fine.
    with pytest.raises(UserError, match="is not a run folder with a completed epoch"):
        training.check_resumable(tiny_config(tmp_path, tiny_dataset, resume=str(tmp_path)))
