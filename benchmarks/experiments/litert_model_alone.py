import os, sys, time, glob
os.environ["TF_CPP_MIN_LOG_LEVEL"]="2"
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # the repository
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from skin_keras import artifacts, cache, litert
loaded = artifacts.load_model("/tmp/skin_keras_bench/model_s_224/weights/best.keras")
fp32 = (cache.cache_root()/"tflite"/f"{cache.file_sha1(loaded.source)}.tflite").read_bytes()
t=time.perf_counter(); dyn = litert.convert(loaded.model, "dynamic"); print("convert dynamic", time.perf_counter()-t)
open("/tmp/s_dynamic.tflite","wb").write(dyn)
x=np.random.default_rng(0).uniform(0,255,(8,224,224,3)).astype("float32")
ref=loaded.model.predict(x, verbose=0)
for name, content in (("fp32", fp32), ("dynamic", dyn)):
    for bs in (1, 8):
        it=Interpreter(model_content=content, num_threads=2)
        inp=it.get_input_details()[0]; it.resize_tensor_input(inp["index"], (bs,224,224,3)); it.allocate_tensors()
        out=it.get_output_details()[0]
        it.set_tensor(inp["index"], x[:bs]); it.invoke()
        ts=[]
        for _ in range(3):
            t=time.perf_counter()
            for i in range(0, 8, bs):
                it.set_tensor(inp["index"], x[i:i+bs]); it.invoke()
            ts.append(time.perf_counter()-t)
        # parity on full batch
        preds=[]
        for i in range(0,8,bs):
            it.set_tensor(inp["index"], x[i:i+bs]); it.invoke(); preds.append(it.get_tensor(out["index"]).copy())
        p=np.concatenate(preds)
        print(name, "bs", bs, "img/s", round(8/min(ts),1), "max|dp|", float(np.abs(p-ref).max()), flush=True)
