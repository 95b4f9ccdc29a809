"""A full decode of every training and evaluation file with TensorFlow's decoder, once per file.

`folders.inspect_image` reads headers and the last kilobyte: it misses a PNG whose data chunk is
corrupt or a JPEG that is only a header and an end marker. TensorFlow's decoder rejects those,
and inside a tf.data pipeline that means a file silently dropped (or, without `ignore_errors`, a
run of hours stopped). A JPEG whose scan data is damaged decodes with libjpeg's repairs and a
"Corrupt JPEG data" warning that libjpeg prints without a file name. This check decodes each
file on its own, so it can name the first kind (left out) and the second (kept, with its
warning). Results are remembered per file version (path, inode, size, modification and change
times) in `<cache>/decode_check.json`, so a file is decoded here once, not once per run.
"""

import contextlib
import dataclasses
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from skin_keras.core import atomic, cache
from skin_keras.core.progress import progress
from skin_keras.data import folders

# TensorFlow's own log lines (glog style "W0000 00:00:..." and absl's start-up notice) are not
# about the file being decoded.
_TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages)")


def _memo_path():
    return cache.cache_root() / "decode_check.json"


def _file_key(path: str) -> str:
    # The change time too: rewriting a file in place and restoring its modification time
    # (touch -r, a copy keeping times) cannot restore it.
    status = os.stat(path)
    return (f"{os.path.realpath(path)}|{status.st_ino}|{status.st_size}|{status.st_mtime_ns}|"
            f"{status.st_ctime_ns}")


@contextlib.contextmanager
def _captured_stderr():
    """Redirects file descriptor 2 (where libjpeg writes) to a temporary file; yields a
    function returning what was written since its last call, and a stream to the real stderr
    (for the progress bar)."""
    sys.stderr.flush()
    capture = tempfile.TemporaryFile()
    saved = os.dup(2)
    os.dup2(capture.fileno(), 2)
    real_stderr = os.fdopen(os.dup(saved), "w")
    position = 0

    def new_text() -> str:
        nonlocal position
        capture.seek(position)
        text = capture.read().decode(errors="replace")
        position = capture.tell()
        return text

    try:
        yield new_text, real_stderr
    finally:
        real_stderr.close()
        os.dup2(saved, 2)
        os.close(saved)
        capture.close()


def _decode(contents: bytes) -> None:
    if contents[:3] == b"\xff\xd8\xff":  # JPEG: 1/8 scale still reads all of the scan data.
        tf.io.decode_jpeg(contents, channels=3, ratio=8)
    else:
        tf.io.decode_image(contents, channels=3, expand_animations=False)


def check_file(path: str, new_stderr_text) -> tuple[str | None, str | None]:
    """(why TensorFlow cannot decode it, or None; what the decoder warned about, or None)."""
    try:
        with open(path, "rb") as file:
            contents = file.read()
        _decode(contents)
        error = None
    except (tf.errors.OpError, OSError) as failure:
        message = getattr(failure, "message", str(failure))
        # "{{function_node ...}} Invalid PNG data, size 14528 [Op:DecodeImage]" -> the middle.
        message = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", message).strip()
        error = f"TensorFlow cannot decode it ({message.splitlines()[0] if message else 'error'})"
    lines = [line.strip() for line in new_stderr_text().splitlines()
             if line.strip() and not _TF_LOG_LINE.match(line)]
    warning = "; ".join(lines) if lines and error is None else None
    return error, warning


def check_files(paths: Sequence[str], label: str = "checking images") -> dict[str, tuple]:
    """{path: (error, warning)} for every path, decoding only files not checked before."""
    try:
        memo = json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        memo = {}
    keys = {path: _file_key(path) for path in paths}
    todo = [path for path in paths if keys[path] not in memo]
    if todo:
        with _captured_stderr() as (new_stderr_text, real_stderr):
            for path in progress(todo, f"{label}: {len(todo)} new file(s)", stream=real_stderr):
                memo[keys[path]] = list(check_file(path, new_stderr_text))
        try:
            _memo_path().parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json_atomic(_memo_path(), memo)
        except OSError:  # A read-only cache: checked again next time, nothing breaks.
            pass
    return {path: tuple(memo[keys[path]]) for path in paths}


def set_aside_undecodable(folder: folders.ImageFolder, label: str) -> folders.ImageFolder:
    """`folder` without the files TensorFlow cannot decode (moved to its bad files, named) and
    with the decoder's warnings about the others recorded by file."""
    results = check_files(folder.paths, f"{label}: checking images")
    keep = [results[path][0] is None for path in folder.paths]
    return dataclasses.replace(
        folder, paths=tuple(p for p, k in zip(folder.paths, keep) if k),
        labels=folder.labels[np.array(keep, bool)] if folder.paths else folder.labels,
        bad_files=folder.bad_files + tuple((p, results[p][0]) for p, k in zip(folder.paths, keep)
                                           if not k),
        decode_warnings=tuple((p, results[p][1]) for p in folder.paths if results[p][1]))
