"""Where skin_keras keeps what is costly to recompute: ~/.cache/skin_keras, or $SKIN_KERAS_CACHE."""

import hashlib
import json
import os
from pathlib import Path

from skin_keras.core import atomic


def cache_root() -> Path:
    return Path(os.environ.get("SKIN_KERAS_CACHE", "~/.cache/skin_keras")).expanduser()


def memoized(name: str, key: str, compute):
    """compute(), or the value it gave for `key` before (kept in <cache root>/<name>.json)."""
    path = cache_root() / f"{name}.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = compute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json_atomic(path, table)
        except OSError:  # A read-only home: nothing is cached, nothing breaks.
            pass
    return table[key]


def file_sha1(path: str | Path) -> str:
    """The SHA-1 of a file's content: what caches of per-file results are keyed by."""
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's content, or of a folder's (every file's relative path and
    content, in sorted order): a model artifact's fingerprint (model_card.md records it)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file_path in files:
        if path.is_dir():
            digest.update(file_path.relative_to(path).as_posix().encode() + b"\0")
        with open(file_path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
