"""LiteRT int8 with the classifier and softmax kept in float (TFLite's QuantizationDebugger
denylist), against export.py's full-integer tflite_int8: top-1 agreement with the Keras model on
export's 400 parity images, and speed. Kept as run on 2026-12-06 (absolute paths of that machine).

    python benchmarks/experiments/litert_int8_mixed.py RUN_FOLDER VAL_FOLDER
"""
import sys, tempfile, time
from pathlib import Path
import numpy as np
import tensorflow as tf
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from skin_keras.data import folders, pipeline
from skin_keras.infer import litert, load
from skin_keras.model import io

run, val_dir = sys.argv[1], sys.argv[2]
keras_runner = load.load(run)
model, size = keras_runner.model, keras_runner.img_size
val = folders.scan_image_folder(val_dir)
test = [val.paths[i] for i in folders.sample_indices(val, 400)]
calib = [val.paths[i] for i in folders.sample_indices(val, 100, 1)]
X = np.stack([pipeline.load_image(str(p), size).numpy() for p in test])
ref = np.concatenate([keras_runner({io.IMAGE: X[i:i + 50]})[io.PROBABILITIES] for i in range(0, 400, 50)])


def rep():
    for p in calib:
        yield {io.IMAGE: pipeline.load_image(tf.constant(str(p)), size)[None]}


def judge(name, content):
    path = Path(tempfile.mkdtemp()) / f"{name}.tflite"
    path.write_bytes(content)
    runner = load.load(path)
    start = time.perf_counter()
    p = np.concatenate([runner({io.IMAGE: X[i:i + 8]})[io.PROBABILITIES] for i in range(0, 400, 8)])
    seconds = time.perf_counter() - start
    print(f"{name:22} agree {(p.argmax(1) == ref.argmax(1)).mean():.4f} max|dp| {np.abs(p - ref).max():.3f} "
          f"{400 / seconds:.0f} img/s", flush=True)


with tempfile.TemporaryDirectory() as folder:
    source = litert.traced_source(model, folder)
    judge("full integer", litert.convert(model, "int8", [str(p) for p in calib], source))
    for label, ops in (("float FC+softmax", ["FULLY_CONNECTED", "SOFTMAX"]),
                       ("float FC+softmax+mean", ["FULLY_CONNECTED", "SOFTMAX", "MEAN"])):
        converter = tf.lite.TFLiteConverter.from_saved_model(source)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = rep
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=rep,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=ops))
        judge(label, debugger.get_nondebug_quantized_model())
