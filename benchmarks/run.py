r"""Speed benchmarks of skin_keras, optionally side by side with the PyTorch/torchvision peer.

    python benchmarks/run.py                          # skin_keras only
    python benchmarks/run.py --peer --peer_python=/path/to/peer-venv/bin/python
    python benchmarks/run.py --peer --rounds=3 --only=train,predict    # medians of 3 rounds

Run by hand (not in CI), on an otherwise idle machine. Prints one table and writes
benchmarks/results.json (with the CPU's relevant flags, library versions and thread settings). Each measurement runs in its own process (its peak memory is its own):

  train img/s         full fine-tune steps (every layer trains), random batch, median of --steps;
                      in float32 and in each side's bfloat16 mode (ours: --precision=
                      onednn_bfloat16; the peer: torch.autocast), and each side's best of the two;
                      bfloat16 only where the CPU has bfloat16 instructions (or --bf16=always)
  frozen recipe s     `train.py` with the seed's frozen-backbone recipe for --epochs epochs, end to
                      end (process start to run folder), on real JPEGs; skin_keras cold (empty
                      feature cache) and warm (second run, other head hyper-parameters would do);
                      and cold for --long_epochs (the seed's 50): the peer's figure for that one
                      is projected, its --epochs run plus the median epoch times the difference
  predict img/s       prediction on a folder of real JPEGs, decode included, median of --repeats,
                      per backend (tflite, onnx, keras) and with auto, the one predict.py picks;
                      the int8 files export.py writes (onnx_int8, tflite_int8); the peer in
                      float32 and in bfloat16 (autocast)
  pipeline img/s      the training input pipeline alone at full resolution

The data: ../shared/datasets/ham10000_600px (600x450 JPEGs, ISIC layout) split by lesion with the
project's own prepare_isic; classes absent on one side are left out. The peer's requirements are in
benchmarks/requirements-peer.txt (make a separate virtual environment).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # skin_keras itself is installed (make venv).
DATASET = REPO.parent / "shared" / "datasets" / "ham10000_600px"


def run_json(command: list[str]) -> dict:
    """Runs a measurement process; returns the JSON of its last output line."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def timed_process(command: list[str]) -> dict:
    """Wall time and peak memory of a whole process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status:
        raise SystemExit(f"failed: {' '.join(command)}\n{output[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "output": output}


def prepare_data(workdir: Path) -> tuple[Path, list[str]]:
    """Lesion split of the 600 px HAM10000 images, with the classes present on both sides."""
    from skin_keras.data import isic  # pylint: disable=g-import-not-at-top

    data = workdir / "data"
    if not (data / "train").exists():
        isic.prepare(isic.PrepareConfig(
            images=str(DATASET / "ISIC_2019_Training_Input"),
            ground_truth=str(DATASET / "ISIC_2019_Training_GroundTruth.csv"),
            metadata=str(DATASET / "ISIC_2019_Training_Metadata.csv"), out_dir=str(data)))
    names = [p.name for p in sorted((data / "train").iterdir()) if p.is_dir()]
    for name in names:
        if not any((data / "val" / name).glob("*")) or not any((data / "train" / name).glob("*")):
            for split in ("train", "val"):
                shutil.rmtree(data / split / name, ignore_errors=True)
    return data, [p.name for p in sorted((data / "train").iterdir()) if p.is_dir()]


def make_model(workdir: Path, model: str, classes: list[str], img_size: int) -> Path:
    """A run-folder-shaped model with random weights (no ImageNet weights offline)."""
    folder = workdir / f"model_{model}_{img_size}"
    if not (folder / "weights" / "best.keras").exists():  # In a child: no TensorFlow here.
        (folder / "weights").mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", (
            "import sys; from skin_keras.model.builder import build_model; "
            "from skin_keras.model.spec import ModelSpec; "
            "build_model(ModelSpec(model=sys.argv[1], img_size=int(sys.argv[3]), weights='none'),"
            " int(sys.argv[2])).save(sys.argv[4])"), model, str(len(classes)), str(img_size),
            str(folder / "weights" / "best.keras")], check=True, capture_output=True)
        (folder / "class_indices.json").write_text(
            json.dumps({str(i): name for i, name in enumerate(classes)}))
    return folder


def export_int8(workdir: Path, model_dir: Path, data: Path) -> dict[str, Path]:
    """export.py's two int8 files of the random-weight model (speed only: its agreement means
    nothing), calibrated on the val images: {"onnx_int8": ..., "tflite_int8": ...}."""
    output = workdir / f"{model_dir.name}_int8"
    files = {"onnx_int8": output / "onnx" / "skin_int8.onnx",
             "tflite_int8": output / "tflite_int8" / "skin_int8.tflite"}
    if not all(path.exists() for path in files.values()):
        subprocess.run([sys.executable, str(REPO / "export.py"), f"--model_path={model_dir}",
                        "--formats=onnx_int8,tflite_int8", f"--data_val={data / 'val'}",
                        f"--output={output}", "--overwrite", "--parity_images=16"],
                       check=True, capture_output=True)
    return files


def frozen_command(args, data: Path, workdir: Path, lr: float, epochs: int) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), f"--model={args.model}", "--weights=none",
            "--freeze_layers", f"--img_size={args.img_size}", f"--batch_size={args.batch_size}",
            f"--epochs={epochs}", "--optim=SGD", f"--lr={lr}", "--lrf=0.001",
            f"--data_train={data / 'train'}", f"--data_val={data / 'val'}",
            f"--save_ret={workdir / 'runs'}", f"--feature_cache={workdir / 'features'}"]


def val_balanced_accuracy(output: str) -> float | None:
    for line in output.splitlines():
        if line.startswith("best epoch") and "balanced accuracy" in line:
            return float(line.split("balanced accuracy ")[1].split(",")[0])
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="s", help="s, m, l or b0-b3")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the frozen recipe")
    parser.add_argument("--long_epochs", type=int, default=50,
                        help="epochs of the long frozen run (the seed's default); 0 skips it")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over a folder")
    parser.add_argument("--workdir", default="/tmp/skin_keras_bench")
    parser.add_argument("--peer", action="store_true", help="also measure PyTorch/torchvision")
    parser.add_argument("--peer_python", default="benchmarks/.peer-venv/bin/python",
                        help="interpreter of the environment made from requirements-peer.txt")
    parser.add_argument("--only", default="train,frozen,predict,pipeline",
                        help="comma-separated subset of the measurements")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every measurement this many times, the two sides taking "
                             "turns, and report medians (this VM's speed drifts by 10-20%% "
                             "from minute to minute)")
    parser.add_argument("--bf16", choices=["auto", "always"], default="auto",
                        help="auto: measure each side's bfloat16 mode only where the CPU has "
                             "bfloat16 instructions (elsewhere both are emulated: about 10x slower "
                             "than float32 in training, tens of minutes a prediction round)")
    args = parser.parse_args()
    if not DATASET.exists():
        raise SystemExit(f"{DATASET} is absent: the benchmark needs the real 600 px images")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data, classes = prepare_data(workdir)
    only = set(args.only.split(","))
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform()},
               "settings": vars(args) | {"classes": classes,
                                         "train_images": sum(1 for _ in (data / "train").rglob("*.jpg")),
                                         "val_images": sum(1 for _ in (data / "val").rglob("*.jpg"))},
               "skin_keras": {}, "peer": {}}
    # This process never imports TensorFlow: a child's peak memory (ru_maxrss) starts from its
    # parent's at fork.
    def record(side, name, value):
        for key in ("versions", "cpu", "threads"):  # What the measurement ran on and with.
            if key in value:
                results["machine"][f"{side} {key}"] = value.pop(key)
        results[side].setdefault(name, []).append(value)
        print(f"{side:10} {name:16} {json.dumps(value)}", flush=True)

    said = []

    def bf16() -> bool:  # Our first measurement says what the CPU has.
        flags = results["machine"].get("skin_keras cpu", {}).get("flags")
        native = flags is None or bool(set(flags) & {"avx512_bf16", "amx_bf16"})
        if not native and args.bf16 == "auto" and not said:
            said.append(True)
            print("bfloat16: not measured, this CPU has no avx512_bf16 or amx_bf16 "
                  "(--bf16=always measures it)", flush=True)
        return native or args.bf16 == "always"

    for _ in range(args.rounds):
        measure(args, only, data, workdir, classes, record, bf16)
    for side in ("skin_keras", "peer"):
        results[side] = {name: median_of(runs) for name, runs in results[side].items()}
    out = REPO / "benchmarks" / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"wrote {out}")


def median_of(runs: list[dict]) -> dict:
    """The first run's fields with every number replaced by its median over the runs (all
    runs kept under "rounds" when there are several)."""
    merged = {}
    for key, value in runs[0].items():
        values = [run[key] for run in runs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        merged[key] = statistics.median(values) if numeric else value
    if len(runs) > 1:
        merged["rounds"] = runs
    return merged


def measure(args, only: set[str], data: Path, workdir: Path, classes: list[str], record,
            bf16):
    """One round of the selected measurements; `record(side, name, result)` keeps each;
    `bf16()` says whether to measure the bfloat16 modes."""
    common = [f"--model={args.model}", f"--img_size={args.img_size}",
              f"--batch_size={args.batch_size}", f"--classes={len(classes)}"]
    ours = [sys.executable, str(REPO / "benchmarks" / "measure_keras.py")]
    peer = [args.peer_python, str(REPO / "benchmarks" / "measure_torch.py")]

    if "train" in only:  # Each side in float32 and in its bfloat16 mode, taking turns.
        for name, our_precision, peer_precision in (("train", "float32", "float32"),
                                                    ("train_bf16", "onednn_bfloat16", "bf16")):
            if peer_precision == "bf16" and not bf16():
                continue
            record("skin_keras", name, run_json(ours + ["train", f"--steps={args.steps}",
                                                        f"--precision={our_precision}"] + common))
            if args.peer:
                record("peer", name, run_json(peer + ["train", f"--steps={args.steps}",
                                                      f"--precision={peer_precision}"] + common))
    if "frozen" in only:
        runs = [("frozen_cold", 0.01, args.epochs), ("frozen_warm", 0.02, args.epochs)]
        runs += [("frozen_cold_long", 0.01, args.long_epochs)] if args.long_epochs else []
        for label, lr, epochs in runs:
            if label.startswith("frozen_cold"):
                shutil.rmtree(workdir / "features", ignore_errors=True)
            timed = timed_process(frozen_command(args, data, workdir, lr, epochs))
            record("skin_keras", label, {"seconds": timed["seconds"],
                                         "peak_rss_mb": timed["peak_rss_mb"],
                                         "val_balanced_accuracy":
                                             val_balanced_accuracy(timed["output"])})
        if args.peer:
            timed = timed_process(peer + ["frozen", f"--epochs={args.epochs}",
                                          f"--data={data}"] + common)
            peer_result = json.loads(timed["output"].strip().splitlines()[-1])
            record("peer", "frozen", {"seconds": timed["seconds"],
                                      "peak_rss_mb": timed["peak_rss_mb"],
                                      "val_accuracy": peer_result["val_accuracy"],
                                      "epoch_seconds": peer_result["epoch_seconds"]})
            if args.long_epochs:  # Projected: the peer's cost is the same every epoch.
                epoch = statistics.median(peer_result["epoch_seconds"])
                record("peer", "frozen_long", {
                    "seconds": timed["seconds"] + (args.long_epochs - args.epochs) * epoch,
                    "projected_from_epochs": args.epochs, "median_epoch_seconds": epoch})
    if "predict" in only:
        model = make_model(workdir, args.model, classes, args.img_size)
        for backend in ("tflite", "onnx", "keras", "auto"):  # auto: what predict.py picks.
            record("skin_keras", f"predict_{backend}", run_json(
                ours + ["predict", f"--model_path={model}", f"--data={data / 'train'},{data / 'val'}",
                        f"--backend={backend}", f"--repeats={args.repeats}"] + common))
        for kind, path in export_int8(workdir, model, data).items():  # The exported files.
            record("skin_keras", f"predict_{kind}", run_json(
                ours + ["predict", f"--model_path={path}", f"--data={data / 'train'},{data / 'val'}",
                        f"--repeats={args.repeats}"] + common))
        if args.peer:
            for name, peer_precision in (("predict", "float32"), ("predict_bf16", "bf16")):
                if peer_precision == "bf16" and not bf16():
                    continue
                record("peer", name, run_json(peer + [
                    "predict", f"--data={data / 'train'},{data / 'val'}",
                    f"--repeats={args.repeats}", f"--precision={peer_precision}"] + common))
    if "pipeline" in only:
        record("skin_keras", "pipeline", run_json(
            ours + ["pipeline", f"--data={data / 'train'}", f"--repeats={args.repeats}"]
            + common))
        if args.peer:
            record("peer", "pipeline", run_json(
                peer + ["pipeline", f"--data={data / 'train'}", f"--repeats={args.repeats}"]
                + common))


def print_table(results: dict) -> None:
    ours, peer = results["skin_keras"], results["peer"]
    rows = []

    def add(name, our, their, higher_is_better=True, unit=""):
        ratio = ""
        if our is not None and their is not None:
            ratio = f"{(our / their if higher_is_better else their / our):.2f}x"
        fmt = (lambda v: "—" if v is None else f"{v:.2f}{unit}")
        rows.append((name, fmt(our), fmt(their), ratio))

    get = lambda side, name, key: side.get(name, {}).get(key)  # noqa: E731
    add("train img/s (full fine-tune), float32", get(ours, "train", "img_s"),
        get(peer, "train", "img_s"))
    add("train img/s, bfloat16 (ours onednn_bfloat16, peer autocast)",
        get(ours, "train_bf16", "img_s"), get(peer, "train_bf16", "img_s"))
    add("train img/s, each side's best precision", _best(ours, ("train", "train_bf16")),
        _best(peer, ("train", "train_bf16")))
    add("frozen recipe s, cold cache", get(ours, "frozen_cold", "seconds"),
        get(peer, "frozen", "seconds"), higher_is_better=False)
    add("frozen recipe s, warm cache", get(ours, "frozen_warm", "seconds"),
        get(peer, "frozen", "seconds"), higher_is_better=False)
    add(f"frozen recipe s, cold, {results['settings']['long_epochs']} epochs (peer projected)",
        get(ours, "frozen_cold_long", "seconds"), get(peer, "frozen_long", "seconds"),
        higher_is_better=False)
    add("predict img/s (TFLite backend)", get(ours, "predict_tflite", "img_s"),
        get(peer, "predict", "img_s"))
    add("predict img/s (ONNX Runtime backend)", get(ours, "predict_onnx", "img_s"),
        get(peer, "predict", "img_s"))
    add("predict img/s (Keras backend)", get(ours, "predict_keras", "img_s"),
        get(peer, "predict", "img_s"))
    add(f"predict img/s (auto: {get(ours, 'predict_auto', 'backend')})",
        get(ours, "predict_auto", "img_s"), get(peer, "predict", "img_s"))
    add("predict img/s (ONNX int8 file, export.py onnx_int8)",
        get(ours, "predict_onnx_int8", "img_s"), get(peer, "predict", "img_s"))
    add("predict img/s (LiteRT int8 file, export.py tflite_int8)",
        get(ours, "predict_tflite_int8", "img_s"), get(peer, "predict", "img_s"))
    add("predict img/s, float: our best backend vs the peer's best precision",
        _best(ours, FLOAT_BACKENDS), _best(peer, ("predict", "predict_bf16")))
    add("predict img/s, int8: our best int8 file vs the peer's best precision",
        _best(ours, INT8_FILES), _best(peer, ("predict", "predict_bf16")))
    add("input pipeline img/s", get(ours, "pipeline", "img_s"), get(peer, "pipeline", "img_s"))
    for name in ("train", "frozen_cold", "predict_tflite", "pipeline"):
        peer_name = {"frozen_cold": "frozen", "predict_tflite": "predict"}.get(name, name)
        add(f"peak memory MB ({name})", get(ours, name, "peak_rss_mb"),
            get(peer, peer_name, "peak_rss_mb"), higher_is_better=False)
    width = max(len(row[0]) for row in rows)
    print(f"\n{'':{width}}  {'skin_keras':>10}  {'peer':>10}  {'ratio':>7}")
    for name, our, their, ratio in rows:
        print(f"{name:{width}}  {our:>10}  {their:>10}  {ratio:>7}")
    # With --rounds, each round's own ratio (the two sides measured minutes apart).
    for label, our_names, peer_names in (
            ("train, best vs best", ("train", "train_bf16"), ("train", "train_bf16")),
            ("predict float, best vs best", FLOAT_BACKENDS, ("predict", "predict_bf16")),
            ("predict int8, best vs best", INT8_FILES, ("predict", "predict_bf16"))):
        our_best, their_best = _best_by_round(ours, our_names), _best_by_round(peer, peer_names)
        if our_best and their_best:
            print(f"{label} ratio by round: "
                  f"{', '.join(f'{o / t:.2f}x' for o, t in zip(our_best, their_best))}")
    for name, peer_name, key, higher in (("train", "train", "img_s", True),
                                         ("frozen_cold", "frozen", "seconds", False),
                                         ("frozen_warm", "frozen", "seconds", False),
                                         ("frozen_cold_long", "frozen_long", "seconds", False),
                                         ("predict_tflite", "predict", "img_s", True),
                                         ("predict_onnx", "predict", "img_s", True),
                                         ("predict_auto", "predict", "img_s", True)):
        our_rounds = ours.get(name, {}).get("rounds")
        their_rounds = peer.get(peer_name, {}).get("rounds")
        if our_rounds and their_rounds:
            ratios = [(o[key] / t[key] if higher else t[key] / o[key])
                      for o, t in zip(our_rounds, their_rounds)]
            print(f"{name} ratio by round: {', '.join(f'{r:.2f}x' for r in ratios)}")


FLOAT_BACKENDS = ("predict_tflite", "predict_onnx", "predict_keras")
INT8_FILES = ("predict_onnx_int8", "predict_tflite_int8")


def _best(side: dict, names: tuple) -> float | None:
    """The highest median img/s among `names` measured on one side."""
    values = [side[name]["img_s"] for name in names if name in side]
    return max(values) if values else None


def _best_by_round(side: dict, names: tuple) -> list[float]:
    """Per round, the highest img/s among `names` (empty without --rounds > 1)."""
    rounds = [side[name].get("rounds") for name in names if name in side]
    if not rounds or not all(rounds):
        return []
    return [max(run[i]["img_s"] for run in rounds) for i in range(len(rounds[0]))]


if __name__ == "__main__":
    main()
