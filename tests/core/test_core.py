"""core/: atomic files, the logger the scripts print, and the package's import hygiene."""

import errno
import logging
import os
import subprocess
import sys

import pytest

from skin_keras.core import atomic, errors, log


def test_atomic_writes_honour_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic.write_text_atomic(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
        os.umask(0o022)
        atomic.write_json_atomic(tmp_path / "b.json", {})
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(previous)


def test_a_full_disk_leaves_the_old_files_and_is_one_line_naming_the_file(tmp_path):
    atomic.write_text_atomic(tmp_path / "a.csv", "old")
    atomic.write_text_atomic(tmp_path / "a.json", "old")

    def no_space(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as error:  # The second file fails: the first is not replaced.
        atomic.write_all_atomic({tmp_path / "a.csv": lambda tmp: open(tmp, "w").write("new"),
                                 tmp_path / "a.json": no_space})
    assert [p.read_text() for p in (tmp_path / "a.csv", tmp_path / "a.json")] == ["old", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.json"]
    assert errors.environment_error(error.value) == (
        f"no space left on device: {tmp_path / 'a.json'} (free space, or choose another folder)")
    # The scripts print it as one line, exit 2.
    code = ("import errno; from skin_keras.core import cli\n"
            "def main(argv): raise OSError(errno.EROFS, 'Read-only file system', 'runs/x.keras')\n"
            "cli.run(main)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(
        "error: read-only file system: runs/x.keras (choose a folder you can write to)")


def test_library_messages_reach_stdout_once_and_plain_when_a_script_asks(capsys):
    logger = logging.getLogger("skin_keras.some.module")
    saved = logging.getLogger(log.ROOT).handlers[:], logging.getLogger(log.ROOT).propagate
    try:
        log.show_on_console()
        log.show_on_console()  # Idempotent: still one line per message.
        logger.info("note: a line")
        logger.debug("not shown")
        assert capsys.readouterr().out == "note: a line\n"
    finally:
        root = logging.getLogger(log.ROOT)
        root.handlers[:], root.propagate = saved


def modules_after(statement: str, watched: tuple[str, ...]) -> list[str]:
    """Which of `watched` are imported after `statement` runs in a fresh interpreter."""
    code = f"import sys; {statement}; print([m for m in {watched!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return eval(result.stdout.strip().splitlines()[-1])  # pylint: disable=eval-used


def test_importing_the_package_and_its_model_code_has_no_heavy_side_effects():
    # The package itself: nothing heavy at all.
    assert modules_after("import skin_keras", ("tensorflow", "keras", "matplotlib",
                                               "sklearn")) == []
    # Keras 3.15 imports matplotlib.pyplot and scikit-learn itself when it is imported
    # (keras/src/visualization, keras/src/wrappers); what is ours to avoid is drawing and
    # training code (test_layout.py checks statically that only core/plots.py imports
    # matplotlib and that scikit-learn stays in evaluate/, data/ and workflows/).
    ours = ("skin_keras.core.plots", "skin_keras.train", "skin_keras.evaluate")
    assert modules_after("import skin_keras, skin_keras.model, skin_keras.model.layers",
                         ours) == []
    # Loading a model reads the run folder's layout (core/layout.py), draws nothing and
    # imports no training code.
    assert modules_after("import skin_keras.infer.load, skin_keras.infer.files",
                         ("skin_keras.core.plots", "skin_keras.evaluate", "skin_keras.train")) == []


def test_the_scripts_run_tensorflow_with_onednn_on_unless_the_user_says_otherwise():
    """TensorFlow leaves oneDNN off on CPUs without AVX512_VNNI/BF16 or AMX (1.2-1.4x slower
    training there): the scripts' start-up turns it on; TF_ENABLE_ONEDNN_OPTS=0 still wins."""
    code = ("from skin_keras.core import console; console.quiet_tensorflow_startup()\n"
            "import os; from skin_keras.train import precision\n"
            "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], precision._onednn_enabled())")
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    answers = [subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True,
                              text=True, check=True).stdout.split()[-2:]
               for extra in ({}, {"TF_ENABLE_ONEDNN_OPTS": "0"})]
    assert answers == [["1", "True"], ["0", "False"]]
