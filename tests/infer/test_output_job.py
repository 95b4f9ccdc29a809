"""predict.py over many files: rows written block by block, a killed job continued by the same
command (never a file twice, none lost), and --shard=i/N parts that concatenate to one
process's output."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skin_keras.core.errors import UserError
from skin_keras.data import synthetic
from skin_keras.infer import files, output_job, predict, shards
from skin_keras.infer.predict import PredictConfig

from conftest import CLASSES, REPO, Killed


@pytest.fixture(scope="module")
def many_files(tmp_path_factory) -> Path:
    """39 synthetic JPEGs in class folders and one file that is not an image."""
    root = tmp_path_factory.mktemp("many_files")
    synthetic.write_class_folders(root, 13, CLASSES, size=(40, 30), seed=3)
    (root / "Melanoma" / "notes.jpg").write_text("not an image")
    return root


def run(model, source, output, **options) -> Path:
    return predict.predict_to_folder(PredictConfig(
        model_path=str(model), source=(str(source),), output=str(output), batch_size=4,
        backend="keras", **options))


def test_shards_concatenate_to_the_one_process_output(untrained_run, many_files, tmp_path):
    one = run(untrained_run, many_files, tmp_path / "one")
    lines = (one.parent / "predictions.csv").read_text().splitlines()
    parts = [run(untrained_run, many_files, tmp_path / "sharded", shard=f"{i}/3")
             for i in range(3)]
    assert [p.name for p in parts] == [f"predictions-{i}-of-3.json" for i in range(3)]
    part_lines = [p.with_suffix(".csv").read_text().splitlines() for p in parts]
    assert all(part[0] == lines[0] for part in part_lines)
    assert [len(part) - 1 for part in part_lines] == [13, 13, 14]
    assert [line for part in part_lines for line in part[1:]] == lines[1:]
    assert [row for p in parts for row in json.loads(p.read_text())] == json.loads(
        one.read_text())
    with pytest.raises(UserError, match="--shard=3/3: needs N >= 1 and 0 <= i < N"):
        run(untrained_run, many_files, tmp_path / "bad", shard="3/3")
    merged = shards.merge(tmp_path / "sharded")
    assert merged.read_text() == (one.parent / "predictions.csv").read_text()
    assert json.loads(merged.with_suffix(".json").read_text()) == json.loads(one.read_text())
    script = [sys.executable, "-m", "skin_keras.merge_predictions"]
    done = subprocess.run(script + [f"--output={tmp_path / 'sharded'}"], capture_output=True,
                          text=True, check=False, cwd=REPO)
    assert done.returncode == 0 and "wrote" in done.stdout, done.stderr[-2000:]
    empty = subprocess.run(script + [f"--output={tmp_path}"], capture_output=True, text=True,
                           check=False, cwd=REPO)
    assert empty.returncode == 2 and empty.stderr.strip().splitlines() == [
        f"merge_predictions.py: error: {tmp_path} holds no part of a sharded "
        "prediction (predict.py --shard=i/N writes .predictions-<i>-of-<N>.job.json)"]


def test_a_killed_job_continues_where_it_stopped(untrained_run, many_files, tmp_path,
                                                 monkeypatch):
    monkeypatch.setattr(predict, "BLOCK_FILES", 8)
    reference = run(untrained_run, many_files, tmp_path / "reference").with_suffix(".csv")
    append = output_job.RowWriter.append
    blocks = []

    def dies_in_the_third_block(writer, cells, rows):
        blocks.append(len(rows))
        if len(blocks) == 3:  # Half a row reaches the file, then the power goes.
            with open(writer.csv, "a") as file:
                file.write(cells[0][0][:10])
            raise Killed
        append(writer, cells, rows)

    monkeypatch.setattr(output_job.RowWriter, "append", dies_in_the_third_block)
    output = tmp_path / "out"
    with pytest.raises(Killed):
        run(untrained_run, many_files, output)
    assert not (output / "predictions.csv").exists()  # Never a CSV that looks finished.
    monkeypatch.setattr(output_job.RowWriter, "append", append)
    predicted = []
    predict_files = files.predict_files

    def recorded(runner, paths, *args, **kwargs):
        predicted.extend(map(str, paths))
        return predict_files(runner, paths, *args, **kwargs)

    monkeypatch.setattr(files, "predict_files", recorded)
    run(untrained_run, many_files, output)
    listed = [str(p) for p in files.list_sources([many_files])]
    assert predicted == listed[16:]  # The two recorded blocks are not predicted again.
    assert (output / "predictions.csv").read_text() == reference.read_text()
    assert json.loads((output / "predictions.json").read_text()) == json.loads(
        reference.with_suffix(".json").read_text())
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith(".")) == [
        "predictions.csv", "predictions.json"]
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(".")) == [
        ".predictions.job.json", ".predictions.lock"]  # The record of the job, the lock.


def test_an_unfinished_job_of_other_settings_is_refused(untrained_run, many_files, tmp_path,
                                                        monkeypatch):
    monkeypatch.setattr(predict, "BLOCK_FILES", 8)

    def dies(writer, cells, rows):
        raise Killed

    append = output_job.RowWriter.append
    monkeypatch.setattr(output_job.RowWriter, "append",
                        lambda writer, cells, rows: (append(writer, cells, rows),
                                                     dies(writer, cells, rows)))
    with pytest.raises(Killed):
        run(untrained_run, many_files, tmp_path / "out")
    monkeypatch.setattr(output_job.RowWriter, "append", append)
    with pytest.raises(UserError, match="unfinished prediction of another job \\(it differs "
                                        "in topk\\)"):
        run(untrained_run, many_files, tmp_path / "out", topk=2)
    # The same count of files, one renamed: its row would stand for a file no longer there.
    source = tmp_path / "renamed"
    shutil.copytree(many_files, source)
    copy = tmp_path / "copy"
    monkeypatch.setattr(output_job.RowWriter, "append",
                        lambda writer, cells, rows: (append(writer, cells, rows),
                                                     dies(writer, cells, rows)))
    with pytest.raises(Killed):
        run(untrained_run, source, copy)
    monkeypatch.setattr(output_job.RowWriter, "append", append)
    first = files.list_sources([source])[0]
    first.rename(first.with_name("renamed_" + first.name))
    with pytest.raises(UserError, match="another job \\(it differs in listing\\)"):
        run(untrained_run, source, copy)
    run(untrained_run, many_files, tmp_path / "out")  # The same command finishes it.
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 40


def test_copies_are_named_over_the_whole_listing_not_per_block(untrained_run, many_files,
                                                               tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "BLOCK_FILES", 1)  # Each file in a block of its own.
    image = next(many_files.rglob("*.jpg"))
    for folder in ("a", "b"):
        (tmp_path / "same" / folder).mkdir(parents=True)
        (tmp_path / "same" / folder / "1.jpg").write_bytes(image.read_bytes())
    run(untrained_run, tmp_path / "same", tmp_path / "out", save_images=True)
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [
        "1.jpg", "1_1.jpg"]


def test_batches_are_the_whole_listings_whatever_part_runs():
    """Files at positions 5..13 of a listing of 14 (file 8 failed), read in batches of 3 and
    regrouped in 4s: each sits in row p % 4 of batch p // 4, holes black, the listing's last
    batch 2 rows long."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    positions = [5, 6, 7, 9, 10, 11, 12, 13]  # Of the decoded files, in order.
    images = np.array(positions, np.float32)[:, None, None, None] * np.ones((1, 2, 2, 3))
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(positions), dtype=np.int64), images.astype(np.float32))).batch(3)
    batches = list(files.listing_batches(dataset, positions, 4, 14))
    assert [len(images) for _, _, images in batches] == [4, 4, 2]
    assert [slots.tolist() for _, slots, _ in batches] == [[1, 2, 3], [1, 2, 3], [0, 1]]
    for indices, slots, images in batches:
        assert images[slots, 0, 0, 0].tolist() == [positions[i] for i in indices]
        holes = np.setdiff1d(np.arange(len(images)), slots)
        assert not images[holes].any()  # Black where no file of this part is.
    # A metadata model's other input follows its file into its row.
    assert files._in_slots(["a", "b", "c"], np.array([1, 2, 3]), 4) == ["a", "a", "b", "c"]


