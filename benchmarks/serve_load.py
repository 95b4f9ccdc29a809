r"""Load test of serve.py on 127.0.0.1, and predict.py on the same images for comparison.

    python benchmarks/serve_load.py                          # EfficientNetV2-S, 224 px, untrained
    python benchmarks/serve_load.py --model_path=runs/exp3 --clients=8 --requests=125

Starts `serve.py` in its own process on a free loopback port (never another address), sends
--clients concurrent clients x --requests TF Serving requests each (one real JPEG per request,
{"instances": [{"b64": ...}]}, a keep-alive connection per client, as a client library would),
and reports throughput, p50/p95/p99 latency, errors, and the server's resident memory (VmRSS from
/proc) after 16 requests from 2 clients, after a warm-up of 10 requests per client at full
concurrency (every batch size seen) and after the load, and its peak (VmHWM). Then predict.py predicts as
many files (the same JPEGs, copied under other names) with the same backend, timed end to end.
A converted copy (tflite, onnx) is made and cached by a first predict.py call on 8 images, so
that neither side's figures include the conversion.
Run by hand on an otherwise idle machine; prints a table and writes benchmarks/serve_load.json.

Without --model_path the model is an untrained EfficientNetV2-S at 224 px (weights do not change
the speed), saved as a .keras file with the eight ISIC classes in a temporary folder.
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "datasets" / "ham10000_600px" / "ISIC_2019_Training_Input"
ISIC_CLASSES = ("Actinic keratosis", "Basal cell carcinoma", "Benign keratosis",
                "Dermatofibroma", "Melanocytic nevus", "Melanoma", "Squamous cell carcinoma",
                "Vascular lesion")


def untrained_model(folder: Path, model: str, img_size: int) -> Path:
    """An untrained .keras classifier of the eight classes (built in a child process)."""
    path = folder / "model.keras"
    code = (
        "import keras\n"
        "from skin_keras.model import record\n"
        "from skin_keras.model.builder import build_model\n"
        "from skin_keras.model.spec import ModelSpec\n"
        f"model = build_model(ModelSpec(model={model!r}, weights='none', img_size={img_size}),"
        f" {len(ISIC_CLASSES)})\n"
        f"record.save_model(model, {str(path)!r}, record.ModelInfo.of(model, {ISIC_CLASSES!r}))\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return path


def memory_kb(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def start_server(model_path: Path, backend: str, max_concurrent: int):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "serve.py"), f"--model_path={model_path}", "--port=0",
         "--host=127.0.0.1", f"--backend={backend}", f"--max_concurrent={max_concurrent}",
         "--max_waiting=1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "TF Serving:" in line:
            url = line.split("POST ")[1].strip()
            return process, url.split("/")[2], "/" + url.split("/", 3)[3]
    raise SystemExit(f"serve.py did not start:\n{process.stderr.read()[-3000:]}")


def client(address: str, path: str, bodies: list[bytes], latencies: list, errors: list):
    """One client: a keep-alive connection, its requests one after another."""
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=300)
    for body in bodies:
        start = time.perf_counter()
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200 or b"predictions" not in answer:
                errors.append(f"{response.status}: {answer[:200]!r}")
        except (OSError, http.client.HTTPException) as error:
            errors.append(repr(error))
            connection.close()
            connection = http.client.HTTPConnection(host, int(port), timeout=300)
        latencies.append(time.perf_counter() - start)
    connection.close()


def load(address: str, path: str, bodies: list[bytes], clients: int, requests: int) -> dict:
    latencies, errors, threads = [], [], []
    start = time.perf_counter()
    for index in range(clients):
        mine = [bodies[(index * requests + k) % len(bodies)] for k in range(requests)]
        threads.append(threading.Thread(target=client, args=(address, path, mine, latencies,
                                                              errors)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100)
    return {"requests": len(latencies), "errors": len(errors), "first errors": errors[:3],
            "seconds": wall, "requests/s": len(latencies) / wall,
            "p50 ms": 1000 * cuts[49], "p95 ms": 1000 * cuts[94], "p99 ms": 1000 * cuts[98]}


def predict_py(model_path: Path, backend: str, images: list[Path], count: int,
               folder: Path) -> dict:
    source = folder / "predict_source"
    source.mkdir(parents=True)
    for index in range(count):
        shutil.copy(images[index % len(images)], source / f"{index:05d}.jpg")
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "predict.py"), f"--model_path={model_path}",
                    f"--source={source}", f"--output={folder / 'predict_out'}",
                    f"--backend={backend}"], check=True, capture_output=True)
    wall = time.perf_counter() - start
    return {"images": count, "seconds (process start to CSV)": wall, "images/s": count / wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_path", help="default: an untrained --model at --img_size")
    parser.add_argument("--model", default="s")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--backend", default="tflite", help="serve.py's and predict.py's")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=125, help="per client")
    parser.add_argument("--max_concurrent", type=int, default=1)
    parser.add_argument("--images", type=int, default=206, help="distinct JPEGs sent")
    args = parser.parse_args()
    images = sorted(IMAGES.glob("*.jpg"))[:args.images]
    if not images:
        raise SystemExit(f"no JPEGs in {IMAGES}")
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()}]}
                         ).encode() for p in images]
    with tempfile.TemporaryDirectory(prefix="serve_load_") as temporary:
        folder = Path(temporary)
        model_path = Path(args.model_path) if args.model_path else untrained_model(
            folder, args.model, args.img_size)
        # The converted copy cached first, as after a first run: neither side converts.
        predict_py(model_path, args.backend, images, 8, folder / "convert")
        process, address, path = start_server(model_path, args.backend, args.max_concurrent)
        try:
            load(address, path, bodies, 2, 8)
            first = memory_kb(process.pid)
            # Warm-up at full concurrency: every batch size traced and its buffers allocated.
            load(address, path, bodies, args.clients, 10)
            before = memory_kb(process.pid)
            figures = load(address, path, bodies, args.clients, args.requests)
            after = memory_kb(process.pid)
        finally:
            process.terminate()
            process.wait(60)
        total = args.clients * args.requests
        offline = predict_py(model_path, args.backend, images, total, folder)
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
              "model": str(args.model_path or f"untrained {args.model} at {args.img_size} px"),
              "backend": args.backend, "clients": args.clients,
              "requests per client": args.requests, "max_concurrent": args.max_concurrent,
              "server": figures, "server RSS MB after 16 requests": first["VmRSS"] / 1024,
              "server RSS MB after warm-up": before["VmRSS"] / 1024,
              "server RSS MB after load": after["VmRSS"] / 1024,
              "server RSS growth": after["VmRSS"] / before["VmRSS"] - 1,
              "server peak RSS MB": after["VmHWM"] / 1024, "predict.py": offline,
              "server / predict.py throughput": figures["requests/s"] / offline["images/s"],
              "cpus": os.cpu_count()}
    (REPO / "benchmarks" / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if figures["errors"]:
        raise SystemExit(f"{figures['errors']} requests failed")


if __name__ == "__main__":
    main()
