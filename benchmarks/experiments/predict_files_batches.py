import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"]="2"
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # the repository
import numpy as np
from skin_keras import artifacts, inference
paths = inference.list_sources(["/tmp/skin_keras_bench/data/train", "/tmp/skin_keras_bench/data/val"])
loaded = inference.select_backend(artifacts.load_model("/tmp/skin_keras_bench/model_s_224/weights/best.keras"), "tflite", len(paths))
t=time.perf_counter(); inference.file_errors(paths); print("file_errors", time.perf_counter()-t)
inference.predict_files(loaded, paths[:8], 8, show_progress=False)
fwd=loaded.forward
stats=[0,0.0]
def timed(x):
    t=time.perf_counter(); r=fwd(x); stats[0]+=1; stats[1]+=time.perf_counter()-t; return r
loaded.forward=timed
for bs in (8, 8, 8, 32):
    stats[:]=[0,0.0]
    t=time.perf_counter(); inference.predict_files(loaded, paths, bs, show_progress=False); total=time.perf_counter()-t
    print("bs", bs, "total", round(total,2), "img/s", round(len(paths)/total,1), "fwd", round(stats[1],2), "calls", stats[0])
