"""Shared fixtures: tiny synthetic class folders, untrained run folders (seconds: for every test
that reads a model but not its accuracy), one tiny trained run, and real-data access.

Everything is offline and small (16-64 px images, weights=None). Tests that need the real
HAM10000 images read ../shared/datasets and skip with a reason where it is absent.
"""

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

# Converted TFLite models are cached here, never in the home folder (subprocesses inherit it).
os.environ["SKIN_KERAS_CACHE"] = tempfile.mkdtemp(prefix="skin_keras_cache_")
# And Keras' (EfficientNet-Lite's converted ImageNet weights): set before Keras is imported.
os.environ["KERAS_HOME"] = os.path.join(os.environ["SKIN_KERAS_CACHE"], "keras")

from skin_keras.core import console  # noqa: E402  pylint: disable=g-import-not-at-top

console.quiet_tensorflow_startup()  # The suite's log as the scripts' (no CUDA probing noise).

import keras  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top
import pytest  # noqa: E402  pylint: disable=g-import-not-at-top
import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top

import small_b0  # noqa: E402  pylint: disable=g-import-not-at-top

small_b0.install()  # "b0" here is B0 at a quarter of its depth (small_b0.py says why).

# Two logical CPUs, so MirroredStrategy can be tested on one CPU. This must happen before
# TensorFlow runs any op; the default strategy still uses one device.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from PIL import Image  # noqa: E402  pylint: disable=g-import-not-at-top

from skin_keras.data import pipeline, synthetic  # noqa: E402  pylint: disable=g-import-not-at-top
from skin_keras.model import io as named_io  # noqa: E402  pylint: disable=g-import-not-at-top
from skin_keras.model import record  # noqa: E402  pylint: disable=g-import-not-at-top
from skin_keras.model.builder import build_model  # noqa: E402  pylint: disable=g-import-not-at-top
from skin_keras.model.spec import ModelSpec  # noqa: E402  pylint: disable=g-import-not-at-top
from skin_keras.train import inputs, loop, run_folder  # noqa: E402  pylint: disable=g-import-not-at-top
from skin_keras.train.config import TrainConfig  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
HAM_200PX = SHARED_DATASETS / "ham10000_200px"
CLASSES = ("Basal cell carcinoma", "Melanocytic nevus", "Melanoma")
# Library messages (the scripts print them) reach pytest's caplog at INFO.
logging.getLogger("skin_keras").setLevel(logging.INFO)


# One feature cache for the process's tests: frozen random backbones are seeded alike, so a
# later run on the same images finds their features there (keyed by weights and content).
FEATURE_CACHE = Path(os.environ["SKIN_KERAS_CACHE"]) / "features"


def tiny_config(tmp_path: Path, data: Path, **overrides) -> TrainConfig:
    """A config that trains in seconds: B0 (small_b0.py's), 32 px, random weights, two epochs;
    the backbone trains unless `freeze_layers=True` (then the head trains on cached features:
    a warm run takes seconds, one that trains the whole backbone about ten)."""
    values = dict(data_train=str(data / "train"), data_val=str(data / "val"),
                  save_ret=str(tmp_path / "runs"), feature_cache=str(FEATURE_CACHE),
                  model="b0", weights="none",
                  freeze_layers=False, img_size=32, batch_size=8, epochs=2, optim="Adam",
                  lr=1e-3)
    values.update(overrides)
    return TrainConfig(**values)


def tiny_model(num_classes: int = 3, encoding=None, **overrides):
    """An untrained B0 (32 px, random weights, backbone trainable unless overridden)."""
    spec = dict(model="b0", weights="none", img_size=32, freeze_layers=False)
    spec.update(overrides)
    return build_model(ModelSpec(**spec), num_classes, encoding)


def probabilities(model_or_runner, images, **other_inputs) -> np.ndarray:
    """The probabilities a Keras model or a runner gives for images [B, H, W, 3]."""
    named = {named_io.IMAGE: np.asarray(images, np.float32), **other_inputs}
    if callable(getattr(model_or_runner, "predict", None)):
        return model_or_runner.predict(named, verbose=0)[named_io.PROBABILITIES]
    return model_or_runner(named)[named_io.PROBABILITIES]


def untrained_run_folder(tmp_path: Path, data: Path, **overrides) -> Path:
    """A complete run folder whose weights/best.keras is the model `tiny_config` describes,
    as built: what training writes, without the epochs (seconds instead of a minute)."""
    config = tiny_config(tmp_path, data, **overrides)
    run_data = inputs.read_run_data(config)
    keras.utils.set_random_seed(int(os.environ.get("SKIN_KERAS_TEST_SEED", config.seed)))
    model = build_model(config.model_spec, run_data.train.num_classes, run_data.encoding)
    run_dir = run_folder.new_run_dir(config.save_ret)
    run_folder.write_run_files(run_dir, config, run_data, model, None)
    record.save_model(model, run_dir / "weights" / "best.keras",
                      record.ModelInfo.of(model, run_data.train.class_names))
    return run_dir


