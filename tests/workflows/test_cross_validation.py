"""--folds=K: lesion-grouped folds, per-fold resume, out-of-fold figures and the ensemble."""

import csv
import dataclasses
import json
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from skin_keras.core.errors import UserError
from skin_keras.data import folders, folds, synthetic
from skin_keras.data.patient_metadata import MISSING, Record
from skin_keras.export import job
from skin_keras.infer import load
from skin_keras.infer.runner import explainable
from skin_keras.model.layers.temperature import scaled
from skin_keras.train import loop
from skin_keras.workflows import cross_validation, training

from conftest import CLASSES, Killed, embedded_metadata, probabilities, tiny_config


def _folder(labels, names=CLASSES) -> folders.ImageFolder:
    return folders.ImageFolder(Path("/nowhere/train"), tuple(names),
                               tuple(f"/nowhere/train/{i:03d}.jpg" for i in range(len(labels))),
                               np.asarray(labels))


def test_folds_keep_lesions_together_and_stratify(tmp_path):
    data = tmp_path / "data"
    synthetic.write_class_folders(data / "train", 8, CLASSES, size=(24, 24), seed=1)
    train = folders.scan_image_folder(data / "train")
    # split.csv beside train/ (as prepare_isic writes it): images in pairs of one lesion.
    # Saved with a byte-order mark (as spreadsheet programs do): read the same.
    with open(data / "split.csv", "w", newline="", encoding="utf-8-sig") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "class", "lesion_id", "split"])
        for index, path in enumerate(train.paths):
            writer.writerow([Path(path).stem, "", f"L{index // 2}", "train"])
    groups, how = folds.lesion_groups(train)
    assert "lesion_id from" in how and len(np.unique(groups)) == 12
    fold_of = folds.assign_folds(train, groups, 3, seed=0)
    for group in np.unique(groups):
        assert len(set(fold_of[groups == group])) == 1  # A lesion never spans two folds.
    for fold in range(3):
        assert set(train.labels[fold_of == fold]) == {0, 1, 2}
    # Without split.csv every image is its own group, and the run says so.
    (data / "split.csv").unlink()
    assert "every image is its own group" in folds.lesion_groups(train)[1]


def test_folds_that_cannot_hold_every_class_are_refused():
    labels = np.r_[np.zeros(10, int), np.ones(10, int), [2, 2, 2]]
    groups = np.r_[np.arange(20), [20, 20, 21]].astype(str)  # Class 2: two lesions.
    with pytest.raises(UserError, match="'Melanoma' has images of only 2 lesion.*--folds=2"):
        folds.assign_folds(_folder(labels), groups, 3, seed=0)
    with pytest.raises(UserError, match="only 1 lesion: it cannot be in both"):
        folds.assign_folds(_folder(labels), np.r_[groups[:20], ["x"] * 3], 2, 0)


def test_one_fold_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(UserError, match="--folds=1 is no cross-validation"):
        tiny_config(tmp_path, tiny_dataset, folds=1)


@pytest.fixture(scope="module")
def fold_run(metadata_data, tmp_path_factory):
    """A 2-fold run killed in fold 2, then resumed: (run folder, config, what was seen).

    Frozen backbones: members train their heads and metadata branches on cached features
    (computed once: the cache is keyed by file content). Calibrated: the ensemble gets a
    temperature and a max_probability unknown rule, whose score is a second output of its
    exports."""
    tmp_path = tmp_path_factory.mktemp("folds")
    config = tiny_config(tmp_path, metadata_data, folds=2, epochs=1, freeze_layers=True,
                         metadata=str(metadata_data / "train_metadata.csv"), calibrate=True)
    train_and_evaluate = loop.train_and_evaluate

    def killed_in_fold_2(member_config, verbose="auto", run_dir=None):
        if run_dir is not None and run_dir.name == "fold_2":
            raise Killed
        return train_and_evaluate(member_config, verbose, run_dir)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "train_and_evaluate", killed_in_fold_2)
        with pytest.raises(Killed):
            training.run(config, verbose=0)
    run = tmp_path / "runs" / "exp1"
    seen = {"finished before": json.loads((run / "train_params.json").read_text())[
        "cross-validation"]["finished folds"],
            "fold 1 written": (run / "fold_1" / "weights" / "best.keras").stat().st_mtime_ns}
    seen["resumed"] = training.run(dataclasses.replace(config, resume=str(run)), verbose=0)
    return run, config, seen


