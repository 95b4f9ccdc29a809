import sys, time, tempfile
from pathlib import Path
import numpy as np, onnx, onnxruntime as ort
from onnxruntime import quantization as q
from onnxruntime.quantization.shape_inference import quant_pre_process
sys.path.insert(0, "/work/main")
from skin_keras.data import pipeline, folders

float_path = "/tmp/int8_export/onnx/skin.onnx"
val = sorted(Path("/work/experiments/data_rosendahl/val").rglob("*.jpg"))
rng = np.random.default_rng(0)
order = rng.permutation(len(val))
calib = [val[i] for i in order[500:800]] if 'big' in ' '.join(sys.argv) else [val[i] for i in order[:100]]
test = [val[i] for i in order[100:500]]
size = 64
load = lambda paths: np.stack([pipeline.load_image(str(p), size).numpy() for p in paths])
C, T = load(calib), load(test)
labels_names = sorted(p.name for p in Path("/work/experiments/data_rosendahl/val").iterdir())
y = np.array([labels_names.index(p.parent.name) for p in test])
def run(path, X):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    outs = [o.name for o in s.get_outputs()]
    pi = [i for i, o in enumerate(s.get_outputs()) if len(o.shape) == 2][0]
    return np.concatenate([s.run(None, {name: X[i:i+32]})[pi] for i in range(0, len(X), 32)])
ref = run(float_path, T)
from sklearn.metrics import balanced_accuracy_score
print("float bal acc", balanced_accuracy_score(y, ref.argmax(1)))
pre = "/tmp/q/pre.onnx"
quant_pre_process(float_path, pre, skip_symbolic_shape=True)
m = onnx.load(pre)
convs = [n for n in m.graph.node if n.op_type == "Conv"]
def group(n):
    for a in n.attribute:
        if a.name == "group": return a.i
    return 1
depthwise = [n.name for n in convs if group(n) > 1]
print(len(convs), "convs", len(depthwise), "depthwise", sum("se_" in n.name for n in convs), "se")
class R(q.CalibrationDataReader):
    def __init__(self): self.it = iter([{"image": C[i:i+10]} for i in range(0, len(C), 10)])
    def get_next(self): return next(self.it, None)
