import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"]="2"
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # the repository
import numpy as np, tensorflow as tf
from skin_keras import models
model=models.build_model("s", 6, 224, "none", freeze_backbone=True)
ext=models.feature_model(model)
for jit in (False, True):
  for bs in (8, 16, 32):
    f=tf.function(lambda x: ext(x, training=False), jit_compile=jit)
    x=tf.constant(np.random.default_rng(0).uniform(0,255,(bs,224,224,3)).astype("float32"))
    t=time.perf_counter(); f(x); first=time.perf_counter()-t
    ts=[]
    for _ in range(3):
        t=time.perf_counter(); f(x).numpy(); ts.append(time.perf_counter()-t)
    print("jit",jit,"bs",bs,"first",round(first,1),"img/s",round(bs/min(ts),1), flush=True)