@pytest.mark.slow
def test_a_fold_run_killed_between_folds_resumes_its_unfinished_folds(fold_run):
    run, _, seen = fold_run
    assert seen["finished before"] == [1] and seen["resumed"] == run
    assert (run / "fold_1" / "weights" / "best.keras").stat().st_mtime_ns == seen[
        "fold 1 written"]  # Kept.
    assert json.loads((run / "train_params.json").read_text())["cross-validation"][
        "finished folds"] == [1, 2]


@pytest.mark.slow
def test_out_of_fold_predictions_are_each_members_on_its_fold(fold_run, metadata_data):
    run, config, _ = fold_run
    # Out of fold: each training image once, predicted by the member that validated on it;
    # that member's figures on its fold are its training log's best epoch.
    with open(run / cross_validation.OOF_FILE, newline="") as file:
        rows = list(csv.DictReader(file))
    assert sorted(Path(row["path"]).name for row in rows) == sorted(
        Path(p).name for p in folders.scan_image_folder(metadata_data / "train").paths)
    metrics = json.loads((run / cross_validation.METRICS_FILE).read_text())
    assert metrics["out of fold"]["balanced accuracy"] == pytest.approx(
        sk_metrics.balanced_accuracy_score([row["class"] for row in rows],
                                           [row["label"] for row in rows]))
    for member in metrics["members"]:
        log = json.loads((run / f"fold_{member['fold']}" / "log.json").read_text())
        assert member["on its fold"]["balanced accuracy"] == pytest.approx(
            log["epoch:1"]["valid info"]["balanced accuracy"])
        fold_rows = [row for row in rows if row["fold"] == str(member["fold"])]
        assert len(fold_rows) == len(folders.scan_image_folder(
            run / "folds" / f"fold_{member['fold']}" / "val").paths)

    # The metadata branch trained on cached features (its zero-initialised bias moved).
    member = keras.models.load_model(run / "fold_1" / "weights" / "last.keras")
    assert np.abs(member.get_layer("metadata_dense_1").bias.numpy()).max() > 0
    assert any(Path(config.feature_cache).iterdir())


@pytest.mark.slow
def test_the_ensemble_is_the_mean_of_its_members_in_keras_and_exported(fold_run, metadata_data,
                                                                       tmp_path):
    run, _, _ = fold_run
    ensemble = load.load(run)
    members = [load.load(run / f"fold_{fold}") for fold in (1, 2)]
    assert "metadata" in ensemble.inputs and ensemble.unknown.score == "max_probability"
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    records = [Record(25.0, "male", "site 1"), MISSING, Record(None, "female", "site 2")]
    batch = {"image": images, "records": records}
    answer = ensemble(batch)
    expected, expected_scores = answer["probabilities"], answer["unknown_score"]
    np.testing.assert_allclose(expected, scaled(np.mean(
        [probabilities(m, images, records=records) for m in members], axis=0),
        ensemble.temperature), atol=1e-6)
    np.testing.assert_allclose(expected_scores, expected.max(axis=1), atol=1e-6)
    report = job.export(job.ExportConfig(
        model_path=str(run), data_val=str(metadata_data / "val"), output=str(tmp_path / "x"),
        formats=("tflite_fp32",), parity_images=6))
    for entry in report["artifacts"].values():
        assert entry["top1 agreement"] == 1.0 and entry["unknown agreement"] == 1.0
    # The TFLite file describes both inputs and both outputs, probabilities first (MediaPipe
    # reports outputs as heads in that order).
    metadata, flatbuffer = embedded_metadata(
        (tmp_path / "x" / "tflite_fp32" / "skin_fp32.tflite").read_bytes())
    subgraph = metadata.subgraphMetadata[0]
    assert [t.name.decode() for t in subgraph.inputTensorMetadata] == ["image", "metadata"]
    assert [t.name.decode() for t in subgraph.outputTensorMetadata] == ["probability",
                                                                        "unknown_score"]
    graph = flatbuffer.subgraphs[0]
    assert [len(graph.tensors[i].shape) for i in graph.outputs] == [2, 1]
    # (ONNX with two inputs and the score output: test_patient_metadata's export test.)
    # (A SavedModel with a metadata input and a score output: test_metadata_models.)
    for path in (tmp_path / "x" / "tflite_fp32" / "skin_fp32.tflite",):
        exported = load.load(path)
        assert exported.unknown == ensemble.unknown
        answer = exported(batch)
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
        np.testing.assert_allclose(answer["unknown_score"], expected_scores, atol=1e-5)
    # At 32 px the last feature map is 1x1 and XNNPACK cannot resize the graph to a batch of
    # 3: the runner fell back to one image at a time, with the same answers.
    assert exported.batch_one_only
    with pytest.raises(UserError, match="is an ensemble: Grad-CAM"):
        explainable(ensemble)


