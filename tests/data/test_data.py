"""Dataset discovery, the bad-input cases, and the tf.data pipeline."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from skin_keras.core.errors import UserError
from skin_keras.data import folders, pipeline

from conftest import corrupt_files


def save_image(path, mode="RGB", size=(40, 30), image_format=None, value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    if value is not None:
        pixels[:] = value
    Image.fromarray(pixels).convert(mode).save(path, format=image_format)
    return path


def truncated_jpeg_bytes(size=(120, 90)):
    """A noisy JPEG cut at two thirds: a valid header, then the data stops (a broken download)."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()[:len(buffer.getvalue()) * 2 // 3]


@pytest.fixture
def mixed_folder(tmp_path):
    """Two classes with every supported file kind, non-image files and broken images."""
    root = tmp_path / "data"
    save_image(root / "b_class" / "upper.JPG", image_format="JPEG")
    save_image(root / "b_class" / "gray.png", mode="L")
    save_image(root / "b_class" / "nested" / "rgba.PNG", mode="RGBA")
    save_image(root / "b_class" / "pic.Jpeg", image_format="JPEG")
    save_image(root / "a_class" / "bitmap.bmp")
    save_image(root / "a_class" / "gray.bmp", mode="L")
    (root / "a_class" / "notes.txt").write_text("not an image")
    (root / "a_class" / "Thumbs.db").write_bytes(b"\x00" * 10)
    (root / "a_class" / ".hidden.jpg").write_bytes(b"")
    (root / "a_class" / "empty.jpg").write_bytes(b"")
    (root / "a_class" / "text.png").write_text("definitely not a png")
    (root / "b_class" / "truncated.jpg").write_bytes(truncated_jpeg_bytes())
    png = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(png, "PNG")
    (root / "b_class" / "truncated.png").write_bytes(png.getvalue()[:-20])
    save_image(root / "b_class" / "one_bit.bmp", mode="1")
    (root / ".git").mkdir()
    return root


def test_scan_finds_sorted_classes_and_every_readable_image(mixed_folder):
    folder = folders.scan_image_folder(mixed_folder)
    assert folder.class_names == ("a_class", "b_class")
    names = [p.split("/data/")[1] for p in folder.paths]
    assert names == ["a_class/bitmap.bmp", "a_class/gray.bmp", "b_class/gray.png",
                     "b_class/pic.Jpeg", "b_class/upper.JPG", "b_class/nested/rgba.PNG"]
    assert folder.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert sorted(p.rsplit("/", 1)[1] for p in folder.skipped) == ["Thumbs.db", "notes.txt"]
    bad = {path.rsplit("/", 1)[1]: reason for path, reason in folder.bad_files}
    assert set(bad) == {"empty.jpg", "text.png", "truncated.jpg", "truncated.png", "one_bit.bmp"}
    assert bad["empty.jpg"] == "empty file"
    assert "truncated" in bad["truncated.jpg"] and "truncated" in bad["truncated.png"]
    summary = folders.describe(folder, "train")
    assert "skipped 2 non-image file(s)" in summary
    assert all(name in summary for name in bad)


