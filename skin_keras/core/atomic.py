"""Atomic file writes: readers, and a crash, only ever see the old file or the new one."""

import json
import os
import tempfile
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    # os.umask can only be read by setting it: set and restore, one thread at a time.
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_atomic(path: str | Path, write, suffix: str = "") -> None:
    """Calls `write(tmp_path)` on a temporary file beside `path`, then renames it onto `path`.

    The file gets the permissions `open()` would give it (0666 less the umask): the temporary
    file is created private (0600) and would otherwise keep that, so that another user or a
    TF Serving container could not read an export.
    """
    write_all_atomic({path: write}, suffix)


def write_all_atomic(writers: dict, suffix: str = "") -> None:
    """`write_atomic` of several files that belong together ({path: write}): every file is
    written before any replaces its old version, so a full disk leaves all old or all new.

    An OSError (no space, read-only, ...) names the file it was writing (`error.filename`).
    """
    staged = {}
    try:
        for path, write in writers.items():
            path = Path(path)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                           suffix=suffix)
                os.close(fd)
                staged[tmp] = path
                write(tmp)
                os.chmod(tmp, 0o666 & ~_umask())
            except OSError as error:
                error.filename = str(path)  # Not the temporary file's name, nor None.
                raise
        for tmp, path in staged.items():
            os.replace(tmp, path)
    finally:
        for tmp in staged:
            if os.path.exists(tmp):
                os.remove(tmp)


def write_json_atomic(path: str | Path, data) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