@pytest.mark.slow
def test_leave_one_clinic_out_trains_one_member_per_clinic_on_real_images(ham_200px, tmp_path):
    # Three classes, three of HAM10000's clinics, a few lesions each; prepare_isic --groups
    # writes the same split.csv columns.
    with open(ham_200px / "acquisition_centers.csv", newline="") as file:
        center_of = {row["image"]: row["center"] for row in csv.DictReader(file)}
    with open(ham_200px / "ISIC_2019_Training_Metadata.csv", newline="") as file:
        lesion_of = {row["image"]: row["lesion_id"] for row in csv.DictReader(file)}
    with open(ham_200px / "ISIC_2019_Training_GroundTruth.csv", newline="") as file:
        truth = list(csv.DictReader(file))
    rows, data = [], tmp_path / "data"
    for code, name in (("NV", "Nevus"), ("MEL", "Melanoma"), ("BKL", "Keratosis")):
        for center in ("vidir_modern", "rosendahl", "vidir_molemax"):
            chosen = [r["image"] for r in truth if float(r[code]) > 0.5
                      and center_of[r["image"]] == center][:4]
            for index, image in enumerate(chosen):
                split = "val" if index == 3 else "train"
                (data / split / name).mkdir(parents=True, exist_ok=True)
                (data / split / name / f"{image}.jpg").symlink_to(
                    ham_200px / "ISIC_2019_Training_Input" / f"{image}.jpg")
                rows.append([image, name, lesion_of[image], split, center])
    with open(data / "split.csv", "w", newline="") as file:
        csv.writer(file).writerows([["image", "class", "lesion_id", "split", "center"], *rows])
    config = tiny_config(tmp_path, data, folds=3, fold_by="center", epochs=1,
                         freeze_layers=True)
    with pytest.raises(UserError, match="have 3 center values .*: use --folds=3"):
        training.run(dataclasses.replace(config, folds=2), verbose=0)
    with pytest.raises(UserError, match="--fold_by=center needs --folds"):
        training.run(dataclasses.replace(config, folds=0), verbose=0)
    run = training.run(config, verbose=0)
    with open(run / folds.FOLDS_FILE, newline="") as file:
        fold_of = {Path(row["path"]).stem: int(row["fold"]) for row in csv.DictReader(file)}
    names = sorted({"vidir_modern", "rosendahl", "vidir_molemax"})
    lesion_fold = {}
    for image, fold in fold_of.items():  # A lesion whole in one fold, mostly its own clinic's.
        assert lesion_fold.setdefault(lesion_of[image], fold) == fold
    assert sum(names[fold - 1] == center_of[image] for image, fold in fold_of.items()) >= 25
    grouping = json.loads((run / "train_params.json").read_text())["cross-validation"]["grouping"]
    assert grouping.startswith("leave one center out: " + ", ".join(
        f"fold {i + 1} = {name}" for i, name in enumerate(names)))
    assert [p.name for p in sorted(run.glob("fold_*/weights/best.keras"))] == ["best.keras"] * 3
    with open(run / cross_validation.OOF_FILE, newline="") as file:
        assert len(list(csv.DictReader(file))) == len(fold_of) == 27


def test_a_clinic_without_some_classes_is_named_and_case_variants_are_one_clinic(tmp_path):
    # Reliability 2026-12-07 C8 and S4: the third clinic has no Melanoma to validate on.
    rows = [("a1", 0, "North"), ("a2", 1, "north "), ("b1", 0, "South"), ("b2", 1, "south"),
            ("c1", 0, "west"), ("c2", 0, "WEST")]
    with open(tmp_path / "split.csv", "w", newline="") as file:
        csv.writer(file).writerows([["image", "center"], *[(i, c) for i, _, c in rows]])
    train = types.SimpleNamespace(
        root=str(tmp_path / "train"), paths=[f"{tmp_path}/train/x/{i}.jpg" for i, _, _ in rows],
        labels=np.array([label for _, label, _ in rows]), class_names=["Nevus", "Melanoma"],
        num_classes=2)
    fold_of, grouping = folds.group_folds(train, np.array([i for i, _, _ in rows]),
                                                     "center", 3)
    assert list(fold_of) == [0, 0, 1, 1, 2, 2]
    assert "has no validation image of Melanoma" in grouping and grouping.count("no valid") == 1
    assert "fold 3 (WEST) has no validation image" in grouping
