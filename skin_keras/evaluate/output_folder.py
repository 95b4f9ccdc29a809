"""Where an evaluation writes: never over another evaluation, never beside its leftovers.

The default, <run folder>/eval_<data folder name>, becomes eval_<name>_2, _3, ... when the
folder holds the evaluation of another data folder (two `val` folders have one name). An
explicit --output that holds the evaluation of another model or data folder is refused. An
earlier evaluation of the same model and data is replaced whole: its files are removed first,
so that a robustness report never sits beside the metrics of a later plain evaluation.
"""

import json
import shutil
from pathlib import Path

from skin_keras.core.errors import UserError

# Everything evaluate.py writes into its folder (report.py, robustness.py, outputs.py).
WRITTEN = ("metrics.json", "predictions.csv", "predictions.json", "misclassified.csv",
           "confusion_matrix.png", "roc_curves.png", "reliability.png", "robustness.json",
           "robustness.png", "explain", "shifts", "metadata_blanked")
_RECORDS = ("metrics.json", "robustness.json")  # Each names its model and data.


def _evaluated(folder: Path) -> tuple[str, str] | None:
    """(model, resolved data folder) of the evaluation in `folder`; None when there is none."""
    for name in _RECORDS:
        try:
            record = json.loads((folder / name).read_text())
            return str(record["model"]), str(Path(record["data"]).resolve())
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def claim(explicit: str | None, run_dir: Path, model: str, data: str) -> Path:
    """The folder this evaluation writes to, emptied of an earlier evaluation's files."""
    this = (model, str(Path(data).resolve()))
    if explicit is not None:
        folder = Path(explicit)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--output={folder} is a file, not a folder")
        earlier = _evaluated(folder)
        if earlier is not None and earlier != this:
            raise UserError(f"--output={folder} holds the evaluation of {earlier[0]} on "
                            f"{earlier[1]}: choose another --output (or remove it)")
    else:
        base = run_dir / f"eval_{Path(data).resolve().name}"
        folder, number = base, 1
        while _evaluated(folder) not in (None, this):
            number += 1
            folder = base.with_name(f"{base.name}_{number}")
    for name in WRITTEN:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    return folder
