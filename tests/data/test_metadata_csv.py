"""Patient-metadata CSVs: reading them (bad rows, ages not believed, coverage) and the
metadata.csv prepare_isic writes."""

import csv
from pathlib import Path

import numpy as np
import pytest

from skin_keras.core.errors import UserError
from skin_keras.data import audit_report, isic, patient_metadata, synthetic
from skin_keras.data.patient_metadata import MISSING, Record

HEADER = ["image", "age_approx", "sex", "anatom_site_general"]


def write_csv(path: Path, rows) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("rows, header, message", [
    ([["a", "40", "male", "back"]], ["name", "age_approx", "sex", "anatom_site_general"],
     r"lacks column\(s\) image"),
    ([["a", "40", "male", "back"], ["b", "", "", ""], ["a", "50", "", ""]], HEADER,
     r"image a has two rows \(lines 2 and 4\)"),
    ([["a", "x", "y"]], ["image", "age", "gender"], "has none of the metadata columns"),
])
def test_bad_metadata_csv_is_one_clear_line(tmp_path, rows, header, message):
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows([header, *rows])
    with pytest.raises(UserError, match=message):
        patient_metadata.read_table(path)


def test_ages_not_believed_stop_training_and_run_as_missing_in_prediction(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["a", "abc", "Male", ""], ["b", "400", "", "back"],
                                          ["c.jpg", "35", " FEMALE", "Face"]])
    table = patient_metadata.read_table(path)
    assert [image for _, image, _ in table.bad_ages] == ["a", "b"]
    with pytest.raises(UserError, match=r"2 age_approx value\(s\).*'abc' for a \(line 2\)"):
        patient_metadata.check_for_training(table, ["t/a.jpg"], [])
    records, found, note = patient_metadata.for_prediction(
        str(path), [Path("x/a.png"), Path("x/c.jpg"), Path("x/zz.jpg")])
    assert records == [Record(None, "male", ""), Record(35.0, "female", "face"), MISSING]
    assert found.tolist() == [True, True, False]
    assert "2 of 3 images have a row" in note and "1 age(s) not a number" in note


def test_a_csv_covering_no_training_image_is_refused(tmp_path):
    table = patient_metadata.read_table(write_csv(tmp_path / "m.csv", [["other", "40", "", ""]]))
    with pytest.raises(UserError, match="no row for any of the 2 training images"):
        patient_metadata.check_for_training(table, ["d/a.jpg", "d/b.jpg"], [])


def test_prepare_isic_writes_metadata_csv_with_missing_counts(tmp_path):
    from test_prepare_isic import write_isic_layout  # pylint: disable=g-import-not-at-top

    root = tmp_path / "isic"
    rng = np.random.default_rng(0)
    rows, lesions = [], {}
    for number in range(12):
        image = f"ISIC_{number:07d}"
        rows.append((image, ["MEL" if number % 2 else "NV"]))
        lesions[image] = f"IL_{number}"
        (root / "ISIC_2019_Training_Input").mkdir(parents=True, exist_ok=True)
        synthetic.lesion_image(number % 2, 2, (40, 30), rng).save(
            root / "ISIC_2019_Training_Input" / f"{image}.jpg")
    write_isic_layout(root, rows, lesions)
    with open(root / "meta.csv", "w", newline="") as file:  # Some cells empty, one row absent.
        writer = csv.writer(file)
        writer.writerow(["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
        for number in range(11):
            writer.writerow([f"ISIC_{number:07d}", "" if number < 3 else f"{number}5.0",
                             "" if number == 4 else "back", f"IL_{number}",
                             "female" if number % 3 else ""])
    audit = isic.prepare(isic.PrepareConfig(
        images=str(root / "ISIC_2019_Training_Input"), ground_truth=str(root / "gt.csv"),
        metadata=str(root / "meta.csv"), out_dir=str(tmp_path / "data"), val_fraction=0.3))
    with open(tmp_path / "data" / "metadata.csv", newline="") as file:
        written = list(csv.DictReader(file))
    assert list(written[0]) == HEADER
    assert sorted(row["image"] for row in written) == [f"ISIC_{n:07d}" for n in range(12)]
    by_image = {row["image"]: row for row in written}
    assert by_image["ISIC_0000005"] == {"image": "ISIC_0000005", "age_approx": "55.0",
                                        "sex": "female", "anatom_site_general": "back"}
    assert by_image["ISIC_0000011"] == {"image": "ISIC_0000011", "age_approx": "", "sex": "",
                                        "anatom_site_general": ""}
    # Ages missing: 0-2 and 11; sites: 4 and 11; sex: 0, 3, 6, 9 and 11.
    assert audit["metadata missing"] == {"age_approx": 4, "sex": 5, "anatom_site_general": 2}
    assert "metadata.csv, missing values: age_approx 4, sex 5" in audit_report.describe_audit(audit)


def test_a_row_with_an_unquoted_comma_is_malformed_not_shifted(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,age_approx,anatom_site_general,sex\nISIC_0,45,back,male\n"
                    "ISIC_1,45,upper, extremity,male\n")
    with pytest.raises(UserError, match=r"1 malformed row\(s\), the first on line 3: too many "
                                        r"fields \(5 for 4 columns"):
        patient_metadata.read_table(path)


def test_same_named_images_in_two_folders_need_rows_keyed_by_folder(tmp_path):
    paths = [Path("val/MEL/1.jpg"), Path("val/NV/1.jpg")]
    by_stem = patient_metadata.read_table(write_csv(tmp_path / "stem.csv",
                                                    [["1", "40", "male", ""]]))
    with pytest.raises(UserError, match=r"the row '1' matches two images, val/MEL/1.jpg and "
                                        r"val/NV/1.jpg; name each image by its folder"):
        by_stem.lookup(paths)
    by_folder = patient_metadata.read_table(write_csv(
        tmp_path / "folder.csv", [["MEL/1.jpg", "40", "male", ""], ["NV/1", "70", "female", ""],
                                  ["2", "30", "", ""]]))
    records, found = by_folder.lookup([*paths, Path("val/NV/2.png")])
    assert [r.age_approx for r in records] == [40.0, 70.0, 30.0] and found.all()
