"""Training with patient metadata: a resumed run must see the same vocabulary, and train.py
finds metadata.csv by itself and refuses ages it cannot believe in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from skin_keras.core.errors import UserError
from skin_keras.train import loop

from conftest import REPO, Killed, kill_at_log_write, tiny_config


@pytest.mark.slow
def test_metadata_run_resumes_only_with_the_same_vocabulary(
        metadata_data, tmp_path, monkeypatch):
    csv_path = str(tmp_path / "metadata.csv")
    original = (metadata_data / "train_metadata.csv").read_text()
    Path(csv_path).write_text(original)
    config = tiny_config(tmp_path, metadata_data, epochs=2, metadata=csv_path,
                         freeze_layers=True)
    with monkeypatch.context() as patch:
        kill_at_log_write(patch, 2)
        with pytest.raises(Killed):
            loop.train_and_evaluate(config, verbose=0)
    run_dir = tmp_path / "runs" / "exp1"
    # The CSV edited in place so that its vocabulary differs: refused, naming why.
    Path(csv_path).write_text(original.replace("site 2", "site 9"))
    resumed = tiny_config(tmp_path, metadata_data, epochs=2, metadata=csv_path,
                          freeze_layers=True, resume=str(run_dir))
    with pytest.raises(UserError, match="other categories than the run was started with"):
        loop.train_and_evaluate(resumed, verbose=0)
    Path(csv_path).write_text(original)
    loop.train_and_evaluate(resumed, verbose=0)
    log = json.loads((run_dir / "log.json").read_text())
    assert len(log) == 2

    # (The frozen backbone's cached-feature head with metadata: test_cross_validation.)


@pytest.mark.slow
def test_train_py_auto_finds_metadata_csv_and_reports_bad_ages_in_one_line(
        metadata_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        (data / split).symlink_to(metadata_data / split)
    (data / "metadata.csv").write_text((metadata_data / "metadata.csv").read_text())
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"--data_train={data / 'train'}",
         f"--data_val={data / 'val'}", f"--save_ret={tmp_path / 'runs'}", "--model=b0",
         "--weights=none", "--img_size=32", "--epochs=1", "--metadata=auto"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "age_approx value(s) that are not a number in [0, 120], the first 'abc'" in (
        result.stderr)
    assert "Traceback" not in result.stderr
