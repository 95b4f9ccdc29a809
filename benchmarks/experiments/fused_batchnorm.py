import os, sys, time, statistics
os.environ["TF_CPP_MIN_LOG_LEVEL"]="2"
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # the repository
import numpy as np, tensorflow as tf, keras
from skin_keras import models, training, metrics

def fused_call(self, inputs, training=None, mask=None):
    if not training or not self.trainable:
        return type(self).call(self, inputs, training=training, mask=mask)
    x = tf.cast(inputs, tf.float32)
    y, mean, var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=self.gamma.value, offset=self.beta.value,
        mean=tf.constant([], tf.float32), variance=tf.constant([], tf.float32),
        epsilon=self.epsilon, data_format="NHWC", is_training=True)
    n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
    var = var * (n - 1) / n  # the op returns the unbiased variance; Keras keeps the biased one
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
    self.moving_variance.assign(self.moving_variance * self.momentum + var * (1 - self.momentum))
    return tf.cast(y, inputs.dtype)

def build(fused):
    keras.utils.set_random_seed(0)
    model = models.build_model("s", 8, 224, "none", freeze_backbone=False)
    if fused:
        for layer in models.backbone_of(model).layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.call = fused_call.__get__(layer)
    training.compile_models((model,), keras.optimizers.SGD(0.01, momentum=0.9), keras.losses.CategoricalCrossentropy(), metrics.ConfusionMatrixMetric(8))
    return model

rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (8, 224, 224, 3)).astype("float32")
y = np.eye(8)[rng.integers(0, 8, 8)]
mode = sys.argv[1]
if mode == "check":
    a, b = build(False), build(True)
    b.set_weights(a.get_weights())
    la = a.train_on_batch(x, y, return_dict=True)["loss"]; lb = b.train_on_batch(x, y, return_dict=True)["loss"]
    print("loss", la, lb)
    diffs = [float(np.abs(u - v).max()) for u, v in zip(a.get_weights(), b.get_weights())]
    print("max weight diff after one step", max(diffs))
    pa, pb = a.predict(x[:2], verbose=0), b.predict(x[:2], verbose=0)
    print("pred diff", float(np.abs(pa - pb).max()))
else:
    m = build(mode == "fused")
    m.train_on_batch(x, y)
    ts = []
    for _ in range(5):
        t = time.perf_counter(); m.train_on_batch(x, y); ts.append(time.perf_counter() - t)
    print(mode, "img/s", round(8 / statistics.median(ts), 2))
