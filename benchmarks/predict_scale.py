r"""predict.py over 100,000 files: memory, a kill and a rerun, and two shards.

    python benchmarks/predict_scale.py                      # 100,000 files, 10,000 for the memory check
    python benchmarks/predict_scale.py --files=20000 --small=2000

Writes --files small JPEGs (32 x 32, 256 distinct contents) in folders of 1,000 in a temporary
folder, and an untrained B0 at 32 px (weights do not change what is measured), then:
  1. predict.py on the first --small files and on all of them: wall time, rate and peak resident
     memory of each process (ru_maxrss of a wrapper's children);
  2. the same command on all files in a new folder, killed (SIGKILL) when about half the rows
     are recorded, then run again: the final predictions.csv must equal step 1's, each file once;
  3. --shard=0/2 and --shard=1/2 into one folder: their rows concatenated must equal step 1's.
Run by hand on an otherwise idle machine; prints a JSON summary and writes
benchmarks/predict_scale.json.
"""

import argparse
import csv
import io
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PER_FOLDER = 1000


def write_files(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    contents = []
    for _ in range(256):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
        contents.append(buffer.getvalue())
    for index in range(count):
        folder = root / f"{index // PER_FOLDER:04d}"
        if index % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        (folder / f"{index:07d}.jpg").write_bytes(contents[index % 256])


def untrained_model(path: Path) -> Path:
    code = ("from skin_keras.model import record\n"
            "from skin_keras.model.builder import build_model\n"
            "from skin_keras.model.spec import ModelSpec\n"
            "model = build_model(ModelSpec(model='b0', weights='none', img_size=32), 3)\n"
            f"record.save_model(model, {str(path)!r}, record.ModelInfo.of(model, "
            "('a', 'b', 'c')))\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return path


def predict_command(model: Path, sources: list[Path], output: Path, *extra) -> list[str]:
    return [sys.executable, str(REPO / "predict.py"), f"--model_path={model}",
            *[f"--source={s}" for s in sources], f"--output={output}", "--backend=tflite",
            *extra]


def measured(command: list[str]) -> dict:
    """Wall time and peak memory of `command` (in a wrapper, so the peak is its own)."""
    wrapper = ("import resource, subprocess, sys, time\n"
               "start = time.perf_counter()\n"
               "code = subprocess.run(sys.argv[1:], capture_output=True).returncode\n"
               "print(code, time.perf_counter() - start,"
               " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    result = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True,
                            text=True, check=True)
    code, seconds, peak_kb = result.stdout.split()
    if code != "0":
        raise SystemExit(f"failed ({code}): {' '.join(command)}")
    return {"seconds": float(seconds), "peak RSS MB": int(peak_kb) / 1024}


def rows(csv_path: Path) -> list[list[str]]:
    with open(csv_path, newline="") as file:
        return list(csv.reader(file))


def killed_at_half(command: list[str], output: Path, count: int) -> int:
    """Starts `command`, SIGKILLs it when half the rows are recorded; returns the rows then."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = output / ".predictions.job.json"
    recorded = 0
    while recorded < count // 2:
        if process.poll() is not None:
            raise SystemExit("the job ended before it could be killed")
        time.sleep(0.05)
        try:
            recorded = json.loads(state.read_text())["rows"]
        except (OSError, ValueError):
            continue
    process.send_signal(signal.SIGKILL)
    process.wait()
    return recorded


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    args = parser.parse_args()
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="predict_scale_") as temporary:
        root = Path(temporary)
        start = time.perf_counter()
        write_files(root / "images", args.files)
        result["seconds to write the files"] = time.perf_counter() - start
        model = untrained_model(root / "model.keras")
        folders = sorted((root / "images").iterdir())
        subprocess.run(predict_command(model, folders[:1], root / "warm"), check=True,
                       capture_output=True)  # Converts to TFLite once (cached).
        small = measured(predict_command(model, folders[:args.small // PER_FOLDER],
                                         root / "small"))
        full = measured(predict_command(model, [root / "images"], root / "full"))
        for figures, count in ((small, args.small), (full, args.files)):
            figures["files"], figures["files/s"] = count, count / figures["seconds"]
        result.update({"small": small, "all": full,
                       "peak memory, all / small": full["peak RSS MB"] / small["peak RSS MB"]})
        reference = rows(root / "full" / "predictions.csv")
        command = predict_command(model, [root / "images"], root / "resumed")
        result["rows recorded when killed"] = killed_at_half(command, root / "resumed",
                                                             args.files)
        resumed = measured(command)
        resumed_rows = rows(root / "resumed" / "predictions.csv")
        paths = [row[0] for row in resumed_rows[1:]]
        result["resumed"] = {**resumed, "rows": len(paths), "distinct files": len(set(paths)),
                             "equals the uninterrupted output": resumed_rows == reference}
        for index in range(2):
            measured(predict_command(model, [root / "images"], root / "shards",
                                     f"--shard={index}/2"))
        shards = [rows(root / "shards" / f"predictions-{i}-of-2.csv") for i in range(2)]
        result["shards 0/2 + 1/2 equal one process"] = (
            shards[0][0] == reference[0] and shards[0][1:] + shards[1][1:] == reference[1:])
        result["shard rows"] = [len(shard) - 1 for shard in shards]
    (REPO / "benchmarks" / "predict_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
