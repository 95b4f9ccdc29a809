"""Where onnx_int8 disagrees with float (docs/benchmarks.md, "int8"),
kept as run on 2026-12-06. Same model, images and calibration draws as
onnx_int8_variants.py (whose set-up it runs; /tmp/int8_export from export.py first).

    python benchmarks/experiments/onnx_int8_debug.py sqnr     # per-tensor SQNR -> /tmp/q/err.json
    python benchmarks/experiments/onnx_int8_debug.py draws    # nodes kept in float, 3 draws
    python benchmarks/experiments/onnx_int8_debug.py margin   # float top-1 margins of the flips
"""
import json
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
what = sys.argv[1]
sys.argv = sys.argv[:1]
exec((here / "onnx_int8_variants.py").read_text().split("variants = {")[0])
from onnxruntime.quantization import qdq_loss_debug as d  # noqa: E402


class RR(q.CalibrationDataReader):
    def __init__(self, X): self.it = iter([{"image": X[i:i + 10]} for i in range(0, len(X), 10)])
    def get_next(self): return next(self.it, None)


head = [n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm")]
kw = dict(quant_format=q.QuantFormat.QDQ, per_channel=True, activation_type=q.QuantType.QUInt8,
          weight_type=q.QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
          calibrate_method=q.CalibrationMethod.Percentile)
if what == "sqnr":
    q.quantize_static(pre, "/tmp/q/dbg_q.onnx", RR(C), nodes_to_exclude=head, **kw)
    d.modify_model_output_intermediate_tensors(pre, "/tmp/q/dbg_f_aug.onnx")
    d.modify_model_output_intermediate_tensors("/tmp/q/dbg_q.onnx", "/tmp/q/dbg_q_aug.onnx")
    X = T[:60]
    err = d.compute_activation_error(d.create_activation_matching(
        d.collect_activations("/tmp/q/dbg_q_aug.onnx", RR(X)),
        d.collect_activations("/tmp/q/dbg_f_aug.onnx", RR(X))))
    json.dump({k: {kk: float(vv) for kk, vv in v.items()} for k, v in err.items()},
              open("/tmp/q/err.json", "w"))
    for r in sorted((v.get("qdq_err", 0), v.get("xmodel_err", 0), k) for k, v in err.items())[:25]:
        print(f"{r[0]:7.2f} {r[1]:7.2f} {r[2]}")
if what == "draws":
    se = [n.name for n in convs if "se_" in n.name]
    err = json.load(open("/tmp/q/err.json"))

    def low_sqnr(th):
        bad = {k.removesuffix("_ReshapedTensor") for k, v in err.items()
               if v.get("qdq_err", 99) < th}
        return [n.name for n in convs if set(n.output) & bad or set(n.input) & bad]

    sets = {"none": [], "head": head, "head_se": head + se, "head_lt25": head + low_sqnr(25),
            "head_se_lt30": head + se + low_sqnr(30),
            "head_block6": head + [n.name for n in convs if "block6" in n.name]}
    pool = [val[i] for i in order[500:]]
    for seed in (1, 2, 3):
        idx = np.random.default_rng(seed).permutation(len(pool))[:100]
        CC = load([pool[i] for i in idx])
        for name, nodes in sets.items():
            q.quantize_static(pre, "/tmp/q/dr.onnx", RR(CC), nodes_to_exclude=nodes, **kw)
            p = run("/tmp/q/dr.onnx", T)
            print("draw", seed, name, len(nodes), "in float, agree",
                  (p.argmax(1) == ref.argmax(1)).mean(), flush=True)
if what == "margin":  # Of the last model `draws` wrote.
    p = run("/tmp/q/dr.onnx", T)
    s = np.sort(ref, 1)
    margin = s[:, -1] - s[:, -2]
    flip = p.argmax(1) != ref.argmax(1)
    print("flips", flip.sum(), "their float margins", np.round(np.sort(margin[flip]), 3))
    for t in (0.02, 0.05, 0.1, 0.2):
        print(f"margin < {t}: {(margin < t).mean():.3f}")
    print("median margin", np.median(margin))
