"""Predicting files: list them, feed them to a runner batch by batch (with test-time
augmentation), and keep every answer with its file.

Files that fail the cheap check never reach the model; a file the decoder still rejects is
matched back by index and named; a model that answers NaN is blamed, not the image.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skin_keras.core.errors import UserError
from skin_keras.core.progress import progress
from skin_keras.data import folders, patient_metadata, pipeline
from skin_keras.infer.runner import Runner
from skin_keras.model import io

_log = logging.getLogger(__name__)

MAX_TTA_VIEWS = 8  # The symmetries of a square: pipeline.dihedral_views.
MODEL_NAN = "the model produced NaN for this image (the model is broken, not the image)"


def list_sources(sources: Sequence[str | Path], output: str | Path | None = None) -> list[Path]:
    """Every file named in `sources` (files, or folders searched recursively), in order, each
    real file once (links to it, or a folder given twice, add no row; link loops are not
    followed). Hidden files are left out; other non-image files are kept, so they get an error
    row. The `output` folder is never searched: its copies are not sources."""
    files = []
    for source in sources:
        source = Path(source)
        if source.is_file():
            files.append(str(source))
        elif source.is_dir():
            files.extend(folders.walk_files(source, skip=output))
        else:
            raise UserError(f"source {source} does not exist")
    keep, _ = folders.first_of_each_file(files)
    return [Path(files[i]) for i in keep]


def file_errors(paths: Sequence[Path]) -> list[str | None]:
    """Why each file cannot be predicted (None for the ones that look fine)."""
    errors = []
    for path, (_, reason) in zip(paths, folders.inspect_images([str(p) for p in paths])):
        if not folders.is_image_file(path):
            reason = f"not an image file ({path.suffix or 'no extension'})"
        errors.append(reason)
    return errors


def other_inputs(runner: Runner, metadata: str, paths: Sequence[Path]) -> dict:
    """The runner's named inputs besides the image, one value per path: {"records": patient
    records from the CSV `metadata` ("none": all missing)} for a metadata model, {} for others
    (a CSV given to one is not used, with a note)."""
    if io.METADATA not in runner.inputs:
        if metadata.lower() != "none":
            _log.info(f"note: {runner.source} was trained without metadata; "
                      f"--metadata={metadata} is not used")
        return {}
    records, _, note = patient_metadata.for_prediction(metadata, paths)
    unknown = int(np.sum(~metadata_known(runner, records)
                         & np.array([not r.is_missing for r in records], bool)))
    if unknown:
        note += (f"; {unknown} image(s) whose values are all unknown to the model (categories "
                 "not in its vocabulary) run as missing")
    _log.info(note or f"metadata: none given, all {len(paths)} images run with it missing")
    return {io.RECORDS: records}


def metadata_known(runner: Runner, records: Sequence) -> np.ndarray:
    """Per record, whether the model gets anything from it (its encoding's vocabulary; the
    values themselves where the runner does not say how it encodes)."""
    if runner.about.encoding is not None:
        return runner.about.encoding.knows(records)
    return np.array([not record.is_missing for record in records], bool)


def predict_files(runner: Runner, paths: Sequence[Path], batch_size: int, tta: int = 1,
                  inputs: dict | None = None, show_progress: bool = True,
                  place: tuple[Sequence[int], int] | None = None
                  ) -> tuple[dict[str, np.ndarray], list[str | None]]:
    """Every named output of the runner for every file ([N, ...], NaN rows for files that
    failed; averaged over `tta` flipped/rotated views) and an error (or None) per file.
    `inputs` are the runner's other named inputs, one value per path (`other_inputs`).
    `place`: the files' positions in a longer listing and its length, for a part of it (a
    --shard, a block, a resumed job), so that its batches are the whole listing's
    (`listing_batches`)."""
    if batch_size < 1:
        raise UserError(f"--batch_size={batch_size} must be at least 1")
    if not 1 <= tta <= MAX_TTA_VIEWS:
        raise UserError(f"--tta={tta}: choose 1 to {MAX_TTA_VIEWS} views")
    positions, listed = place or (range(len(paths)), len(paths))
    errors = file_errors(paths)
    good = [i for i, error in enumerate(errors) if error is None]
    results = {name: None for name in runner.outputs}
    decoded = np.zeros(len(paths), bool)
    if good:
        dataset = pipeline.indexed_images([paths[i] for i in good], runner.img_size, batch_size)
        batches = listing_batches(dataset, [positions[i] for i in good], batch_size, listed)
        total = len({positions[i] // batch_size for i in good})
        for indices, slots, images in (progress(batches, "predicting", total=total)
                                       if show_progress else batches):
            rows = np.asarray(good)[indices]
            others = {name: _in_slots([values[r] for r in rows], slots, len(images))
                      for name, values in (inputs or {}).items()}
            answers = answer_views(runner, images, others, tta)
            for name in runner.outputs:
                mean = answers[name][slots]
                if results[name] is None:
                    results[name] = np.full((len(paths), *mean.shape[1:]), np.nan, np.float32)
                results[name][rows] = mean
            decoded[rows] = True
    results = {name: np.full((len(paths), 0), np.nan, np.float32) if value is None else value
               for name, value in results.items()}
    for i in good:
        if not decoded[i]:
            errors[i] = "could not be decoded"
        elif not all(np.isfinite(values[i]).all() for values in results.values()):
            errors[i] = MODEL_NAN  # A NaN score would pass as "not unknown".
    return results, errors


def answer_views(runner: Runner, images, others: dict, tta: int) -> dict[str, np.ndarray]:
    """The runner's outputs for a batch of images at its input size, averaged over `tta`
    flipped/rotated views (test-time augmentation); `others`: its other named inputs."""
    views = [runner({io.IMAGE: np.asarray(view), **others})
             for view in pipeline.dihedral_views(images, tta)]
    return {name: np.mean([view[name] for view in views], axis=0) for name in runner.outputs}


def listing_batches(dataset, positions: Sequence[int], batch_size: int, listed: int):
    """(indices, slots, images) per batch of the listing: the decoded files of `dataset` (as
    `pipeline.indexed_images` gives them) regrouped so that the file at position p of a
    listing of `listed` files sits in row p % batch_size of batch p // batch_size, each batch
    with all of its rows (black where a file failed or belongs to another part; the last
    batch of the listing as long as it is). Backends choose their kernels by batch size and
    rows, so the same image in another batch size or row can differ in its last bits: this
    way a file's scores are the same bits whether it runs in one job, a --shard or a resumed
    job."""
    pending: list[tuple[int, np.ndarray]] = []

    def batch():
        group = positions[pending[0][0]] // batch_size
        rows = min(batch_size, listed - group * batch_size)
        indices = np.array([index for index, _ in pending])
        slots = np.array([positions[index] % batch_size for index in indices])
        images = np.zeros((rows, *pending[0][1].shape), pending[0][1].dtype)
        images[slots] = [image for _, image in pending]
        return indices, slots, images

    for indices, images in dataset:
        indices, images = indices.numpy(), images.numpy()
        first = positions[indices[0]]
        if not pending and first % batch_size == 0 and len(indices) == min(
                batch_size, listed - first) and positions[indices[-1]] == first + len(indices) - 1:
            yield indices, np.arange(len(indices)), images  # Already one whole batch.
            continue
        for index, image in zip(indices, images):
            if pending and positions[index] // batch_size != positions[pending[0][0]] // batch_size:
                yield batch()
                pending = []
            pending.append((index, image))
    if pending:
        yield batch()


def _in_slots(values: list, slots: np.ndarray, rows: int) -> list:
    """Another input's values for a batch of `rows` rows, each file's in its slot (the first
    file's value in the rows of no file)."""
    column = [values[0]] * rows
    for slot, value in zip(slots, values):
        column[slot] = value
    return column
