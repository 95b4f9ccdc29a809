"""Class weights, balanced sampling, early stopping, the NaN stop and mixed precision."""

import json

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from conftest import tiny_config
from skin_keras import input_pipeline, models, synthetic, training
from skin_keras.errors import UserError


def test_balanced_class_weights_are_sklearns_and_sqrt_is_milder():
    counts = np.array([90, 30, 10, 0])
    labels = np.repeat(np.arange(4), counts)
    balanced = training.class_weights(counts, "balanced")
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose([balanced[i] for i in range(3)], expected)
    assert balanced[3] == 0.0  # A class without training images gets no weight.
    mild = training.class_weights(counts, "sqrt")
    for weights in (balanced, mild):  # Mean weight over the training images is 1.
        assert sum(weights[i] * counts[i] for i in range(4)) == pytest.approx(counts.sum())
    assert mild[2] / mild[0] == pytest.approx(np.sqrt(balanced[2] / balanced[0]))
    assert training.class_weights(counts, "none") is None


def test_balanced_sampling_gives_every_class_the_same_share():
    counts = [300, 60, 12]
    labels = np.repeat(np.arange(3), counts)
    paths = [f"file_{i}.jpg" for i in range(len(labels))]
    stream = input_pipeline.balanced_file_stream(paths, labels, num_classes=4, seed=0)
    drawn = np.concatenate([[label for _, label in stream.as_numpy_iterator()]
                            for _ in range(6)])  # Six epochs of len(paths) draws each.
    assert len(drawn) == 6 * len(labels)
    shares = np.bincount(drawn, minlength=4) / len(drawn)
    np.testing.assert_allclose(shares[:3], 1 / 3, atol=0.025)
    assert shares[3] == 0  # A class with no files is not drawn.
    natural = np.bincount(labels) / len(labels)
    assert natural[2] < 0.04  # Without balancing, the rare class is 3% of the draws.


def test_balanced_sampling_pipeline_yields_decoded_batches(tmp_path):
    paths = synthetic.write_class_folders(tmp_path, [20, 2], ("common", "rare"), size=(16, 12))
    labels = np.array([0] * 20 + [1] * 2)
    dataset = input_pipeline.make_dataset([str(p) for p in paths], labels, 2, img_size=16,
                                          batch_size=11, training=True, seed=0,
                                          sampling="balanced")
    batches = list(dataset)
    assert sum(b[0].shape[0] for b in batches) == 22
    assert batches[0][0].shape[1:] == (16, 16, 3)
    rare = sum(float(b[1].numpy()[:, 1].sum()) for b in batches)
    assert rare > 4  # About half of 22 draws, against 2 in natural order.


@pytest.mark.parametrize("overrides, message", [
    (dict(class_weight="inverse"), "unknown --class_weight=inverse"),
    (dict(sampling="oversample"), "unknown --sampling=oversample"),
    (dict(patience=-1), "--patience=-1 is out of range"),
    (dict(precision="float8"), "unknown --precision=float8"),
])
def test_bad_imbalance_options_are_rejected(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        tiny_config(tmp_path, tmp_path, **overrides)


def test_weighted_balanced_run_logs_its_weights_and_stops_early(tmp_path, tiny_dataset, capsys):
    # A learning rate of 1e-12 leaves the model unchanged, so val_loss never improves.
    config = tiny_config(tmp_path, tiny_dataset, class_weight="balanced", sampling="balanced",
                         patience=1, epochs=5, lr=1e-12, monitor="val_loss", freeze_layers=True)
    run = training.train_and_evaluate(config, verbose=0)
    params = json.loads((run / "train_params.json").read_text())
    assert params["dataset"]["class weights"] == {
        "Basal cell carcinoma": 1.0, "Melanocytic nevus": 1.0, "Melanoma": 1.0}
    assert params["train parameters"]["sampling"] == "balanced"
    log = json.loads((run / "log.json").read_text())
    assert list(log) == ["epoch:1", "epoch:2"]
    assert "early stopping after epoch 2" in capsys.readouterr().out


def test_a_nan_loss_stops_the_run_and_keeps_the_best_weights(tmp_path, tiny_dataset, capsys):
    config = tiny_config(tmp_path, tiny_dataset, optim="SGD", lr=1e30, epochs=4,
                         freeze_layers=True)
    run = training.train_and_evaluate(config, verbose=0)
    log = json.loads((run / "log.json").read_text())
    assert len(log) < 4
    assert not np.isfinite(log[f"epoch:{len(log)}"]["train info"]["loss"])
    assert "the loss became nan" in capsys.readouterr().out
    assert (run / "weights" / "last.keras").exists()
    # Only an epoch that ended with a finite loss may be the best one.
    finite = [key for key, entry in log.items() if np.isfinite(entry["train info"]["loss"])]
    assert (run / "weights" / "best.keras").exists() == bool(finite)


def test_mixed_precision_run_keeps_float32_weights_and_output(tmp_path, tiny_dataset):
    import keras  # pylint: disable=g-import-not-at-top

    config = tiny_config(tmp_path, tiny_dataset, precision="mixed_bfloat16", epochs=1,
                         freeze_layers=True)
    run = training.train_and_evaluate(config, verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # Restored afterwards.
    model = keras.models.load_model(run / "weights" / "best.keras")
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    stem = models.backbone_of(model).get_layer("stem_conv")
    assert stem.dtype_policy.name == "mixed_bfloat16"  # The backbone computes in bfloat16.
    assert all(w.dtype == "float32" for w in model.weights)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probabilities = model.predict(images, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