variants = {
 "minmax": dict(),
 "percentile": dict(calibrate_method=q.CalibrationMethod.Percentile),
 "entropy": dict(calibrate_method=q.CalibrationMethod.Entropy),
 "minmax_nodw": dict(nodes_to_exclude=depthwise),
 "minmax_s8": dict(activation_type=q.QuantType.QInt8),
 "minmax_ends": dict(nodes_to_exclude=[convs[0].name] + [n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm")]),
 "percentile_nodw": dict(calibrate_method=q.CalibrationMethod.Percentile, nodes_to_exclude=depthwise),
 "minmax_pw_only": dict(nodes_to_exclude=depthwise + [convs[0].name]),
 "percentile_nose": dict(calibrate_method=q.CalibrationMethod.Percentile, nodes_to_exclude=[n.name for n in convs if "se_" in n.name]),
 "percentile_nose_dw": dict(calibrate_method=q.CalibrationMethod.Percentile, nodes_to_exclude=[n.name for n in convs if "se_" in n.name] + depthwise),
 "p9999": dict(calibrate_method=q.CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.99}),
 "p999": dict(calibrate_method=q.CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.9}),
 "percentile_big": dict(calibrate_method=q.CalibrationMethod.Percentile),
 "percentile_stem": dict(calibrate_method=q.CalibrationMethod.Percentile, nodes_to_exclude=[convs[0].name]),
}
for name in [a for a in sys.argv[1:] if a in variants] or ([] if "ours" in sys.argv else variants):
    kw = dict(quant_format=q.QuantFormat.QDQ, per_channel=True, activation_type=q.QuantType.QUInt8,
              weight_type=q.QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    kw.update(variants[name])
    out = f"/tmp/q/{name}.onnx"
    q.quantize_static(pre, out, R(), **kw)
    p = run(out, T)
    t = time.perf_counter(); run(out, T); dt = time.perf_counter() - t
    t = time.perf_counter(); run(float_path, T); df = time.perf_counter() - t
    print(name, "agree", (p.argmax(1) == ref.argmax(1)).mean(), "maxdp", np.abs(p - ref).max(),
          "balacc", balanced_accuracy_score(y, p.argmax(1)), f"int8 {dt:.2f}s float {df:.2f}s")
if "ours" in sys.argv:
    from skin_keras.infer import onnx_runtime
    content = Path(float_path).read_bytes()
    qb = onnx_runtime.quantize(content, ({"image": C[i:i+10]} for i in range(0, len(C), 10)))
    Path("/tmp/q/ours.onnx").write_bytes(qb)
    p = run("/tmp/q/ours.onnx", T)
    print("ours agree", (p.argmax(1) == ref.argmax(1)).mean(), "maxdp", np.abs(p - ref).max())
    e = run("/tmp/int8_export/onnx/skin_int8.onnx", T)
    print("exported agree", (e.argmax(1) == ref.argmax(1)).mean())
if "exportcal" in sys.argv:
    from skin_keras.infer import onnx_runtime
    idx = sorted(np.random.default_rng(1).permutation(len(val))[:100].tolist())
    C2 = load([val[i] for i in idx])
    content = Path(float_path).read_bytes()
    for nm, CC in (("exportcal", C2), ("exportcal_first", C2)):
        qb = onnx_runtime.quantize(content, ({"image": CC[i:i+10]} for i in range(0, len(CC), 10)))
        Path("/tmp/q/ours2.onnx").write_bytes(qb)
        p = run("/tmp/q/ours2.onnx", T)
        print(nm, "agree", (p.argmax(1) == ref.argmax(1)).mean())
    # shuffled batches: calibration batches of mixed classes
    perm = np.random.default_rng(5).permutation(len(C2))
    C3 = C2[perm]
    qb = onnx_runtime.quantize(content, ({"image": C3[i:i+10]} for i in range(0, len(C3), 10)))
    Path("/tmp/q/ours3.onnx").write_bytes(qb)
    p = run("/tmp/q/ours3.onnx", T)
    print("exportcal_shuffled agree", (p.argmax(1) == ref.argmax(1)).mean())
if "many" in sys.argv:
    from skin_keras.infer import onnx_runtime
    content = Path(float_path).read_bytes()
    pool = [val[i] for i in order[500:]]
    for seed in (1, 2):
        idx = np.random.default_rng(seed).permutation(len(pool))[:500]
        CC = load([pool[i] for i in idx])
        qb = onnx_runtime.quantize(content, ({"image": CC[i:i+10]} for i in range(0, len(CC), 10)))
        Path("/tmp/q/ours4.onnx").write_bytes(qb)
        p = run("/tmp/q/ours4.onnx", T)
        print("500 calib seed", seed, "agree", (p.argmax(1) == ref.argmax(1)).mean())
if "sedraws" in sys.argv:
    pool = [val[i] for i in order[500:]]
    se = [n.name for n in convs if "se_" in n.name]
    for seed in (1, 2, 3):
        idx = np.random.default_rng(seed).permutation(len(pool))[:100]
        CC = load([pool[i] for i in idx])
        for excl_name, excl in (("all", []), ("se_float", se)):
            class R2(q.CalibrationDataReader):
                def __init__(self): self.it = iter([{"image": CC[i:i+10]} for i in range(0, len(CC), 10)])
                def get_next(self): return next(self.it, None)
            q.quantize_static(pre, "/tmp/q/d.onnx", R2(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_exclude=excl,
                              calibrate_method=q.CalibrationMethod.Percentile)
            p = run("/tmp/q/d.onnx", T)
            print("draw", seed, excl_name, "agree", (p.argmax(1) == ref.argmax(1)).mean(), flush=True)