def corrupt_files(folder):
    """Files that pass the header check but not TensorFlow's decoder, and one it repairs."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    start = png.find(b"IDAT") + 20
    png[start:start + 20] = b"\x00" * 20  # Corrupt compressed data.
    (folder / "corrupt_idat.png").write_bytes(bytes(png))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    scan = jpeg.find(b"\xff\xda")
    (folder / "header_only.jpg").write_bytes(jpeg[:scan] + b"\xff\xd9")
    damaged = bytearray(jpeg)
    noise = np.random.default_rng(1).integers(0, 255, 50, dtype=np.uint8).tobytes()
    damaged[scan + 200:scan + 250] = noise.replace(b"\xff", b"\x00")
    (folder / "corrupt_scan.jpg").write_bytes(bytes(damaged))
    return folder


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


def config_from_flagfile(path, *overrides: str) -> TrainConfig:
    """What train.py builds from `--flagfile=path` and the flags after it."""
    from absl import flags  # pylint: disable=g-import-not-at-top

    from skin_keras.core import cli  # pylint: disable=g-import-not-at-top

    values = flags.FlagValues()
    cli.define_flags(TrainConfig, flag_values=values)
    values(["train.py", f"--flagfile={path}", *overrides])
    return cli.config_from_flags(TrainConfig, ["train.py"], flag_values=values)


class Killed(Exception):
    """Stands in for a power cut: nothing after it runs, no handler tidies up."""


def kill_at_log_write(monkeypatch, epochs_logged: int) -> None:
    """Makes the run die when it is about to write log.json with `epochs_logged` epochs (1: in
    the first epoch, before any log exists)."""
    from skin_keras.core import atomic  # pylint: disable=g-import-not-at-top

    write_json = atomic.write_json_atomic

    def dies(path, data):
        if Path(path).name == "log.json" and len(data) == epochs_logged:
            raise Killed
        write_json(path, data)

    monkeypatch.setattr(atomic, "write_json_atomic", dies)


def embedded_metadata(content: bytes):
    """The TFLite Metadata of a .tflite file, parsed with the schema's generated classes."""
    from ai_edge_litert import schema_py_generated as schema
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    model = schema.ModelT.InitFromPackedBuf(content, 0)
    entry = next(e for e in model.metadata if e.name.decode() == "TFLITE_METADATA")
    buffer = bytes(model.buffers[entry.buffer].data)
    assert buffer[4:8] == b"M001"  # The schema's file identifier.
    return fb.ModelMetadataT.InitFromPackedBuf(buffer, 0), model


# Measured on 400 HAM10000 200x150 JPEGs with a 64 px B0 trained on them (docs/results_from_scratch.md,
# "MediaPipe against predict.py"): at the model's size MediaPipe's answers equal ours exactly;
# from the full image its resize (bilinear without antialiasing) moves probabilities by median
# 0.024, max 0.50.
MEDIAPIPE_SAME_SIZE_BOUND = 1e-5


