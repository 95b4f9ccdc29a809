"""Do runs and exports made by an older commit still predict the same? Makes them with that
commit's own scripts (a git worktree), predicts with its predict.py and with this tree's, and
compares every predictions.csv cell.

    python benchmarks/old_artifacts.py --commit=5884882 --work=/tmp/old_artifacts

The artifacts: three tiny B0 runs at 32 px on the synthetic 8-class set (image-only and
calibrated with the unknown rule; patient metadata, calibrated; image-only as trained) and,
for the first two, every export format of that commit (SavedModel, TFLite fp32/fp16/dynamic/
int8, ONNX), also copied alone (no labels.txt or metadata.json beside them). Exit 1 when any
artifact answers differently. Minutes on two cores; nothing is kept in the repository.
"""

import argparse
import csv
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORMATS = "saved_model,tflite_fp32,tflite_fp16,tflite_dynamic,tflite_int8,onnx"
TRAIN = ["--model=b0", "--weights=none", "--nofreeze_layers", "--img_size=32",
         "--batch_size=16", "--epochs=2", "--optim=Adam", "--lr=0.002"]


def run(python: str, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([python, *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(args[:2])} failed in {cwd}:\n{result.stderr[-2000:]}")
    return result


def write_metadata(data: Path) -> Path:
    """metadata.csv: one row per file name (train and val share names), values drawn."""
    rng, rows, seen = random.Random(0), [], set()
    for path in sorted(data.glob("*/*/*")):
        if path.stem not in seen:
            seen.add(path.stem)
            rows.append([path.stem, rng.choice(["", 30, 45, 60, 75]),
                         rng.choice(["", "male", "female"]),
                         rng.choice(["", "head/neck", "lower extremity", "torso"])])
    with open(data / "metadata.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "age_approx", "sex", "anatom_site_general"])
        writer.writerows(rows)
    return data / "metadata.csv"


def make_artifacts(python: str, old: Path, work: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (model path, takes the metadata CSV), made by the old tree's scripts."""
    data, runs, exports = work / "data", work / "runs", work / "exports"
    run(python, old, "-m", "skin_keras.synthetic", str(data))
    table = write_metadata(data)
    common = [f"--data_train={data / 'train'}", f"--data_val={data / 'val'}",
              f"--save_ret={runs}", *TRAIN]
    run(python, old, "train.py", *common, "--calibrate")                     # exp1
    run(python, old, "train.py", *common, "--calibrate", f"--metadata={table}")  # exp2
    run(python, old, "train.py", *common, "--epochs=1")                       # exp3
    artifacts = {"run1": (runs / "exp1", False), "run2": (runs / "exp2", True),
                 "run3": (runs / "exp3", False),
                 "run1_uncalibrated": (runs / "exp1/weights/best_uncalibrated.keras", False),
                 "run2_uncalibrated": (runs / "exp2/weights/best_uncalibrated.keras", True)}
    for exp, meta in (("exp1", False), ("exp2", True)):
        out = exports / exp
        # A parity shortfall (int8, a metadata model's dynamic file) exits 2 with every file
        # written: the files are what is compared.
        run(python, old, "export.py", f"--model_path={runs / exp}", f"--output={out}",
            f"--formats={FORMATS}", f"--data_val={data / 'val'}", check=False)
        artifacts[f"{exp}_saved_model"] = (out / "saved_model/skin/1", meta)
        for kind in ("fp32", "fp16", "dynamic", "int8"):
            artifacts[f"{exp}_tflite_{kind}"] = (out / f"tflite_{kind}/skin_{kind}.tflite", meta)
        artifacts[f"{exp}_onnx"] = (out / "onnx/skin.onnx", meta)
        alone = work / "alone" / exp
        alone.mkdir(parents=True, exist_ok=True)
        for name, source in (("tflite_alone", out / "tflite_fp32/skin_fp32.tflite"),
                             ("onnx_alone", out / "onnx/skin.onnx")):
            shutil.copy(source, alone)
            artifacts[f"{exp}_{name}"] = (alone / source.name, meta)
    return artifacts


def predictions(python: str, tree: Path, model: Path, meta: bool, data: Path,
                out: Path) -> list[dict] | str:
    """The rows predict.py of `tree` writes, sorted by path; its last error line if it fails."""
    args = [f"--model_path={model}", f"--source={data / 'val'}", f"--output={out}"]
    if meta:
        args.append(f"--metadata={data / 'metadata.csv'}")
    result = run(python, tree, "predict.py", *args, check=False)
    if result.returncode != 0:
        return f"exit {result.returncode}: {(result.stderr.strip() or '?').splitlines()[-1]}"
    with open(out / "predictions.csv", newline="") as file:
        return sorted(csv.DictReader(file), key=lambda row: row["path"])


def difference(old: list[dict] | str, new: list[dict] | str) -> str:
    """"" when every row and cell is the same, else what differs first (a failed prediction
    always differs: two failures are no evidence of the same answers)."""
    for side, answer in (("old", old), ("new", new)):
        if isinstance(answer, str):
            return f"{side} predict.py failed: {answer}"
    if not old or not new:
        return f"no rows ({len(old)} old, {len(new)} new)"
    if len(old) != len(new) or list(old[0]) != list(new[0]):
        return f"other rows or columns: {list(old[0])[:4]}... vs {list(new[0])[:4]}..."
    for before, after in zip(old, new):
        for column, value in before.items():
            if after[column] != value:
                return f"{Path(before['path']).name} {column}: {value} -> {after[column]}"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="5884882", help="The older commit.")
    parser.add_argument("--work", required=True, help="A new folder for everything made.")
    parser.add_argument("--python", default=sys.executable,
                        help="The interpreter both trees run with (its packages serve both).")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    if work.exists():
        sys.exit(f"--work={work} exists: give a new folder")
    old = work / "old_tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.commit], cwd=REPO,
                   check=True, capture_output=True)
    try:
        artifacts = make_artifacts(args.python, old, work)
        failures = 0
        for name, (model, meta) in artifacts.items():
            answers = [predictions(args.python, tree, model, meta, work / "data",
                                   work / "predictions" / label / name)
                       for tree, label in ((old, "old"), (REPO, "new"))]
            found = difference(*answers)
            failures += bool(found)
            rows = len(answers[1]) if isinstance(answers[1], list) else 0
            print(f"{name:24s} {rows:4d} rows  {found or 'same'}")
        sys.exit(1 if failures else 0)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO,
                       check=False, capture_output=True)


if __name__ == "__main__":
    main()
