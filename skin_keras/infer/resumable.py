"""predict.py's output written as the job goes, and continued after a kill.

Rows are appended to `.<name>.partial.csv` and `.<name>.partial.jsonl` batch after batch (each
flushed); after each batch `.<name>.partial.json` records, atomically, the job (model, sources,
settings) and how many rows and bytes of each file are complete. A killed job run again with the
same command cuts both files back to the recorded bytes (a half-written row goes) and predicts
only the files that have no row yet; nothing is predicted twice or lost. At the end the CSV
becomes `<name>.csv` and the JSON Lines become `<name>.json` (a JSON array, written row by row),
so a finished `predictions.csv` is always whole. `<name>` is `predictions`, or
`predictions-<i>-of-<N>` for a shard (`--shard=i/N`).
"""

import csv
import io
import json
import os
from pathlib import Path

from skin_keras.core import atomic
from skin_keras.core.errors import UserError


def shard_of(count: int, shard: str) -> tuple[slice, str]:
    """The rows of a `--shard=i/N` of `count` listed files (the i-th of N contiguous parts, so
    that the parts' outputs concatenate to one process's) and the output's name."""
    if not shard:
        return slice(0, count), "predictions"
    try:
        index, parts = (int(part) for part in shard.split("/"))
    except ValueError:
        raise UserError(f"--shard={shard}: write i/N, e.g. 0/4 (0-based)") from None
    if not (parts >= 1 and 0 <= index < parts):
        raise UserError(f"--shard={shard}: needs N >= 1 and 0 <= i < N")
    width = len(str(parts - 1))
    return (slice(index * count // parts, (index + 1) * count // parts),
            f"predictions-{index:0{width}d}-of-{parts}")


class RowWriter:
    """Appends prediction rows to the partial files of one output; `finish()` publishes them."""

    def __init__(self, output: Path, name: str, job: dict, header: list[str]):
        self.output, self.name, self.job, self.header = output, name, job, header
        self.csv = output / f".{name}.partial.csv"
        self.jsonl = output / f".{name}.partial.jsonl"
        self.state = output / f".{name}.partial.json"
        self.rows = 0

    def resume(self, on_row=None) -> set[str]:
        """The paths that have a row already (a job killed before), each row also given to
        `on_row`; refuses the partial files of another job. Cuts the files back to their last
        complete batch."""
        if not self.state.exists():
            for path in (self.csv, self.jsonl):
                path.unlink(missing_ok=True)
            return set()
        try:
            state = json.loads(self.state.read_text())
            job = state["job"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"{self.state} cannot be read ({error}): remove the "
                            f".{self.name}.partial.* files to start over") from None
        if job != self.job:
            changed = sorted(key for key in {*self.job, *job}
                             if self.job.get(key) != job.get(key))
            raise UserError(f"{self.output} holds an unfinished prediction of another job "
                            f"(it differs in {', '.join(changed)}): run that command again to "
                            f"finish it, or remove the .{self.name}.partial.* files (or choose "
                            "another --output) to start this one")
        try:
            for path, size in ((self.csv, state["csv bytes"]),
                               (self.jsonl, state["jsonl bytes"])):
                with open(path, "r+b") as file:
                    file.truncate(size)
        except OSError as error:
            raise UserError(f"the unfinished prediction in {self.output} is incomplete "
                            f"({error.strerror}: {error.filename}): remove the "
                            f".{self.name}.partial.* files to start over") from None
        self.rows = state["rows"]
        done = set()
        with open(self.jsonl) as lines:
            for line in lines:
                row = json.loads(line)
                done.add(row["path"])
                if on_row is not None:
                    on_row(row)
        return done

    def append(self, cells: list[list[str]], rows: list[dict]) -> None:
        """Writes one batch's rows (CSV cells and JSON rows) and records them as complete."""
        new = not self.state.exists()
        text = io.StringIO()
        writer = csv.writer(text)
        if new:
            writer.writerow(self.header)
        writer.writerows(cells)
        with open(self.csv, "w" if new else "a", newline="") as file:
            file.write(text.getvalue())
        with open(self.jsonl, "w" if new else "a") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
        self.rows += len(rows)
        atomic.write_json_atomic(self.state, {
            "job": self.job, "rows": self.rows, "csv bytes": self.csv.stat().st_size,
            "jsonl bytes": self.jsonl.stat().st_size})

    def finish(self) -> tuple[Path, Path]:
        """<name>.csv and <name>.json from the partial files (JSON written row by row)."""
        if not self.state.exists():  # No rows: the header alone.
            self.append([], [])
        target_json = self.output / f"{self.name}.json"

        def write_json(tmp):
            with open(self.jsonl) as lines, open(tmp, "w") as file:
                file.write("[")
                for index, line in enumerate(lines):
                    file.write(("," if index else "") + "\n  " + line.rstrip("\n"))
                file.write("\n]\n")

        atomic.write_atomic(target_json, write_json)
        target_csv = self.output / f"{self.name}.csv"
        os.replace(self.csv, target_csv)
        self.jsonl.unlink()
        self.state.unlink()
        return target_csv, target_json