def assert_mediapipe_answers_as_predict(tflite: Path, jpegs, folder: Path) -> None:
    """MediaPipe Tasks' ImageClassifier on `tflite` gives predict.py's labels and probabilities
    for `jpegs` resized as the model reads them and saved as PNG (both read the same pixels).
    The labels come from the file: the head compared is the one named by the classes (a
    calibrated model's second is its unknown score)."""
    import mediapipe  # pylint: disable=g-import-not-at-top
    from mediapipe.tasks import python as tasks  # pylint: disable=g-import-not-at-top
    from mediapipe.tasks.python import vision  # pylint: disable=g-import-not-at-top

    from skin_keras.infer import load, predict  # pylint: disable=g-import-not-at-top

    loaded = load.load(tflite)
    pngs = []
    for jpeg in jpegs:
        pixels = pipeline.load_image(str(jpeg), loaded.img_size).numpy()
        pngs.append(folder / f"{Path(jpeg).stem}.png")
        Image.fromarray(np.round(pixels).astype(np.uint8)).save(pngs[-1])
    rows = json.loads(predict.predict_to_folder(predict.PredictConfig(
        model_path=str(tflite), source=tuple(map(str, pngs)),
        output=str(folder / "predicted"))).read_text())
    classifier = vision.ImageClassifier.create_from_options(vision.ImageClassifierOptions(
        base_options=tasks.BaseOptions(model_asset_path=str(tflite))))
    try:
        for file, row in zip(pngs, rows):
            heads = classifier.classify(mediapipe.Image.create_from_file(str(file))).classifications
            head, = [head for head in heads
                     if {c.category_name for c in head.categories} == set(loaded.class_names)]
            assert head.categories[0].category_name == row["label"], file.name
            scores = {c.category_name: c.score for c in head.categories}
            for name, probability in row["probabilities"].items():
                assert abs(scores[name] - probability) <= MEDIAPIPE_SAME_SIZE_BOUND
    finally:
        classifier.close()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """train/ and val/ with three classes of synthetic 48x36 JPEGs (12 and 5 per class)."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    synthetic.write_class_folders(root / "train", 12, CLASSES, size=(48, 36), seed=1)
    synthetic.write_class_folders(root / "val", 5, CLASSES, size=(48, 36), seed=2)
    return root


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory, tiny_dataset) -> Path:
    """A run folder with an untrained 64 px B0 (colour constancy on, so every test that
    predicts, explains or exports with it covers the layer; 64 px, so the last feature map is
    2x2 and a Grad-CAM map can vary across the image). Read only: copy it to change it."""
    return untrained_run_folder(tmp_path_factory.mktemp("untrained"), tiny_dataset,
                                img_size=64, color_constancy="shades_of_gray")


@pytest.fixture(scope="session")
def untrained(untrained_run):
    """`untrained_run` loaded as predict.py loads it (a KerasRunner), once per process."""
    from skin_keras.infer import load  # pylint: disable=g-import-not-at-top

    return load.load(untrained_run)


@pytest.fixture(scope="session")
def calibrated_run(tmp_path_factory, untrained_run) -> Path:
    """`untrained_run` calibrated: a temperature and the feature_distance unknown rule
    (keeping 80% of the validation images)."""
    from skin_keras.workflows import fit_calibration  # pylint: disable=g-import-not-at-top

    run = copy_run(untrained_run, tmp_path_factory.mktemp("calibrated") / "run")
    fit_calibration.calibrate_run(fit_calibration.CalibrateConfig(model_path=str(run),
                                                      unknown_coverage=0.8))
    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_dataset) -> Path:
    """The run folder of one tiny training run (two epochs, a frozen backbone on the images
    every epoch: test_feature_cache compares a cached run with it), for tests about what
    training writes; tests that only read a model use `untrained_run`."""
    config = tiny_config(tmp_path_factory.mktemp("trained"), tiny_dataset, freeze_layers=True,
                         feature_cache="none")
    console = io.StringIO()
    with contextlib.redirect_stdout(console):  # Keras' live bar, as in a terminal.
        run = loop.train_and_evaluate(config, verbose=1)
    (run.parent / "console.txt").write_text(console.getvalue())
    return run


def informative_csv(root: Path) -> Path:
    """metadata.csv for a class-folder set whose site names the class (except every 4th image,
    left blank, and one image without a row)."""
    rows = []
    for index, path in enumerate(sorted(root.glob("*/*/*.jpg"))):
        if path.stem == "v0_0001":
            continue
        site = "" if index % 4 == 0 else f"site {CLASSES.index(path.parent.name)}"
        rows.append([path.stem, str(20 + 10 * CLASSES.index(path.parent.name)),
                     ("male", "female")[index % 2], site])
    rows[1][1] = "abc"  # An age that is not believed (prediction runs it as missing).
    with open(root / "metadata.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "age_approx", "sex", "anatom_site_general"])
        writer.writerows(rows)
    return root / "metadata.csv"


@pytest.fixture(scope="session")
def metadata_data(tmp_path_factory) -> Path:
    """tiny_dataset's images (val files named v*) with metadata.csv, whose sites name the
    classes, and train_metadata.csv, the same without its one unbelievable age."""
    root = tmp_path_factory.mktemp("metadata_data")
    synthetic.write_class_folders(root / "train", 12, CLASSES, size=(48, 36), seed=1)
    synthetic.write_class_folders(root / "val", 5, CLASSES, size=(48, 36), seed=2, prefix="v")
    informative_csv(root)
    rows = list(csv.reader(open(root / "metadata.csv")))
    rows[2][1] = "61"  # Training needs every age believed: a copy without the bad one.
    with open(root / "train_metadata.csv", "w", newline="") as file:
        csv.writer(file).writerows(rows)
    return root


@pytest.fixture
def ham_200px() -> Path:
    if not (HAM_200PX / "ISIC_2019_Training_GroundTruth.csv").exists():
        pytest.skip(f"real images not available: {HAM_200PX} is absent")
    return HAM_200PX


# The longest test files, measured (`pytest --durations=0`, summed per file), longest first:
# handed out first, the two workers of `make test` (pytest-xdist, one file at a time) end
# together instead of one waiting for a long file started last. Only the order changes.
LONGEST_FIRST = ("test_distribute.py", "test_cross_validation.py", "test_calibrate.py",
                 "test_resume.py", "test_metadata_models.py", "test_train.py", "test_export.py",
                 "test_lite_end_to_end.py", "test_predict.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items[:] = sorted(items, key=rank)  # Stable: each file's tests stay in their order.