def test_every_listed_image_decodes_to_rgb(mixed_folder):
    folder = folders.scan_image_folder(mixed_folder)
    for path in folder.paths:
        image = pipeline.load_image(tf.constant(path), 24)
        assert image.shape == (24, 24, 3) and image.dtype == tf.float32, path


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "has no class sub-folders"),
    (lambda root: (root / "Melanoma").mkdir(parents=True), "without readable images in"),
    (lambda root: save_image(root / "Melanoma" / "x.jpg").parent.parent.joinpath("Nevus").mkdir(),
     "without readable images in .*: Nevus"),
    (lambda root: ((root / "Melanoma").mkdir(parents=True),
                   (root / "Melanoma" / "bad.jpg").write_bytes(b"junk")),
     "without readable images"),
])
def test_bad_dataset_folders_raise_one_line_errors(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(UserError, match=message) as error:
        folders.scan_image_folder(root)
    assert "\n" not in str(error.value)


def test_a_file_instead_of_a_folder_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        folders.scan_image_folder(tmp_path / "file")


def test_class_mismatch_between_train_and_val_names_the_classes(tmp_path):
    for name in ("Melanoma", "Nevus"):
        save_image(tmp_path / "train" / name / "a.jpg")
    for name in ("Melanoma", "Vascular"):
        save_image(tmp_path / "val" / name / "a.jpg")
    train = folders.scan_image_folder(tmp_path / "train")
    with pytest.raises(UserError, match="missing Nevus; unexpected Vascular"):
        folders.scan_image_folder(tmp_path / "val", class_names=train.class_names)
    with pytest.raises(UserError, match="differ from the model's classes: unexpected Vascular$"):
        folders.scan_image_folder(tmp_path / "val", class_names=train.class_names,
                                  allow_missing_classes=True)


def test_a_test_set_may_lack_a_class_when_allowed(tmp_path):
    save_image(tmp_path / "test" / "Nevus" / "a.jpg")
    folder = folders.scan_image_folder(tmp_path / "test", class_names=("Melanoma", "Nevus"),
                                       allow_missing_classes=True)
    assert folder.class_names == ("Melanoma", "Nevus")
    assert folder.labels.tolist() == [1]
    assert folder.class_counts().tolist() == [0, 1]


def test_decode_keeps_0_255_rgb_and_converts_gray_and_rgba(tmp_path):
    gray = save_image(tmp_path / "gray.png", mode="L", value=200)
    rgba = save_image(tmp_path / "rgba.png", mode="RGBA", value=(10, 20, 30))
    image = pipeline.load_image(tf.constant(str(gray)), 16).numpy()
    np.testing.assert_allclose(image, 200, atol=0.5)  # Not divided by 255, three equal channels.
    image = pipeline.load_image(tf.constant(str(rgba)), 16).numpy()
    np.testing.assert_allclose(image[0, 0], [10, 20, 30], atol=0.5)


def test_dataset_batches_one_hot_labels_in_file_order(tmp_path):
    paths = [str(save_image(tmp_path / f"{i}.png", value=i * 10)) for i in range(5)]
    labels = np.array([0, 1, 2, 1, 0])
    dataset = pipeline.make_dataset(paths, labels, 3, img_size=16, batch_size=2)
    batches = list(dataset)
    assert [sorted(b[0]) for b in batches] == [["image"]] * 3  # The model's named input.
    assert [b[0]["image"].shape[0] for b in batches] == [2, 2, 1]
    images = np.concatenate([b[0]["image"] for b in batches])
    np.testing.assert_allclose(images[:, 0, 0, 0], [0, 10, 20, 30, 40], atol=0.5)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), np.eye(3)[labels])


def test_training_augmentation_only_flips_and_rotates(tmp_path):
    path = str(save_image(tmp_path / "a.png", size=(16, 16)))
    original = pipeline.load_image(tf.constant(path), 16).numpy()
    views = {original.tobytes()}
    variants = [np.rot90(flip, k) for flip in (original, original[:, ::-1]) for k in range(4)]
    allowed = {v.tobytes() for v in variants}
    dataset = pipeline.make_dataset([path] * 64, np.zeros(64, int), 2, 16, 64,
                                    training=pipeline.Training(seed=0))
    images = next(iter(dataset))[0]["image"].numpy()
    for image in images:
        assert image.tobytes() in allowed
        views.add(image.tobytes())
    assert len(views) > 4  # Augmentation happened.


