"""Where an export writes, checked before any conversion starts: the folder can be written, a
SavedModel version is free, the files of another model are not replaced without --overwrite,
and the files that will be replaced are named. report.json keeps the rows of earlier exports
of the same model."""

import json
import logging
import os
import shutil
from pathlib import Path

from skin_keras.core import atomic
from skin_keras.core.errors import UserError
from skin_keras.core.layout import RunFolder
from skin_keras.evaluate import model_card
from skin_keras.infer import formats as registry
from skin_keras.infer.formats import about

_log = logging.getLogger(__name__)

REPORT = "report.json"


def check_output_folder(output: Path) -> None:
    """UserError now, before minutes of conversion, when `output` cannot become a folder."""
    for folder in (output, *output.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"--output={output}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK):
                raise UserError(f"--output={output}: {folder} is not writable")
            return


def targets(output: Path, formats, name: str, version: int) -> dict[str, Path]:
    """What each format writes (the SavedModel: its version folder; `version` 0: the next)."""
    return {fmt: registry.get(fmt).target(output, name, version) for fmt in formats}


def previous_report(output: Path) -> dict | None:
    try:
        return json.loads((output / REPORT).read_text())
    except (OSError, ValueError):
        return None


def prepare(output: Path, planned: dict[str, Path], model: str, overwrite: bool) -> dict:
    """Checks the planned files against what `output` holds; returns the report rows to keep
    (earlier exports of the same model). UserError when a SavedModel version is taken or the
    folder holds another model's export (unless `overwrite`: that export is removed)."""
    check_output_folder(output)
    taken = planned.get("saved_model")
    if taken is not None and taken.exists():
        raise UserError(f"{taken} exists already: choose another --version or leave it unset")
    previous = previous_report(output)
    other = previous is not None and previous.get("model") != model
    if other and not overwrite:
        raise UserError(f"--output={output} holds the export of another model "
                        f"({previous.get('model')}, {REPORT}): choose another --output, or "
                        "pass --overwrite to replace that export")
    if other:
        old = sorted({Path(entry["path"]) for entry in previous.get("artifacts", {}).values()
                      if isinstance(entry, dict) and entry.get("path")})
        _log.info(f"--overwrite: removing the export of {previous.get('model')}: "
                  + ", ".join(str(path) for path in old))
        for path in old:
            if path.is_dir():
                shutil.rmtree(path)
            else:  # A file and what export.py writes beside it.
                for file in (path, path.parent / about.LABELS_FILE,
                             path.parent / about.DESCRIPTION_FILE):
                    file.unlink(missing_ok=True)
        return {}
    replaced = [str(path) for path in planned.values() if path.exists()]
    if replaced:
        _log.info(f"replacing the earlier export of this model: {', '.join(replaced)}")
    return dict((previous or {}).get("artifacts", {}))


def ship_model_card(source: Path, output: Path) -> Path | None:
    """Copies the newest model_card.md of the model's run folder that describes exactly
    `source` (the file as it is now: `model_card.describes`) next to the artifacts; None,
    said, when there is none (and a card left in `output` by an earlier export goes)."""
    run_dir = RunFolder.of_model(source).path
    cards = sorted(run_dir.glob(f"*/{model_card.FILE}"), key=lambda p: p.stat().st_mtime_ns)
    target = output / model_card.FILE
    mine = [card for card in cards if model_card.describes(card, source)]
    if not mine:
        target.unlink(missing_ok=True)
        _log.info(f"no {model_card.FILE} shipped: none in {run_dir} describes {source} as it "
                  f"is now ({len(cards)} of other models or versions); run evaluate.py "
                  f"--model_path={source} first (it writes one)")
        return None
    atomic.write_text_atomic(target, mine[-1].read_text())
    _log.info(f"{model_card.FILE}: copied from {mine[-1]}")
    return target
