"""predict.py's output: one job per output, written as it goes, continued after a kill.

An output `<name>` (`predictions`, or `predictions-<i>-of-<N>` for `--shard=i/N`) in a folder is
made of these files:

- `.<name>.lock`, locked (flock) by the process writing the output: a second process on the
  same output is refused. The kernel releases the lock when the process ends, killed or not.
- `.<name>.job.json`, the record: the job (model, sources, settings and the fingerprint of the
  listing the files were cut from), how many rows and bytes of the partial files are complete,
  the fingerprint of the files' identities, and whether the job finished. It is written
  atomically after every block and kept after the end: it says which job `<name>.csv` is of.
- `.<name>.partial.csv` and `.<name>.partial.jsonl`: rows appended block after block (each JSON
  row with its file's identity), until the end makes them `<name>.csv` and `<name>.json`.

Run again, the same job continues where it stopped: the partial files are cut back to their
last complete block (a half-written row goes), rows of files changed since (another size,
modification time or inode) are dropped, and only files without a row are predicted. A finished
job whose files are all unchanged has nothing to do. Another job's output, finished or not, is
refused unless `--overwrite`.

A file's identity is its size, modification time and inode (`os.stat`), not a content hash: it
costs no second read of a million files, and it changes when a file is edited, copied over or
replaced by `mv`.
"""

import csv
import fcntl
import hashlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from skin_keras.core import atomic
from skin_keras.core.errors import UserError

_IDENTITY = "_file"  # The JSON rows' key for their file's identity (not published).


def identity(path) -> list[int] | None:
    """[size, modification time in ns, inode] of a file, None when it cannot be read."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns, status.st_ino]


def fingerprint(items: Iterable) -> str:
    """A SHA-256 of a sequence of JSON values (paths, identities)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item).encode() + b"\n")
    return digest.hexdigest()


def record_path(output: Path, name: str) -> Path:
    return output / f".{name}.job.json"


