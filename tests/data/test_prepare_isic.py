"""ISIC download -> lesion-grouped stratified train/val folders, and the audit of bad input."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from skin_keras.core.errors import UserError
from skin_keras.data import audit_report, folders, isic, placing, synthetic

from conftest import REPO

CODES = list(isic.CLASS_NAMES)
HEADER = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def write_isic_layout(root, rows, lesions):
    """rows: (image, [codes]) written as one-hot; lesions: image -> lesion id ('' for none)."""
    (root / "ISIC_2019_Training_Input").mkdir(parents=True, exist_ok=True)
    with open(root / "gt.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(HEADER)
        for image, codes in rows:
            writer.writerow([image] + ["1.0" if c in codes else "0.0" for c in HEADER[1:]])
    with open(root / "meta.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
        for image, lesion in lesions.items():
            writer.writerow([image, "50.0", "back", lesion, "male"])


@pytest.fixture
def download(tmp_path):
    """A small ISIC-layout folder with every kind of bad row and bad file.

    Per class 8 lesions with 1-3 images each; plus: a row without label, a row with two labels,
    an UNK row, a row whose file is missing, a file not in the CSV, a truncated JPEG, a pair of
    byte-identical files under different lesion ids, and images without lesion id.
    """
    root = tmp_path / "isic"
    inputs = root / "ISIC_2019_Training_Input"
    rng = np.random.default_rng(0)
    rows, lesions, number = [], {}, 0
    for label, code in enumerate(CODES):
        for lesion in range(8):
            for _ in range(1 + lesion % 3):
                image = f"ISIC_{number:07d}"
                number += 1
                rows.append((image, [code]))
                lesions[image] = f"IL_{code}_{lesion}" if lesion < 7 else ""
                inputs.mkdir(parents=True, exist_ok=True)
                synthetic.lesion_image(label, 8, (40 + lesion, 30), rng).save(
                    inputs / f"{image}.jpg")
    bad = {"ISIC_9000001": [], "ISIC_9000002": ["MEL", "NV"], "ISIC_9000003": ["UNK"],
           "ISIC_9000004": ["NV"], "ISIC_9000005": ["BCC"]}
    for image, codes in bad.items():
        rows.append((image, codes))
        lesions[image] = "IL_bad"
    for image in ("ISIC_9000001", "ISIC_9000002", "ISIC_9000003"):
        shutil.copy(inputs / "ISIC_0000000.jpg", inputs / f"{image}.jpg")
    data = (inputs / "ISIC_0000001.jpg").read_bytes()
    (inputs / "ISIC_9000005.jpg").write_bytes(data[:len(data) // 2])  # Truncated.
    shutil.copy(inputs / "ISIC_0000002.jpg", inputs / "ISIC_9000099.jpg")  # Not in the CSV.
    # ISIC_9000006 (NV) is byte-identical to ISIC_0000010 (AK, another lesion): a duplicate.
    rows.append(("ISIC_9000006", ["NV"]))
    lesions["ISIC_9000006"] = "IL_dup"
    shutil.copy(inputs / "ISIC_0000010.jpg", inputs / "ISIC_9000006.jpg")
    (inputs / "notes.txt").write_text("ignored")
    write_isic_layout(root, rows, lesions)
    return root


def config_for(download, out_dir, **overrides):
    values = dict(images=str(download / "ISIC_2019_Training_Input"),
                  ground_truth=str(download / "gt.csv"), metadata=str(download / "meta.csv"),
                  out_dir=str(out_dir), val_fraction=0.3)
    values.update(overrides)
    return isic.PrepareConfig(**values)


def read_split(out_dir):
    with open(out_dir / "split.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_audit_reports_every_bad_row_and_file_and_leaves_them_out(download, tmp_path):
    audit = isic.prepare(config_for(download, tmp_path / "data"))
    assert audit["no label"] == ["ISIC_9000001"]
    assert audit["several labels"] == ["ISIC_9000002"]
    assert audit["unk"] == ["ISIC_9000003"]
    assert audit["missing on disk"] == ["ISIC_9000004"]
    assert audit["not in csv"] == ["ISIC_9000099"]
    assert [item["image"] for item in audit["unreadable"]] == ["ISIC_9000005"]
    assert audit["unreadable"][0]["reason"]  # Cut in its header: not even readable.
    assert ["ISIC_0000010", "ISIC_9000006"] in audit["duplicates"]
    assert audit["images without lesion id"] == 8 * 2  # Lesion 7 of each class has 2 images.
    assert audit["image size"] == {"min": [40, 30], "max": [47, 30]}
    images = {row["image"] for row in read_split(tmp_path / "data")}
    assert not images & {"ISIC_9000001", "ISIC_9000002", "ISIC_9000003", "ISIC_9000004",
                         "ISIC_9000005", "ISIC_9000099"}
    assert audit["counts"]["total"]["train"] + audit["counts"]["total"]["val"] == len(images)
    assert json.loads((tmp_path / "data" / "audit.json").read_text()) == audit
    report = audit_report.describe_audit(audit)
    for image in ("ISIC_9000001", "ISIC_9000002", "ISIC_9000003", "ISIC_9000004", "ISIC_9000005"):
        assert image in report


def test_lesions_and_duplicates_stay_on_one_side_and_classes_are_stratified(download, tmp_path):
    isic.prepare(config_for(download, tmp_path / "data"))
    rows = read_split(tmp_path / "data")
    sides = {}
    for row in rows:
        if row["lesion_id"]:
            sides.setdefault(row["lesion_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())
    split_of = {row["image"]: row["split"] for row in rows}
    assert split_of["ISIC_0000010"] == split_of["ISIC_9000006"]
    for name in isic.CLASS_NAMES.values():
        in_class = [row for row in rows if row["class"] == name]
        share = sum(row["split"] == "val" for row in in_class) / len(in_class)
        assert abs(share - 0.3) <= 0.15, (name, share)  # 8 groups of 1-3: as close as they allow.


def test_class_folders_match_split_csv_and_train_py_accepts_them(download, tmp_path):
    isic.prepare(config_for(download, tmp_path / "data"))
    rows = read_split(tmp_path / "data")
    train = folders.scan_image_folder(tmp_path / "data" / "train")
    val = folders.scan_image_folder(tmp_path / "data" / "val", class_names=train.class_names)
    assert train.class_names == tuple(sorted(isic.CLASS_NAMES.values()))
    assert len(train.paths) == sum(row["split"] == "train" for row in rows)
    assert len(val.paths) == sum(row["split"] == "val" for row in rows)
    assert not train.bad_files and not val.bad_files


def test_split_is_deterministic_for_a_seed(download, tmp_path):
    first = isic.prepare(config_for(download, tmp_path / "a", seed=3))
    second = isic.prepare(config_for(download, tmp_path / "b", seed=3))
    other = isic.prepare(config_for(download, tmp_path / "c", seed=4))
    assert read_split(tmp_path / "a") == read_split(tmp_path / "b")
    assert read_split(tmp_path / "a") != read_split(tmp_path / "c")
    assert first["counts"] == second["counts"] and other["counts"]


def test_kfold_folds_partition_the_images_by_lesion(download, tmp_path):
    val_sets = []
    for fold in range(3):
        isic.prepare(config_for(download, tmp_path / f"f{fold}", folds=3, fold=fold))
        rows = read_split(tmp_path / f"f{fold}")
        val_sets.append({row["image"] for row in rows if row["split"] == "val"})
        lesions = {}
        for row in rows:
            if row["lesion_id"]:
                lesions.setdefault(row["lesion_id"], set()).add(row["split"])
        assert all(len(s) == 1 for s in lesions.values())
    assert not (val_sets[0] & val_sets[1] or val_sets[0] & val_sets[2] or val_sets[1] & val_sets[2])
    assert len(set.union(*val_sets)) == len(rows)


def test_files_are_hard_linked_by_default_then_symlinked_then_copied(download, tmp_path,
                                                                     monkeypatch):
    audit = isic.prepare(config_for(download, tmp_path / "hard"))
    assert set(audit["files"]) == {"hardlink"}
    linked = next((tmp_path / "hard" / "train").rglob("*.jpg"))
    source = download / "ISIC_2019_Training_Input" / linked.name
    assert os.path.samefile(linked, source)

    def no_link(*args):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    audit = isic.prepare(config_for(download, tmp_path / "sym"))
    assert set(audit["files"]) == {"symlink"}
    assert next((tmp_path / "sym" / "val").rglob("*.jpg")).is_symlink()
    monkeypatch.setattr(os, "symlink", no_link)
    audit = isic.prepare(config_for(download, tmp_path / "copy"))
    assert set(audit["files"]) == {"copy"}
    copied = next((tmp_path / "copy" / "val").rglob("*.jpg"))
    assert not copied.is_symlink() and os.stat(copied).st_nlink == 1


def test_resize_writes_smaller_jpegs(download, tmp_path):
    audit = isic.prepare(config_for(download, tmp_path / "small", resize=32, jpeg_quality=80))
    assert audit["files"] == {"resized": audit["counts"]["total"]["train"]
                              + audit["counts"]["total"]["val"]}
    for path in (tmp_path / "small").rglob("*.jpg"):
        with Image.open(path) as image:
            assert max(image.size) == 32 and image.format == "JPEG"
            assert image.size[0] > image.size[1]  # Aspect ratio kept.
    # Another size into the same folder is other files, not "already there".
    with pytest.raises(UserError, match=r"already holds files made another way "
                                        r"\(--resize=32, --jpeg_quality=80\); pass --overwrite"):
        isic.prepare(config_for(download, tmp_path / "small", resize=40))
    isic.prepare(config_for(download, tmp_path / "small", resize=40, overwrite=True))
    assert max(max(Image.open(p).size) for p in (tmp_path / "small").rglob("*.jpg")) == 40


def test_rerun_fills_in_the_same_split_and_refuses_a_different_one(download, tmp_path):
    out_dir = tmp_path / "data"
    isic.prepare(config_for(download, out_dir))
    removed = next((out_dir / "train").rglob("*.jpg"))
    removed.unlink()
    audit = isic.prepare(config_for(download, out_dir))
    assert removed.exists() and audit["files"]["hardlink"] == 1
    with pytest.raises(UserError, match="already holds a different split.*--overwrite"):
        isic.prepare(config_for(download, out_dir, seed=1))
    isic.prepare(config_for(download, out_dir, seed=1, overwrite=True))
    images = {p.stem for p in out_dir.rglob("*.jpg")}
    assert images == {row["image"] for row in read_split(out_dir)}


def test_seed_names_call_nevi_none_of_the_above(download, tmp_path):
    isic.prepare(config_for(download, tmp_path / "data", seed_names=True))
    assert (tmp_path / "data" / "train" / "None of the above").is_dir()
    assert not (tmp_path / "data" / "train" / "Melanocytic nevus").exists()


@pytest.mark.parametrize("change, message", [
    (lambda root: (root / "gt.csv").write_text("image,MEL,NV\nISIC_1,1.0,0.0\n"),
     "gt.csv lacks column\\(s\\) AK, BCC, BKL, DF, SCC, VASC"),
    (lambda root: (root / "meta.csv").write_text("image,age\n"), "meta.csv lacks column\\(s\\) lesion_id"),
    (lambda root: (root / "gt.csv").unlink(), "gt.csv does not exist"),
    (lambda root: shutil.rmtree(root / "ISIC_2019_Training_Input"), "images folder .* does not exist"),
])
def test_bad_inputs_are_one_line_errors(download, tmp_path, change, message):
    change(download)
    with pytest.raises(UserError, match=message) as error:
        isic.prepare(config_for(download, tmp_path / "data"))
    assert "\n" not in str(error.value)


def test_command_line_prints_the_table_and_errors_in_one_line(download, tmp_path):
    command = [sys.executable, "-m", "skin_keras.prepare_isic",
               f"--images={download / 'ISIC_2019_Training_Input'}",
               f"--ground_truth={download / 'gt.csv'}", f"--metadata={download / 'meta.csv'}",
               f"--out_dir={tmp_path / 'data'}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "Melanoma" in result.stdout and "val share" in result.stdout
    assert "left out, unreadable: ISIC_9000005" in result.stdout
    result = subprocess.run(command + ["--seed=9"], cwd=REPO, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("prepare_isic.py: error: ")


def test_real_ham10000_split(ham_200px, tmp_path):
    audit = isic.prepare(isic.PrepareConfig(
        images=str(ham_200px / "ISIC_2019_Training_Input"),
        ground_truth=str(ham_200px / "ISIC_2019_Training_GroundTruth.csv"),
        metadata=str(ham_200px / "ISIC_2019_Training_Metadata.csv"),
        out_dir=str(tmp_path / "data"), val_fraction=0.3))
    rows = read_split(tmp_path / "data")
    assert len(rows) == audit["rows in csv"] == 9703
    lesions = {}
    for row in rows:
        lesions.setdefault(row["lesion_id"] or row["image"], set()).add(row["split"])
    assert all(len(sides) == 1 for sides in lesions.values())
    for name, count in audit["counts"].items():
        assert abs(count["val share"] - 0.3) <= 0.02, (name, count)
    assert sorted(audit["duplicates"]) == [["ISIC_0024366", "ISIC_0029861"],
                                           ["ISIC_0024777", "ISIC_0029938"]]
    split_of = {row["image"]: row["split"] for row in rows}
    for first, second in audit["duplicates"]:
        assert split_of[first] == split_of[second]
    train = folders.scan_image_folder(tmp_path / "data" / "train", check=False)
    folders.scan_image_folder(tmp_path / "data" / "val", class_names=train.class_names, check=False)
    # metadata.csv: one row per placed image, the cells of ISIC's metadata CSV.
    with open(ham_200px / "ISIC_2019_Training_Metadata.csv", newline="") as file:
        source = {row["image"]: row for row in csv.DictReader(file)}
    with open(tmp_path / "data" / "metadata.csv", newline="") as file:
        written = list(csv.DictReader(file))
    assert sorted(row["image"] for row in written) == sorted(split_of)
    assert all(row[column] == source[row["image"]][column] for row in written
               for column in ("age_approx", "sex", "anatom_site_general"))
    assert audit["metadata missing"] == {  # This copy writes "unknown" where HAM has no value.
        column: sum(source[image][column] in ("", "unknown") for image in split_of)
        for column in ("age_approx", "sex", "anatom_site_general")}


def test_an_interrupted_run_is_finished_by_running_it_again(download, tmp_path, monkeypatch):
    out_dir = tmp_path / "data"
    placed = []
    real_place = placing.place_file

    def killed_after_five(source, target, mode):
        if len(placed) == 5:
            raise KeyboardInterrupt  # Stands in for a kill while files are being placed.
        placed.append(target)
        return real_place(source, target, mode)

    monkeypatch.setattr(placing, "place_file", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        isic.prepare(config_for(download, out_dir))
    monkeypatch.undo()
    assert (out_dir / "split.csv").exists()  # Written before any file was placed.
    audit = isic.prepare(config_for(download, out_dir))  # The same command again.
    assert audit["files"]["already there"] == 5
    images = {p.stem for p in out_dir.rglob("*.jpg")}
    assert images == {row["image"] for row in read_split(out_dir)}


def test_malformed_rows_go_to_the_audit_by_line_number(download, tmp_path):
    with open(download / "gt.csv", "a") as file:
        file.write("ISIC_0024306,0.0\n")  # A short row.
        file.write(",1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n")  # No image name.
    with open(download / "meta.csv", "a") as file:
        file.write("ISIC_0000001,50.0\n")  # A short metadata row.
        file.write("ISIC_0000002,50.0,lower extremity, left leg,HAM_1,male\n")  # A long one.
    lines = len((download / "gt.csv").read_text().splitlines())
    audit = isic.prepare(config_for(download, tmp_path / "data"))
    assert audit["malformed rows"][:2] == [
        {"file": "gt.csv", "line": lines - 1, "reason": "too few fields (no AK, BCC, BKL, DF, "
                                                       "NV, SCC, VASC)"},
        {"file": "gt.csv", "line": lines, "reason": "no image name"}]
    assert audit["malformed rows"][2]["file"] == "meta.csv"
    assert audit["malformed rows"][2]["reason"] == "too few fields (no lesion_id)"
    assert audit["malformed rows"][3]["reason"].startswith("too many fields (6 for 5 columns")
    lesions = {row["image"]: row["lesion_id"] for row in read_split(tmp_path / "data")}
    assert lesions["ISIC_0000002"] == "IL_AK_1" and "left leg" not in lesions.values()
    assert f"malformed row: gt.csv line {lines - 1}" in audit_report.describe_audit(audit)


def test_a_csv_that_is_not_utf8_is_one_clear_line(download, tmp_path):
    with open(download / "gt.csv", "ab") as file:
        file.write("ISIC_9999999,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0 caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"gt.csv is not UTF-8 text \(byte 0xe9") as error:
        isic.prepare(config_for(download, tmp_path / "data"))
    assert "\n" not in str(error.value)


def test_seeds_numpy_cannot_take_are_refused(download, tmp_path):
    from skin_keras.data import ood_synthesis  # pylint: disable=g-import-not-at-top

    for make in (lambda seed: config_for(download, tmp_path / "d", seed=seed),
                 lambda seed: ood_synthesis.OodConfig(output=str(tmp_path / "o"), seed=seed)):
        for seed in (-1, 2**32):
            with pytest.raises(UserError, match=f"--seed={seed} is out of range"):
                make(seed)


def test_a_held_out_clinic_is_the_whole_test_set_and_nothing_else(ham_200px, tmp_path):
    centers = ham_200px / "acquisition_centers.csv"
    out = tmp_path / "data"
    audit = isic.prepare(isic.PrepareConfig(
        images=str(ham_200px / "ISIC_2019_Training_Input"),
        ground_truth=str(ham_200px / "ISIC_2019_Training_GroundTruth.csv"),
        metadata=str(ham_200px / "ISIC_2019_Training_Metadata.csv"), out_dir=str(out),
        groups=str(centers), holdout_group=("center=rosendahl",)))
    with open(centers, newline="") as file:
        center_of = {row["image"]: row["center"] for row in csv.DictReader(file)}
    rows = read_split(out)
    assert all(row["center"] == center_of[row["image"]] for row in rows)  # Carried along.
    test = {row["image"] for row in rows if row["split"] == "test"}
    assert test == {image for image, center in center_of.items() if center == "rosendahl"}
    assert {p.stem for p in (out / "test").rglob("*.jpg")} == test
    placed = {p.stem for name in ("train", "val") for p in (out / name).rglob("*.jpg")}
    assert placed and not placed & test
    lesions = {}
    for row in rows:
        lesions.setdefault(row["lesion_id"] or row["image"], set()).add(row["split"])
    assert all(len(sides) == 1 for sides in lesions.values())
    assert audit["counts"]["total"]["test"] == len(test) == 2134
    assert "test: the held-out group(s) center=rosendahl" in audit_report.describe_audit(audit)


@pytest.mark.parametrize("groups, holdout, message", [
    ("center\na\n", ("center=x",), r"groups.csv lacks column\(s\) image"),
    ("image,center\n", (), "has no group column besides image"),
    (None, ("center=mars",), "matches no image \\(center values: a, b\\)"),
    (None, ("site=a",), "no column 'site' \\(there are: age_approx, anatom_site_general, "
                        "center, sex\\)"),
    (None, ("center",), "give COLUMN=VALUE"),
    ("all_a", ("center=a",), "holds out every image of .*: nothing would be left to train on"),
])
def test_bad_groups_are_one_line_and_write_nothing(download, tmp_path, groups, holdout,
                                                   message):
    images = [row["image"] for row in csv.DictReader(open(download / "gt.csv"))]
    if groups is None or groups == "all_a":
        groups = "image,center\n" + "".join(
            f"{image},{'a' if groups == 'all_a' or i % 2 else 'b'}\n"
            for i, image in enumerate(images))
    (tmp_path / "groups.csv").write_text(groups)
    with pytest.raises(UserError, match=message) as error:
        isic.prepare(config_for(download, tmp_path / "out", groups=str(tmp_path / "groups.csv"),
                                holdout_group=holdout))
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_group_values_are_compared_as_values_and_a_blank_is_no_group(download, tmp_path):
    # Reliability 2026-12-07 S4, S7: a held-out clinic spelled in other cases or with spaces, or
    # left blank, must never reach train or val.
    images = [row["image"] for row in csv.DictReader(open(download / "gt.csv"))]
    spellings = ["Clinic A", "CLINIC A", " clinic  a ", "clinic a", "Ｃｌｉｎｉｃ A"]
    center = {image: spellings[i % 5] if i % 3 == 0 else "b" for i, image in enumerate(images)}
    blank = [image for i, image in enumerate(images) if i % 3 == 1][:4]
    center.update({image: "" for image in blank})
    (tmp_path / "groups.csv").write_text(
        "image,center\n" + "".join(f"{image},{center[image]}\n" for image in images))
    audit = isic.prepare(config_for(download, tmp_path / "out", groups=str(tmp_path / "groups.csv"),
                                    holdout_group=("center=CLINIC a",)))
    rows = read_split(tmp_path / "out")
    placed = {row["image"]: row for row in rows}
    clinic_a = {image for image, value in center.items() if value.strip() and value != "b"}
    assert clinic_a and all(placed[image]["split"] == "test" for image in clinic_a
                            if image in placed)
    kept = {row["center"] for row in rows if row["image"] in clinic_a}
    assert len(kept) == 1 and kept <= {spelling.strip() for spelling in spellings}
    # Blank: could be clinic A, so never train or val (test with its lesion, else nowhere).
    assert all(placed[image]["split"] == "test" for image in blank if image in placed)
    left_out = audit["no value for --holdout_group"]
    assert left_out and set(left_out) == set(blank) - set(placed) - set(audit["not in csv"])
    assert all(row["center"] for row in rows if row["split"] != "test")
    report = audit_report.describe_audit(audit)
    assert "4 images have no center value" in report
    assert "values differing only in case or space are one group" in report
    assert f"left out, no value for --holdout_group: {len(left_out)}" in report