def test_undecodable_file_is_dropped_not_fatal(tmp_path):
    good = [str(save_image(tmp_path / f"{i}.jpg", image_format="JPEG")) for i in range(3)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(truncated_jpeg_bytes())
    dataset = pipeline.make_dataset([good[0], str(broken), good[1], good[2]],
                                          np.array([0, 1, 0, 1]), 2, 16, 8)
    inputs, labels = next(iter(dataset))
    assert inputs["image"].shape[0] == 3
    np.testing.assert_array_equal(labels.numpy().argmax(1), [0, 0, 1])


def test_prediction_batches_keep_every_index_and_skip_the_autotuner(tmp_path):
    # With tf.data's autotuner a pass over a folder was pinned at 19.9 img/s in a third of
    # passes on 2 cores (docs/benchmarks.md); prediction and the feature cache run without it.
    paths = [str(save_image(tmp_path / f"{i}.jpg", image_format="JPEG")) for i in range(5)]
    dataset = pipeline.indexed_images(paths, 16, 2)
    assert dataset.options().autotune.enabled is False
    indices = np.concatenate([batch[0].numpy() for batch in dataset])
    np.testing.assert_array_equal(indices, np.arange(5))


def test_a_link_loop_or_a_link_into_another_class_relabels_nothing(tmp_path):
    root = tmp_path / "data"
    for name in ("BCC", "MEL", "NV"):
        for index in range(3):
            save_image(root / name / f"{index}.jpg", image_format="JPEG")
    os.symlink("..", root / "NV" / "loop")  # Back to the dataset root: a loop.
    os.symlink("../../MEL", root / "NV" / "nested_mel")  # Another class's folder.
    os.symlink("../MEL/0.jpg", root / "NV" / "mel_file.jpg")  # Another class's file.
    os.symlink("0.jpg", root / "NV" / "again.jpg")  # The same file twice.
    folder = folders.scan_image_folder(root)
    assert folder.class_counts().tolist() == [3, 3, 3]
    assert all(("/NV/" in p) == (label == 2) for p, label in zip(folder.paths, folder.labels))
    bad = {path.rsplit("/", 1)[1]: reason for path, reason in folder.bad_files}
    assert set(bad) == {"mel_file.jpg", "again.jpg"}
    assert "another class folder" in bad["mel_file.jpg"] and "counted once" in bad["again.jpg"]


def test_palette_bmp_is_refused_by_name_and_palette_png_decodes_right(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("P").save(tmp_path / "palette.bmp")
    Image.fromarray(pixels).convert("P").save(tmp_path / "palette.png")
    _, reason = folders.inspect_image(tmp_path / "palette.bmp")
    assert reason.startswith("unsupported 8-bit palette BMP")
    assert folders.inspect_image(tmp_path / "palette.png")[1] is None
    decoded = pipeline.decode_and_resize(
        (tmp_path / "palette.png").read_bytes(), 40).numpy()
    with Image.open(tmp_path / "palette.png") as image:
        expected = np.asarray(image.convert("RGB").resize((40, 40), Image.BILINEAR), np.float32)
    assert np.abs(decoded - expected).mean() < 8  # Colours, not grey palette indices (~50).


def test_an_empty_class_folder_is_allowed_where_classes_may_be_missing(tmp_path):
    save_image(tmp_path / "test" / "Nevus" / "a.jpg")
    (tmp_path / "test" / "Melanoma").mkdir()
    folder = folders.scan_image_folder(tmp_path / "test", class_names=("Melanoma", "Nevus"),
                                       allow_missing_classes=True)
    assert folder.class_counts().tolist() == [0, 1]
    with pytest.raises(UserError, match="without readable images in .*: Melanoma"):
        folders.scan_image_folder(tmp_path / "test")


def test_the_full_decode_check_names_what_the_header_check_lets_through(tmp_path):
    from skin_keras.data import decode_check  # pylint: disable=g-import-not-at-top

    folder = corrupt_files(tmp_path / "bad")
    save_image(tmp_path / "bad" / "good.png")
    paths = sorted(str(p) for p in folder.iterdir())
    assert all(folders.inspect_image(p)[1] is None for p in paths)  # The cheap check passes.
    results = decode_check.check_files(paths)
    errors = {p.rsplit("/", 1)[1]: result for p, result in results.items()}
    assert errors["corrupt_idat.png"][0].startswith("TensorFlow cannot decode it")
    assert errors["header_only.jpg"][0].startswith("TensorFlow cannot decode it")
    assert errors["corrupt_scan.jpg"] == (None, errors["corrupt_scan.jpg"][1])
    assert "Corrupt JPEG data" in errors["corrupt_scan.jpg"][1]
    assert errors["good.png"] == (None, None)
    # Remembered per file version: nothing is decoded again, and a changed file is.
    decode_check._decode = None  # pylint: disable=protected-access
    try:
        assert decode_check.check_files(paths) == results
    finally:
        import importlib  # pylint: disable=g-import-not-at-top
        importlib.reload(decode_check)
    os.utime(paths[0], ns=(0, 0))
    assert decode_check.check_files(paths[:1]) == {paths[0]: results[paths[0]]}


def test_a_hard_link_into_another_class_trains_under_neither_label(tmp_path):
    root = tmp_path / "data"
    for name in ("MEL", "NV"):
        for index in range(3):
            save_image(root / name / f"{index}.jpg", image_format="JPEG")
    os.link(root / "NV" / "0.jpg", root / "MEL" / "hardlinked.jpg")  # One file, two labels.
    os.link(root / "NV" / "1.jpg", root / "NV" / "again.jpg")  # One file, one label: once.
    folder = folders.scan_image_folder(root)
    assert folder.class_counts().tolist() == [3, 2]
    bad = {path.rsplit("/", 1)[1]: reason for path, reason in folder.bad_files}
    assert set(bad) == {"hardlinked.jpg", "0.jpg", "again.jpg"}
    assert "one image under two labels" in bad["hardlinked.jpg"] and "(NV)" in bad[
        "hardlinked.jpg"]
    assert "(MEL)" in bad["0.jpg"] and "counted once" in bad["again.jpg"]


def test_validation_images_that_are_training_images_are_refused(tmp_path):
    for split in ("train", "val"):
        for name in ("MEL", "NV"):
            save_image(tmp_path / split / name / "0.jpg", image_format="JPEG")
    train = folders.scan_image_folder(tmp_path / "train")
    val = folders.scan_image_folder(tmp_path / "val")
    folders.refuse_overlap(train, val)  # Different files: fine.
    with pytest.raises(UserError, match=r"2 of the 2 validation image\(s\) .* are training"):
        folders.refuse_overlap(train, train)  # --data_val = --data_train.
    os.symlink("../../val", tmp_path / "train" / "MEL" / "valink")  # Val trained as MEL.
    linked = folders.scan_image_folder(tmp_path / "train")
    assert linked.class_counts().tolist() == [3, 1]
    with pytest.raises(UserError, match=r"2 of the 2 validation image\(s\)") as error:
        folders.refuse_overlap(linked, val)
    assert "\n" not in str(error.value)


def test_pipes_devices_and_line_breaks_in_class_names_are_named(tmp_path):
    save_image(tmp_path / "data" / "NV" / "0.jpg", image_format="JPEG")
    os.mkfifo(tmp_path / "data" / "NV" / "fifo.jpg")
    os.symlink("/dev/zero", tmp_path / "data" / "NV" / "zero.jpg")
    folder = folders.scan_image_folder(tmp_path / "data")
    assert sorted(reason for _, reason in folder.bad_files) == [
        "not a regular file (a pipe or a device)"] * 2
    (tmp_path / "data" / "Mel\nanoma").mkdir()
    with pytest.raises(UserError, match="class folder name 'Mel\\\\nanoma' .* line break"):
        folders.scan_image_folder(tmp_path / "data")


def test_a_file_rewritten_in_place_with_its_old_times_is_checked_again(tmp_path):
    from skin_keras.data import decode_check  # pylint: disable=g-import-not-at-top

    path = save_image(tmp_path / "a.jpg", image_format="JPEG")
    assert decode_check.check_files([str(path)])[str(path)] == (None, None)
    before = os.stat(path)
    contents = path.read_bytes()
    broken = contents[:200] + b"\x00" * (len(contents) - 202) + b"\xff\xd9"  # Same size.
    path.write_bytes(broken)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r
    assert decode_check.check_files([str(path)])[str(path)][0] is not None


def test_a_jpeg_with_more_pictures_after_it_mpo_is_a_jpeg(tmp_path):
    # Reliability 2026-12-07 C1: cameras and phones write JPEGs with an MPF segment.
    rng = np.random.default_rng(0)
    first, second = (Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
                     for _ in range(2))
    first.save(tmp_path / "camera.jpg", "MPO", save_all=True, append_images=[second])
    with Image.open(tmp_path / "camera.jpg") as image:
        assert image.format == "MPO"
    assert folders.inspect_image(tmp_path / "camera.jpg") == ((40, 30), None)
    assert folders.inspect_bytes((tmp_path / "camera.jpg").read_bytes()) == ((40, 30), None)
    first.save(tmp_path / "plain.jpg", "JPEG")
    decoded = [pipeline.decode_and_resize((tmp_path / name).read_bytes(), 40).numpy()
               for name in ("camera.jpg", "plain.jpg")]
    assert np.abs(decoded[0] - decoded[1]).max() < 1e-3  # The first picture.
