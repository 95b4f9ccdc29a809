"""predict.py `--shard=i/N`: the part of the listing one process predicts, and the merge of the
N parts' outputs into one (`python -m skin_keras.merge_predictions`).

Every part records the fingerprint of the whole listing it was cut from (output_job.py), so
parts run at different times over a changing folder cannot be merged into an output that
silently misses or repeats a file: the merge refuses them, naming the parts.
"""

import csv
import dataclasses
import json
import re
from pathlib import Path

from skin_keras.core import atomic
from skin_keras.core.errors import UserError
from skin_keras.core.options import check_options, option
from skin_keras.infer import output_job

_PART = re.compile(r"^\.predictions-(\d+)-of-(\d+)\.job\.json$")


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    """python -m skin_keras.merge_predictions's flags."""

    output: str = option(None, "The --output folder of the N predict.py --shard=i/N parts.",
                         required=True)
    overwrite: bool = option(False, "Replace a predictions.csv of another job in it.")

    def __post_init__(self):
        check_options(self)


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
    return (slice(index * count // parts, (index + 1) * count // parts),
            part_name(index, parts))


def part_name(index: int, parts: int) -> str:
    return f"predictions-{index:0{len(str(parts - 1))}d}-of-{parts}"


def _parts(output: Path) -> tuple[int, dict[int, dict]]:
    """(N, {i: record}) of the parts in `output`; UserError when there are none, or parts of
    several N."""
    found = {}
    for path in output.glob(".predictions-*-of-*.job.json"):
        match = _PART.match(path.name)
        if match:
            found.setdefault(int(match[2]), {})[int(match[1])] = output_job.read_record(path)
    if not found:
        raise UserError(f"{output} holds no part of a sharded prediction (predict.py "
                        "--shard=i/N writes .predictions-<i>-of-<N>.job.json)")
    if len(found) > 1:
        raise UserError(f"{output} holds parts of {' and '.join(map(str, sorted(found)))}-part "
                        "jobs: keep one job's parts in a folder")
    (parts, records), = found.items()
    return parts, records


def _check(parts: int, records: dict[int, dict]) -> None:
    """UserError unless all N parts finished, of one job, cut from one listing."""
    missing = [i for i in range(parts) if i not in records or not records[i]["finished"]]
    if missing:
        raise UserError(f"part(s) {', '.join(map(str, missing))} of {parts} have not finished "
                        f"(run predict.py --shard=i/{parts} for each)")
    first = {**records[0]["job"], "shard": ""}
    for index in range(1, parts):
        other = {**records[index]["job"], "shard": ""}
        if other != first:
            listing = other.get("listing") != first.get("listing")
            raise UserError(
                f"parts 0 and {index} are of different jobs (they differ in "
                f"{output_job.differences(first, other)})"
                + (f": they were cut from different listings ({first.get('files listed')} and "
                   f"{other.get('files listed')} files), so a file could be in no part or in "
                   "two; run every part again over the same sources" if listing else ""))
    rows = sum(records[i]["rows"] for i in range(parts))
    if rows != first.get("files listed"):
        raise UserError(f"the {parts} parts hold {rows} rows for a listing of "
                        f"{first.get('files listed')} files")


def merge(output: str | Path, overwrite: bool = False) -> Path:
    """Writes output/predictions.csv and .json from the N finished parts, in order; returns
    the CSV's path. Refuses unfinished, missing or mismatched parts, and (without
    `overwrite`) a predictions.csv of another job."""
    output = Path(output)
    if not output.is_dir():
        raise UserError(f"--output={output} is not a folder")
    parts, records = _parts(output)
    _check(parts, records)
    names = [part_name(i, parts) for i in range(parts)]
    headers = set()
    for name in names:
        with open(output / f"{name}.csv", newline="") as file:
            headers.add(tuple(next(csv.reader(file))))
    if len(headers) != 1:
        raise UserError(f"the parts' CSV headers differ: {sorted(headers)}")
    handle = output_job.lock(output, "predictions")
    try:
        job = {**records[0]["job"], "shard": f"merged from {parts} parts"}
        earlier = output_job.read_record(output_job.record_path(output, "predictions"))
        exists = (output / "predictions.csv").exists() or (output / "predictions.json").exists()
        if exists and not overwrite and (earlier is None or earlier["job"] != job):
            raise UserError(f"{output} holds a predictions.csv of another job: pass "
                            "--overwrite to replace it")
        _write(output, names)
        atomic.write_json_atomic(output_job.record_path(output, "predictions"), {
            "job": job, "files": output_job.fingerprint([records[i]["files"]
                                                         for i in range(parts)]),
            "rows": sum(records[i]["rows"] for i in range(parts)), "finished": True,
            "csv bytes": (output / "predictions.csv").stat().st_size, "jsonl bytes": 0})
    finally:
        handle.close()
    return output / "predictions.csv"


def _write(output: Path, names: list[str]) -> None:
    def write_csv(tmp):
        with open(tmp, "w", newline="") as target:
            for index, name in enumerate(names):
                with open(output / f"{name}.csv", newline="") as part:
                    if index:
                        part.readline()
                    target.writelines(part)

    def write_json(tmp):
        with open(tmp, "w") as target:
            target.write("[")
            first = True
            for name in names:
                for row in json.loads((output / f"{name}.json").read_text()):
                    target.write(("" if first else ",") + "\n  " + json.dumps(row))
                    first = False
            target.write("\n]\n")

    atomic.write_all_atomic({output / "predictions.csv": write_csv,
                             output / "predictions.json": write_json})

