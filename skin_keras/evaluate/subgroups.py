"""Results per subgroup: the clinic, the patient's sex, age band and body site, or any column of
split.csv (evaluate.py --group_by=center,sex,age,site), each row with its own bootstrap
intervals; the lesion of each image, which the bootstrap resamples.

Where the values come from: split.csv beside the data folder (prepare_isic writes it, with the
--groups columns such as `center`, and `lesion_id`), and the metadata CSV (--metadata, else
metadata.csv beside the data folder) for `age` (in bands), `sex` and `site`. An image without a
value is in the subgroup "unknown".
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skin_keras.core import plots
from skin_keras.core.errors import UserError
from skin_keras.core.layout import DataRoot
from skin_keras.data import patient_metadata
from skin_keras.data.csv_table import read_csv
from skin_keras.evaluate import bootstrap

UNKNOWN = "unknown"
# Upper bounds (exclusive) and names of the age bands.
AGE_BANDS = ((30, "<30"), (45, "30-44"), (60, "45-59"), (75, "60-74"), (float("inf"), "75+"))
_SPLIT_COLUMNS = ("image", "class", "split", "lesion_id")


def age_band(age: float | None) -> str:
    if age is None:
        return UNKNOWN
    return next(name for bound, name in AGE_BANDS if age < bound)


def image_facts(paths: Sequence, data: str | Path, metadata: str, wanted: Sequence[str] = ()
                ) -> tuple[dict, np.ndarray, str]:
    """({group name: value per image}, the lesion of each image, how lesions were found); the
    metadata CSV is read only when `wanted` names age, sex or site."""
    stems = [Path(path).stem for path in paths]
    facts, lesions, how = {}, np.array(stems, dtype=object), "by image (no split.csv)"
    split_csv = DataRoot.of(data).split_csv
    if split_csv.is_file():
        rows, _ = read_csv(split_csv, ("image",))
        by_image = {row["image"].strip(): row for row in rows}
        found = [by_image.get(stem, {}) for stem in stems]
        lesions = np.array([row.get("lesion_id") or stem for row, stem in zip(found, stems)],
                           dtype=object)
        how = f"by lesion (lesion_id of {split_csv})"
        for column in (rows[0] if rows else {}):
            if column not in _SPLIT_COLUMNS:
                facts[column] = [(row.get(column) or "").strip() or UNKNOWN for row in found]
    csv_path = (patient_metadata.resolve(patient_metadata.AUTO, data)
                if metadata.lower() == "none" else patient_metadata.resolve(metadata, data))
    if csv_path is not None and set(wanted) & {"age", "sex", "site"}:
        records, _ = patient_metadata.read_table(csv_path).lookup(paths)
        facts["age"] = [age_band(r.age_approx) for r in records]
        facts["sex"] = [r.sex or UNKNOWN for r in records]
        facts["site"] = [r.anatom_site_general or UNKNOWN for r in records]
    return facts, lesions, how


def check_names(wanted: Sequence[str], facts: dict, data) -> None:
    """UserError (before any prediction) for a --group_by name no source gives."""
    absent = [name for name in wanted if name not in facts]
    if absent:
        raise UserError(f"--group_by: no {', '.join(absent)} for the images of {data} (there "
                        f"are: {', '.join(sorted(facts)) or 'none'}; age, sex and site come from "
                        "the metadata CSV, other columns from split.csv beside the data folder)")


def _row(labels, probabilities, lesions, class_names, resamples, seed) -> dict:
    k = len(class_names)
    point = bootstrap.point_figures(labels, probabilities, k)
    counts = np.bincount(labels, minlength=k)

    def value(x):
        return None if not np.isfinite(x) else round(float(x), 4)

    row = {"images": int(len(labels)), "balanced accuracy": value(point[0]),
           "expected calibration error": value(point[1]),
           "recall": {name: value(point[2 + i]) for i, name in enumerate(class_names)},
           "ROC AUC": {name: value(point[2 + k + i]) for i, name in enumerate(class_names)},
           "too small to judge": [name for name, count in zip(class_names, counts)
                                  if 0 < count < bootstrap.MIN_IMAGES]}
    if resamples:
        row["intervals"] = bootstrap.intervals(labels, probabilities, lesions, class_names,
                                               resamples, seed)
    return row


def _order(value: str) -> tuple:
    """Age bands young to old, then the other values alphabetically, "unknown" last."""
    bands = [name for _, name in AGE_BANDS]
    return (value == UNKNOWN, bands.index(value) if value in bands else len(bands), value)


def subgroup_report(labels: np.ndarray, probabilities: np.ndarray, facts: dict,
                    wanted: Sequence[str], lesions: np.ndarray, class_names, resamples: int,
                    seed: int) -> dict:
    """{group name: {value: row}}: images, balanced accuracy, ECE, recall and ROC AUC per
    class, the classes too small to judge, and (resamples > 0) the bootstrap intervals."""
    report = {}
    for name in wanted:
        values = np.array(facts[name], dtype=object)
        report[name] = {value: _row(labels[values == value], probabilities[values == value],
                                    lesions[values == value], class_names, resamples, seed)
                        for value in sorted(set(values), key=_order)}
    return report


def _interval_text(row: dict) -> str:
    interval = (row.get("intervals") or {}).get("balanced accuracy")
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""


def describe(report: dict) -> str:
    lines = []
    for name, rows in report.items():
        width = max(len(value) for value in rows)
        lines.append(f"by {name}: {'images':>6}  {'bal. acc.':>9}  {'95% interval':<16}  ECE")
        for value, row in rows.items():
            balanced = "-" if row["balanced accuracy"] is None else f"{row['balanced accuracy']:.3f}"
            small = (f"  too small to judge: {', '.join(row['too small to judge'])}"
                     if row["too small to judge"] else "")
            lines.append(f"  {value:<{width}} {row['images']:>6}  {balanced:>9}  "
                         f"{_interval_text(row):<16}  {row['expected calibration error']:.3f}"
                         f"{small}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    rows = [(f"{name}={value} ({row['images']})", row["balanced accuracy"] or 0.0,
             (row.get("intervals") or {}).get("balanced accuracy"))
            for name, values in report.items() for value, row in values.items()]
    plots.intervals(rows, path, "balanced accuracy per subgroup (95% bootstrap interval)",
                    "balanced accuracy")
