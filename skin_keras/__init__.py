"""skin_keras: train, evaluate, explain and ship skin-lesion classifiers with Keras 3.

Packages follow the data's path; each imports only from those above it in this list (a test,
tests/test_layout.py, fails on an import that points the other way):

    core/       options and flags, errors, atomic files, cache, console, logging, progress, plots
    data/       class folders, decode checks, tf.data pipeline, augmentation, ISIC preparation
                and lesion-grouped splits, patient-metadata CSVs, synthetic and OOD images
    model/      building the network, layers/ (everything a saved model can contain), named
                inputs and outputs (io.py), the model record, the training metric, ensembles
    train/      the loop of phases, recipe, checkpoints, run folder, epoch log, feature cache,
                distribution, the custom loop
    infer/      loading any artifact; formats/: one module per format (SavedModel, TFLite, ONNX:
                how it is written, described, loaded, run and checked) and their registry;
                prediction (resumable, sharded), outputs, Grad-CAM
    evaluate/   metrics reports, calibration measures, shifts and robustness, out-of-distribution
    export/     export.py's job: a loop over the formats, where it writes, parity
    serve/      the server: TF Serving's REST API and a web page (static/), request batching
    workflows/  what strings the others together: a training run (--folds, --calibrate),
                calibration, cross-validation

`prepare_isic`, `calibrate`, `ood_images` and `serve` are the `python -m skin_keras.<name>` entry
points.
Importing `skin_keras` or `skin_keras.model` imports no matplotlib, scikit-learn or training
code.


The Python API (docs/predicting.md, "From Python"):

    run = skin_keras.fit(data_train="data/train", data_val="data/val", model="lite0")
    model = skin_keras.load(run)              # or "runs/exp3": any model predict.py takes
    rows = model.predict(["a.jpg"])           # predict.py's rows; arrays and PIL images too
    heat = model.explain("a.jpg")             # Grad-CAM

docs/quickstart.ipynb runs these in a notebook.
"""

from skin_keras.core.errors import UserError

__all__ = ["UserError", "fit", "load"]


def load(model_path, backend: str = "auto", batch_size: int = 32, tta: int = 1):
    """A trained model, loaded for use from Python: `.classes`, `.predict(images, metadata)`,
    `.explain(image)` (skin_keras/infer/classifier.py). Imports TensorFlow."""
    from skin_keras.core import console  # pylint: disable=g-import-not-at-top

    console.quiet_tensorflow_startup()  # As the scripts: without TensorFlow's start-up lines.
    from skin_keras.infer import classifier  # pylint: disable=g-import-not-at-top  (TensorFlow)

    return classifier.load_classifier(model_path, backend, batch_size, tta)


def fit(verbose: int | str = "auto", **flags):
    """Trains as `python train.py` does, with train.py's flags as keyword arguments (the fields
    of skin_keras.train.config.TrainConfig: data_train="data/train", model="lite0",
    epochs=10, ...); returns the run folder. Imports TensorFlow."""
    # pylint: disable=g-import-not-at-top  (TensorFlow)
    from skin_keras.core import console

    console.quiet_tensorflow_startup()
    from skin_keras.train.config import TrainConfig
    from skin_keras.workflows import training

    return training.run(TrainConfig(**flags), verbose)