def counting(monkeypatch) -> list[str]:
    """The paths files.predict_files is asked for, from now on."""
    predicted, predict_files = [], files.predict_files

    def recorded(runner, paths, *args, **kwargs):
        predicted.extend(map(str, paths))
        return predict_files(runner, paths, *args, **kwargs)

    monkeypatch.setattr(files, "predict_files", recorded)
    return predicted


def test_an_output_belongs_to_one_job(untrained_run, many_files, tmp_path, monkeypatch):
    # Reliability 2026-12-07 S1, D1, S6, C4.
    output = tmp_path / "out"
    output.mkdir()
    held = output_job.lock(output, "predictions")  # Another process writing here.
    with pytest.raises(UserError, match="another process is writing predictions in"):
        run(untrained_run, many_files, output)
    held.close()
    first = run(untrained_run, many_files, output)
    before = first.read_text()
    with pytest.raises(UserError, match="holds a finished prediction of another job \\(it "
                                        "differs in topk\\).*--overwrite"):
        run(untrained_run, many_files, output, topk=2)
    assert first.read_text() == before  # Nothing overwritten.
    predicted = counting(monkeypatch)
    run(untrained_run, many_files, output)  # The same job, no file changed: nothing to do.
    assert predicted == [] and first.read_text() == before
    run(untrained_run, many_files, output, topk=2, overwrite=True)
    assert len(predicted) == 40 and "top" in json.loads(first.read_text())[0]
    # Killed after publishing, before the record said so: finished, not "incomplete".
    record = output_job.record_path(output, "predictions")
    state = json.loads(record.read_text())
    record.write_text(json.dumps({**state, "finished": False, "csv bytes": (
        output / "predictions.csv").stat().st_size}))
    predicted.clear()
    run(untrained_run, many_files, output, topk=2)
    assert predicted == [] and json.loads(record.read_text())["finished"]
    # An output inside the source is not a source: copies are not predicted next time.
    source = tmp_path / "source"
    shutil.copytree(many_files, source)
    for _ in range(2):
        rows = json.loads(run(untrained_run, source, source / "out", save_images=True,
                              overwrite=True).read_text())
        assert len(rows) == 40 and not any("/out/" in row["path"] for row in rows)


