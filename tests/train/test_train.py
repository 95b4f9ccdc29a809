"""End to end: train_and_evaluate and train.py write a complete, truthful run folder."""

import csv
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from skin_keras.core import layout
from skin_keras.core.errors import UserError
from skin_keras.data import folders, isic, pipeline
from skin_keras.model import metrics, parts
from skin_keras.train import loop, run_folder
from skin_keras.train import session as sessions

from conftest import REPO, config_from_flagfile, tiny_config


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_run_folder_has_every_artifact(trained_run, tiny_dataset):
    class_names = ["Basal cell carcinoma", "Melanocytic nevus", "Melanoma"]
    assert trained_run.name == "exp1"
    assert read_json(trained_run / "class_indices.json") == {
        "0": class_names[0], "1": class_names[1], "2": class_names[2]}
    assert layout.read_class_indices(trained_run / "class_indices.json") == class_names

    params = read_json(trained_run / "train_params.json")
    assert params["train parameters"]["model"] == "b0"
    assert params["train parameters"]["img_size"] == 32
    assert params["train parameters"]["batch_norm"] == "fused"  # The BatchNorm kernel chosen.
    assert params["dataset"]["trainset number"] == 36
    assert params["dataset"]["valset number"] == 15
    assert params["dataset"]["number classes"] == 3
    model_info = params["model"]
    assert model_info["train parameters"] < model_info["total parameters"]
    assert model_info["flops"] > 1e7

    log = read_json(trained_run / "log.json")
    assert list(log) == ["epoch:1", "epoch:2"]
    for entry in log.values():
        assert set(entry) == {"train info", "valid info", "lr"}
        assert entry["lr"] > 0
        for split in ("train info", "valid info"):
            info = entry[split]
            assert list(info) == ["accuracy", "balanced accuracy", *class_names,
                                  "mean precision", "mean recall", "mean specificity",
                                  "mean f1 score", "loss"]
            for name in class_names:
                assert set(info[name]) == {"Precision", "Recall", "Specificity", "F1 score"}
    assert log["epoch:2"]["lr"] < log["epoch:1"]["lr"]  # Cosine decay.

    for png in ("confusion_matrix_train.png", "confusion_matrix_val.png", "curves.png"):
        assert (trained_run / png).read_bytes()[:4] == b"\x89PNG", png
    assert list((trained_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert not [p for p in trained_run.rglob(".*") if p.is_file()], "temporary files left behind"
    # Readable by others as open() would make them (the umask's permissions, not 0600).
    umask = os.umask(0)
    os.umask(umask)
    for name in ("weights/best.keras", "weights/last.keras", "log.json", "flags.cfg",
                 "class_indices.json", "curves.png"):
        assert (trained_run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.slow
def test_flags_cfg_replays_the_run(trained_run, monkeypatch, tmp_path):
    saved = read_json(trained_run / "train_params.json")["train parameters"]
    monkeypatch.chdir(tmp_path)  # Paths are absolute: the flags replay from anywhere.
    replayed = config_from_flagfile(trained_run / "flags.cfg")
    assert replayed.to_dict() == saved
    assert replayed.data_train.startswith("/") and replayed.save_ret.startswith("/")


@pytest.mark.slow
def test_best_weights_reproduce_the_logged_validation_figures(trained_run, tiny_dataset):
    model = keras.models.load_model(trained_run / "weights" / "best.keras")
    val = folders.scan_image_folder(tiny_dataset / "val")
    dataset = pipeline.make_dataset(val.paths, None, val.num_classes,
                                    img_size=parts.image_size(model), batch_size=4)
    probabilities = model.predict(dataset, verbose=0)["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    matrix = metrics.confusion_matrix(val.labels, probabilities.argmax(axis=1), val.num_classes)
    log = read_json(trained_run / "log.json")
    params = read_json(trained_run / "train_params.json")
    monitored = [entry["valid info"]["balanced accuracy"] for entry in log.values()]
    best_epoch = int(np.argmax(monitored)) + 1  # The first epoch with the highest value.
    logged = dict(log[f"epoch:{best_epoch}"]["valid info"])
    logged.pop("loss")
    assert metrics.classification_info(matrix, val.class_names) == logged
    assert params["train parameters"]["monitor"] == "val_balanced_accuracy"


@pytest.mark.slow
def test_last_weights_load_and_predict_raw_images(trained_run):
    model = keras.models.load_model(trained_run / "weights" / "last.keras")
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probabilities = model.predict({"image": images}, verbose=0)["probabilities"]
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_saved_model_opens_in_plain_keras(trained_run):
    # Issue 39: keras.models.load_model in a fresh Python failed on the training metric kept
    # in the compile configuration ("Could not locate class 'ConfusionMatrixMetric'").
    code = ("import sys, keras\n"
            "for name in ('best.keras', 'last.keras'):\n"
            "    model = keras.models.load_model(sys.argv[1] + '/weights/' + name)\n"
            "    assert model.optimizer is not None and 'skin_keras' not in sys.modules\n"
            "print(model.name)")
    result = subprocess.run([sys.executable, "-c", code, str(trained_run)], capture_output=True,
                            text=True, check=False, cwd="/")
    assert result.returncode == 0, result.stderr[-1500:]


def test_run_folders_are_numbered_and_never_reused(tmp_path):
    (tmp_path / "exp7").mkdir()
    (tmp_path / "notes").mkdir()
    assert run_folder.new_run_dir(tmp_path).name == "exp8"
    assert run_folder.new_run_dir(tmp_path).name == "exp9"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        run_folder.new_run_dir(tmp_path / "file")


def run_train_script(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("make_args, message", [
    (lambda tmp, data: [f"--data_train={tmp / 'missing'}"], r"dataset folder .*missing does not exist"),
    (lambda tmp, data: [f"--data_train={data / 'train'}", f"--data_val={tmp / 'val'}"],
     r"classes in .*val differ from the model's classes: missing Melanoma"),
    (lambda tmp, data: ["--model=xl"], r"flag --model=xl: value should be one of"),
])
def test_train_script_user_errors_are_one_line(tmp_path, tiny_dataset, make_args, message):
    shutil.copytree(tiny_dataset / "val", tmp_path / "val")
    shutil.rmtree(tmp_path / "val" / "Melanoma")
    result = run_train_script(*make_args(tmp_path, tiny_dataset), f"--save_ret={tmp_path / 'runs'}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert error_lines and __import__("re").search(message, error_lines[-1]), result.stderr
    assert not (tmp_path / "runs").exists(), "a failed start must not leave a run folder"


def test_the_progress_bar_knows_the_epoch_length_from_the_first_epoch(trained_run):
    # The live bar of a terminal (verbose=1) on the file pipeline (no feature cache), whose
    # length TensorFlow cannot know: 36 images in batches of 8 are 5 steps, not "1/Unknown".
    shown = (trained_run.parent / "console.txt").read_text()
    assert "Unknown" not in shown and "5/5" in shown


@pytest.mark.slow
def test_jit_compile_on_trains_with_xla(tmp_path, tiny_dataset, monkeypatch):
    # The frozen recipe: the head, the model fit() runs, is what XLA compiles (seconds; the
    # whole B0 takes a minute and a half to compile on this CPU, the same code path).
    compiled = []
    original = sessions.Session.compile

    def spy(session, finetune=False, models=None):
        original(session, finetune, models)
        compiled.extend(m for m in models or (session.model, session.train_model, session.head)
                        if m is not None)

    monkeypatch.setattr(sessions.Session, "compile", spy)
    run = loop.train_and_evaluate(tiny_config(tmp_path, tiny_dataset, epochs=2,
                                              freeze_layers=True, jit_compile="on"), verbose=0)
    assert compiled and all(model.jit_compile is True for model in compiled)
    log = read_json(run / "log.json")
    assert list(log) == ["epoch:1", "epoch:2"]
    assert all(np.isfinite(entry["train info"]["loss"]) for entry in log.values())
    assert read_json(run / "train_params.json")["train parameters"]["jit_compile"] == "on"


@pytest.mark.slow
def test_training_on_real_dermoscopy_images(tmp_path, ham_200px):
    """A few real HAM10000 images per class, lesion-disjoint train/val, one short epoch."""
    ground_truth = ham_200px / "ISIC_2019_Training_GroundTruth.csv"
    with open(ham_200px / "ISIC_2019_Training_Metadata.csv", newline="") as file:
        lesion = {row["image"]: row["lesion_id"] or row["image"] for row in csv.DictReader(file)}
    taken = {}
    with open(ground_truth, newline="") as file:
        for row in csv.DictReader(file):
            code = next(c for c in isic.CLASS_NAMES if float(row[c]) == 1.0) \
                if any(float(row[c]) == 1.0 for c in isic.CLASS_NAMES) else None
            if code is None:
                continue
            images = taken.setdefault(code, {})
            if len(images) < 6 and lesion[row["image"]] not in images:
                images[lesion[row["image"]]] = row["image"]
    for code, images in taken.items():
        for index, image in enumerate(images.values()):
            split = "val" if index < 2 else "train"
            target = tmp_path / "data" / split / isic.CLASS_NAMES[code]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(ham_200px / "ISIC_2019_Training_Input" / f"{image}.jpg", target)
    config = tiny_config(tmp_path, tmp_path / "data", epochs=1, img_size=48, freeze_layers=True)
    run = loop.train_and_evaluate(config, verbose=0)
    params = read_json(run / "train_params.json")
    assert params["dataset"] == {**params["dataset"], "trainset number": 32, "valset number": 16,
                                 "number classes": 8}
    assert list(read_json(run / "log.json")) == ["epoch:1"]
    assert layout.read_class_indices(run / "class_indices.json") == sorted(isic.CLASS_NAMES.values())


@pytest.mark.parametrize("name", ["efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l",
                                  "efficientnetv2_b0", "demo", "robust"])
def test_every_config_file_parses_into_a_valid_config(name, monkeypatch):
    monkeypatch.chdir(REPO)  # Flagfiles include configs/base.cfg relative to the repository.
    config = config_from_flagfile(f"configs/{name}.cfg")
    expected_model = {"demo": "b0", "robust": "s"}.get(name) or name.split("_")[1]
    assert config.model == expected_model
    assert config.weights == ("none" if name == "demo" else "imagenet")
    if name == "robust":
        assert config.color_constancy == "shades_of_gray" and config.vignette_prob > 0
        assert config.feature_cache_blocker == "--crop_scale changes the images every epoch"
