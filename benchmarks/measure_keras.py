"""One skin_keras measurement for benchmarks/run.py; prints one JSON line (run by run.py)."""

import argparse
import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from skin_keras.core import tensorflow_env  # noqa: E402  pylint: disable=g-import-not-at-top

tensorflow_env.set_defaults()  # As the scripts run TensorFlow (oneDNN on every CPU).


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_train(args) -> dict:
    """Full fine-tune steps (every layer trains) on one random batch, after the first step."""
    from skin_keras.train import precision  # pylint: disable=g-import-not-at-top

    with precision.compute_precision(args.precision):  # What train.py --precision=P runs.
        return _measure_train(args)


def _measure_train(args) -> dict:
    import keras  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    from skin_keras.model import metrics  # pylint: disable=g-import-not-at-top
    from skin_keras.model.builder import build_model  # pylint: disable=g-import-not-at-top
    from skin_keras.model.spec import ModelSpec  # pylint: disable=g-import-not-at-top

    model = build_model(ModelSpec(model=args.model, img_size=args.img_size, weights="none",
                                  freeze_layers=False, batch_norm=args.batch_norm), args.classes)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[metrics.ConfusionMatrixMetric(args.classes)],
                  jit_compile={"on": True, "off": False}.get(args.jit_compile, "auto"))
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    images = {"image": rng.uniform(0, 255, (args.batch_size, args.img_size, args.img_size, 3)
                                   ).astype("float32")}
    labels = np.eye(args.classes)[rng.integers(0, args.classes, args.batch_size)]
    start = time.perf_counter()
    model.train_on_batch(images, labels)
    first = time.perf_counter() - start
    steps = []
    for _ in range(args.steps):
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        steps.append(time.perf_counter() - start)
    return {"img_s": args.batch_size / statistics.median(steps), "first_step_s": first}


def measure_predict(args) -> dict:
    """infer.files.predict_files on the folder (decode, resize, model), median of repeats."""
    from skin_keras.infer import backend, files, load  # pylint: disable=g-import-not-at-top

    paths = files.list_sources(args.data.split(","))
    runner = load.load(args.model_path)
    start = time.perf_counter()
    runner = backend.select(runner, args.backend, len(paths))
    convert = time.perf_counter() - start
    files.predict_files(runner, paths[:args.batch_size], args.batch_size,
                        show_progress=False)  # Warm-up: tracing, thread pools.
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        files.predict_files(runner, paths, args.batch_size, show_progress=False)
        times.append(time.perf_counter() - start)
    return {"img_s": len(paths) / statistics.median(times), "images": len(paths),
            "backend": type(runner).__name__, "select_backend_s": convert}


def measure_pipeline(args) -> dict:
    """The training input pipeline alone (decode, resize, flips), median of passes."""
    from skin_keras.data import folders, pipeline  # pylint: disable=g-import-not-at-top

    folder = folders.scan_image_folder(args.data)
    dataset = pipeline.make_dataset(folder.paths, folder.labels, folder.num_classes,
                                    args.img_size, args.batch_size, training=pipeline.Training())
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        count = sum(int(inputs["image"].shape[0]) for inputs, _ in dataset)
        times.append(time.perf_counter() - start)
    return {"img_s": count / statistics.median(times), "images": count}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["train", "predict", "pipeline"])
    parser.add_argument("--model", default="s")
    parser.add_argument("--model_path")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--data")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="float32", help="train: as train.py's --precision")
    parser.add_argument("--jit_compile", default="auto", help="train: auto, on or off (XLA)")
    parser.add_argument("--batch_norm", default="fused", help="train: fused or keras")
    args = parser.parse_args()
    result = {"train": measure_train, "predict": measure_predict,
              "pipeline": measure_pipeline}[args.what](args)
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from importlib import metadata  # pylint: disable=g-import-not-at-top

    from skin_keras.train import precision  # pylint: disable=g-import-not-at-top

    flags = precision.cpu_flags() or set()
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb(),
                      "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                                   "python": sys.version.split()[0],
                                   **{name: metadata.version(name) for name in (
                                       "ai-edge-litert", "onnxruntime", "numpy")}},
                      "cpu": {"flags": sorted(flags & {
                          "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                          "amx_tile", "fma"}), "count": os.cpu_count()},
                      "threads": {
                          "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                          "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                          **{name: os.environ.get(name) for name in (
                              "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS")}}}))


if __name__ == "__main__":
    main()