def test_a_file_changed_since_its_row_is_predicted_again(untrained_run, many_files, tmp_path,
                                                         monkeypatch):
    # Reliability 2026-12-07 S2: the row of a file replaced between a kill and the rerun.
    monkeypatch.setattr(predict, "BLOCK_FILES", 8)
    source = tmp_path / "source"
    shutil.copytree(many_files, source)
    listed = files.list_sources([source])
    append = output_job.RowWriter.append

    def dies_after_the_first_block(writer, cells, rows):
        append(writer, cells, rows)
        raise Killed

    monkeypatch.setattr(output_job.RowWriter, "append", dies_after_the_first_block)
    with pytest.raises(Killed):
        run(untrained_run, source, tmp_path / "out")
    monkeypatch.setattr(output_job.RowWriter, "append", append)
    shutil.copyfile(listed[-1], listed[2])  # A file of the first block is replaced.
    predicted = counting(monkeypatch)
    rows = json.loads(run(untrained_run, source, tmp_path / "out").read_text())
    assert predicted[0] == str(listed[2]) and len(predicted) == 40 - 7
    fresh = json.loads(run(untrained_run, source, tmp_path / "fresh").read_text())
    assert sorted(rows, key=lambda row: row["path"]) == fresh
    listed[5].write_bytes(listed[-1].read_bytes())  # After the end: the job is done again.
    predicted.clear()
    run(untrained_run, source, tmp_path / "out")
    assert len(predicted) == 40


def test_parts_cut_from_different_listings_are_not_merged(untrained_run, many_files, tmp_path):
    # Reliability 2026-12-07 S8: a file added between two parts of a sharded job.
    source = tmp_path / "source"
    shutil.copytree(many_files, source)
    output = tmp_path / "out"
    run(untrained_run, source, output, shard="0/2")
    with pytest.raises(UserError, match="part\\(s\\) 1 of 2 have not finished"):
        shards.merge(output)
    shutil.copyfile(next(source.rglob("*.jpg")), source / "AAA_new.jpg")
    run(untrained_run, source, output, shard="1/2")
    with pytest.raises(UserError, match="cut from different listings \\(40 and 41 files\\)"):
        shards.merge(output)
    assert not (output / "predictions.csv").exists()