def read_record(path: Path) -> dict | None:
    """The record of an output (None when there is none); UserError when it is unreadable."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not {"job", "finished", "rows"} <= set(record):
            raise ValueError("not a record of predict.py's")
        return record
    except (OSError, ValueError) as error:
        raise UserError(f"{path} cannot be read ({error}): pass --overwrite to start "
                        "over") from None


def differences(first: dict, second: dict) -> str:
    return ", ".join(sorted(key for key in {*first, *second} if first.get(key) != second.get(key)))


def lock(output: Path, name: str):
    """Holds `.<name>.lock` in `output` for this process (the open file is returned: keep it);
    UserError when another process holds it."""
    handle = open(output / f".{name}.lock", "a")  # pylint: disable=consider-using-with
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another process is writing {name} in {output} (it holds "
                        f".{name}.lock): wait for it to end, or choose another --output") from None
    return handle


class RowWriter:
    """Appends prediction rows to the partial files of one output; `finish()` publishes them."""

    def __init__(self, output: Path, name: str, job: dict, header: list[str],
                 identities: dict[str, list[int] | None], overwrite: bool = False):
        self.output, self.name, self.job, self.header = output, name, job, header
        self.identities, self.overwrite = identities, overwrite
        self.csv = output / f".{name}.partial.csv"
        self.jsonl = output / f".{name}.partial.jsonl"
        self.record = record_path(output, name)
        self.published = (output / f"{name}.csv", output / f"{name}.json")
        self.files = fingerprint(list(identities.items()))
        self.rows, self.finished, self.stale, self._lock = 0, False, 0, None

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        """Lets the output go (the lock), whether the job ended or failed."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def resume(self, on_row=None) -> set[str]:
        """Takes the output for this job; returns the paths that have a row already (each row
        also given to `on_row`), all of them when the job finished with every file unchanged
        (then `self.finished`). Refuses another process's or another job's output."""
        self._lock = lock(self.output, self.name)
        try:
            record = read_record(self.record)
        except UserError:
            if not self.overwrite:
                raise
            record = None  # Damaged, and to be replaced anyway.
        if record is not None and record["job"] != self.job and not self.overwrite:
            what = "a finished" if record["finished"] else "an unfinished"
            raise UserError(
                f"{self.output} holds {what} prediction of another job (it differs in "
                f"{differences(record['job'], self.job)}): "
                + ("run that command again to finish it, or " if not record["finished"] else "")
                + "pass --overwrite to replace it, or choose another --output")
        if record is None and any(path.exists() for path in self.published) and not self.overwrite:
            raise UserError(f"{self.output} holds {self.name}.csv of a job it has no record of: "
                            "pass --overwrite to replace it, or choose another --output")
        if record is not None and record["job"] == self.job and not record["finished"] and \
                not self.csv.exists() and self._published_whole(record):
            record = self._mark_finished(record)  # Killed after publishing, before this mark.
        if record is None or record["job"] != self.job or record["finished"]:
            if record is not None and record["job"] == self.job and record["finished"] and \
                    record.get("files") == self.files and all(p.exists() for p in self.published):
                self.finished = True
                return set(self.identities)
            for path in (self.csv, self.jsonl, self.record, *self.published):
                path.unlink(missing_ok=True)
            return set()
        return self._continue(record, on_row)

    def _published_whole(self, record: dict) -> bool:
        try:
            return self.published[0].stat().st_size == record["csv bytes"]
        except OSError:
            return False

    def _continue(self, record: dict, on_row) -> set[str]:
        try:
            for path, size in ((self.csv, record["csv bytes"]),
                               (self.jsonl, record["jsonl bytes"])):
                with open(path, "r+b") as file:
                    file.truncate(size)
        except OSError as error:
            raise UserError(f"the unfinished prediction in {self.output} is incomplete "
                            f"({error.strerror}: {error.filename}): pass --overwrite to start "
                            "over") from None
        with open(self.jsonl) as lines:
            rows = [json.loads(line) for line in lines]
        stale = {row["path"] for row in rows
                 if row["path"] in self.identities
                 and row.pop(_IDENTITY, None) != self.identities[row["path"]]}
        if stale:  # Changed since their row was written: predicted again.
            self._drop(stale)
        self.rows = record["rows"] - len(stale)
        done = set()
        for row in rows:
            if row["path"] not in stale:
                done.add(row["path"])
                if on_row is not None:
                    on_row(row)
        self.stale = len(stale)
        return done

    def _drop(self, stale: set[str]) -> None:
        """Rewrites the partial files without the rows of `stale` paths (the CSV's first cell
        and the JSON rows' path are the file's path, in the same order)."""
        with open(self.csv, newline="") as file:
            table = list(csv.reader(file))
        with open(self.jsonl) as file:
            lines = file.readlines()
        kept = [index for index, line in enumerate(lines) if json.loads(line)["path"] not in stale]
        text = io.StringIO()
        csv.writer(text).writerows([table[0], *(table[1 + index] for index in kept)])
        atomic.write_text_atomic(self.csv, text.getvalue())
        atomic.write_text_atomic(self.jsonl, "".join(lines[index] for index in kept))
        self._write_record(len(kept), finished=False)

    def append(self, cells: list[list[str]], rows: list[dict]) -> None:
        """Writes one block's rows (CSV cells and JSON rows) and records them as complete."""
        new = not self.record.exists()
        text = io.StringIO()
        writer = csv.writer(text)
        if new:
            writer.writerow(self.header)
        writer.writerows(cells)
        with open(self.csv, "w" if new else "a", newline="") as file:
            file.write(text.getvalue())
        with open(self.jsonl, "w" if new else "a") as file:
            file.writelines(json.dumps({**row, _IDENTITY: self.identities.get(row["path"])})
                            + "\n" for row in rows)
        self.rows += len(rows)
        self._write_record(self.rows, finished=False)

    def _write_record(self, rows: int, finished: bool, files: str | None = None) -> dict:
        record = {"job": self.job, "files": files or self.files, "rows": rows,
                  "finished": finished,
                  "csv bytes": (self.published[0] if finished else self.csv).stat().st_size,
                  "jsonl bytes": 0 if finished else self.jsonl.stat().st_size}
        atomic.write_json_atomic(self.record, record)
        return record

    def _mark_finished(self, record: dict) -> dict:
        """The record of a published output (the identities it was made of kept)."""
        self.jsonl.unlink(missing_ok=True)
        return self._write_record(record["rows"], finished=True, files=record.get("files"))

    def finish(self) -> tuple[Path, Path]:
        """<name>.csv and <name>.json from the partial files (the JSON written row by row, its
        rows without their file identity), then the record marked finished."""
        target_csv, target_json = self.published
        if not self.record.exists():  # No rows: the header alone.
            self.append([], [])

        def write_json(tmp):
            with open(self.jsonl) as lines, open(tmp, "w") as file:
                file.write("[")
                for index, line in enumerate(lines):
                    row = json.loads(line)
                    row.pop(_IDENTITY, None)
                    file.write(("," if index else "") + "\n  " + json.dumps(row))
                file.write("\n]\n")

        atomic.write_atomic(target_json, write_json)
        os.replace(self.csv, target_csv)
        self._mark_finished({"rows": self.rows})
        return target_csv, target_json
