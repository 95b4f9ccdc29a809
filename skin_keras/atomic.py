"""Atomic file writes: readers, and a crash, only ever see the old file or the new one."""

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, write, suffix: str = "") -> None:
    """Calls `write(tmp_path)` on a temporary file beside `path`, then renames it onto `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str | Path, data) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
