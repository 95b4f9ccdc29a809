import sys, time, subprocess, json
from pathlib import Path
import numpy as np
sys.path.insert(0, "/work/main")
import keras
from skin_keras.model import record
from skin_keras.model.builder import build_model
from skin_keras.model.spec import ModelSpec
from skin_keras.infer import onnx_runtime
from skin_keras.data import pipeline
import onnxruntime as ort
model = build_model(ModelSpec(model="s", weights="none", img_size=224), 8)
t = time.perf_counter(); content = onnx_runtime.convert(model); print("convert s", time.perf_counter() - t, flush=True)
Path("/tmp/q/s_float.onnx").write_bytes(content)
imgs = sorted(Path("/work/shared/datasets/ham10000_600px/ISIC_2019_Training_Input").glob("*.jpg"))[:206]
X = np.stack([pipeline.load_image(str(p), 224).numpy() for p in imgs])
t = time.perf_counter()
q = onnx_runtime.quantize(content, ({"image": X[i:i+10]} for i in range(0, 100, 10)))
print("quantize s", time.perf_counter() - t, flush=True)
Path("/tmp/q/s_int8.onnx").write_bytes(q)
def speed(path):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    n = s.get_inputs()[0].name
    s.run(None, {n: X[:8]})
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for i in range(0, 206, 8): s.run(None, {n: X[i:i+8]})
        times.append(206 / (time.perf_counter() - t))
    return times, np.concatenate([s.run(None, {n: X[i:i+32]})[0] for i in range(0, 206, 32)])
for rnd in range(2):
    f, pf = speed("/tmp/q/s_float.onnx"); i8, pi = speed("/tmp/q/s_int8.onnx")
    print("round", rnd, "float img/s", [round(v, 1) for v in f], "int8 img/s", [round(v, 1) for v in i8], flush=True)
print("agree (untrained)", (pf.argmax(1) == pi.argmax(1)).mean())
