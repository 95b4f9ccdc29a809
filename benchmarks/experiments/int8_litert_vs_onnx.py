"""int8 speed, EfficientNetV2-S at 224 px (untrained: speed only), the model alone through the
project's runners (load.load), 206 real JPEGs decoded beforehand, calls of 8, three passes per
round, the runtimes in turn: ONNX float, ONNX int8 (export.py's onnx_int8), LiteRT full integer
(export.py's tflite_int8, XNNPACK). Run: python benchmarks/experiments/int8_litert_vs_onnx.py"""
import sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from skin_keras.model.builder import build_model
from skin_keras.model.spec import ModelSpec
from skin_keras.infer import onnx_runtime, litert, load
from skin_keras.data import pipeline

work = Path("/tmp/int8_speed"); work.mkdir(exist_ok=True)
model = build_model(ModelSpec(model="s", weights="none", img_size=224), 8)
model.save(work / "s.keras")
images = sorted((Path(__file__).resolve().parents[3] / "shared/datasets/ham10000_600px/ISIC_2019_Training_Input").glob("*.jpg"))[:206]
X = np.stack([pipeline.load_image(str(p), 224).numpy() for p in images])
content = onnx_runtime.convert(model)
(work / "s.onnx").write_bytes(content)
(work / "s_int8.onnx").write_bytes(onnx_runtime.quantize(content, {"image": X[:100]}))
(work / "s_int8.tflite").write_bytes(litert.convert(model, "int8", [str(p) for p in images[:100]]))
runners = {name: load.load(work / name) for name in ("s.onnx", "s_int8.onnx", "s_int8.tflite")}
def speed(runner):
    runner({"image": X[:8]})
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(X), 8):
            runner({"image": X[i:i + 8]})
        rates.append(len(X) / (time.perf_counter() - start))
    return rates
for round_ in range(2):
    for name, runner in runners.items():
        rates = speed(runner)
        print(f"round {round_} {name:14} img/s {[round(r, 1) for r in rates]} median {np.median(rates):.1f}", flush=True)
