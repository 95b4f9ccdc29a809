"""Patient metadata in the model: the encoding layer (missing values, unseen categories, row
blanking in training), a metadata model saved and reloaded with its vocabulary, Grad-CAM."""

import keras
import numpy as np
import tensorflow as tf

from skin_keras.data.patient_metadata import MISSING, Record, normalize
from skin_keras.model import io, parts
from skin_keras.model.layers import metadata as metadata_encoding
from skin_keras.model.layers.metadata import PatientMetadata

from conftest import probabilities, tiny_model


def test_encoding_of_missing_values_unseen_categories_and_bad_ages():
    encoding = PatientMetadata.fit([Record(40.0, "male", "back"), Record(None, "female", ""),
                                    Record(60.0, "", "face")])
    assert encoding.sexes == ("female", "male") and encoding.sites == ("back", "face")
    assert encoding.feature_names() == [
        "age_approx / 100", "age_approx missing", "sex=female", "sex=male", "sex missing",
        "anatom_site_general=back", "anatom_site_general=face", "anatom_site_general missing"]
    vectors = encoding.encode(
        np.array([45.0, np.nan, 400.0, -3.0, 120.0], np.float32),
        np.array([" Male ", "", "other", "UNKNOWN", "female"], object),
        np.array(["face", "palms/soles", "", "BACK", "nan"], object)).numpy()
    np.testing.assert_allclose(vectors, [
        [0.45, 0, 0, 1, 0, 0, 1, 0],
        [0, 1, 0, 0, 1, 0, 0, 1],    # NaN age; empty sex; a site training never saw.
        [0, 1, 0, 0, 1, 0, 0, 1],    # Age 400 is not believed; "other" is unknown.
        [0, 1, 0, 0, 1, 1, 0, 0],    # Negative age; "UNKNOWN" is missing; case ignored.
        [1, 0, 1, 0, 0, 0, 0, 1]], atol=1e-6)
    np.testing.assert_array_equal(encoding.missing_vector(), encoding.encode_records([MISSING])[0])
    # Exactly one hot per categorical column, whatever comes in.
    assert (vectors[:, 2:5].sum(1) == 1).all() and (vectors[:, 5:].sum(1) == 1).all()


def test_the_graph_compares_categories_as_python_does_for_any_alphabet():
    # The SavedModel signatures encode raw strings in the graph; predict.py normalizes them
    # in Python first: upper-case umlauts and a no-break space must mean the same in both.
    encoding = PatientMetadata(("männlich", "weiblich"), ("oberschenkel", "ärmel"))
    raw = ["WEIBLICH", "\u00a0ÄRMEL\u2003"]
    in_graph = encoding.encode([40.0], [raw[0]], [raw[1]]).numpy()
    in_python = encoding.encode_records([Record(40.0, normalize(raw[0]), normalize(raw[1]))])
    np.testing.assert_array_equal(in_graph, in_python)
    np.testing.assert_allclose(in_graph, [[0.4, 0, 0, 1, 0, 0, 1, 0]], atol=1e-6)
    # What the model gets anything from: a believed age or a category it knows.
    assert encoding.knows([Record(None, "m", "left big toe"),
                           Record(None, "weiblich", ""), Record(30.0, "", "")]).tolist() == [
        False, True, True]


def test_training_blanks_whole_rows_at_the_rate_and_the_model_never_does():
    encoding = PatientMetadata(("female", "male"), ("back",))
    vectors = np.repeat(encoding.encode_records([Record(50.0, "male", "back")]), 4000, axis=0)
    np.testing.assert_array_equal(encoding(vectors, training=True), vectors)
    dataset = tf.data.Dataset.from_tensor_slices(vectors).map(
        metadata_encoding.row_blanker(encoding, 0.3, seed=1))
    out = np.stack(list(dataset.as_numpy_iterator()))
    blanked = (out == encoding.missing_vector()).all(axis=1)
    kept = (out == vectors).all(axis=1)
    assert (blanked | kept).all()  # Whole rows, never parts of one.
    assert 0.27 < blanked.mean() < 0.33


def test_a_fused_model_saves_and_reloads_with_its_vocabulary(tmp_path):
    encoding = PatientMetadata(("female", "male"), ("back", "face"))
    model = tiny_model(encoding=encoding)
    assert io.input_names(model) == ("image", "metadata")
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    vectors = encoding.encode_records([Record(30.0, "male", "face"), MISSING,
                                       Record(80.0, "female", "back"), Record(None, "x", "")])
    before = probabilities(model, images, metadata=vectors)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(probabilities(loaded, images, metadata=vectors), before,
                               atol=1e-6)
    reloaded = parts.metadata_encoding_of(loaded)
    assert (reloaded.sexes, reloaded.sites) == (encoding.sexes, encoding.sites)
    # The metadata reaches the output (the branch is wired), and an image-only model has none.
    assert not np.allclose(before[0], probabilities(model, images[:1], metadata=vectors[1:2])[0])
    plain = tiny_model()
    assert io.input_names(plain) == ("image",) and parts.metadata_encoding_of(plain) is None


def test_grad_cam_of_a_metadata_model_explains_the_image_path():
    from skin_keras.infer import gradcam  # pylint: disable=g-import-not-at-top

    encoding = PatientMetadata(("female", "male"), ("back",))
    model = tiny_model(encoding=encoding, img_size=64)
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    records = [Record(30.0, "male", "back"), MISSING]
    vectors = encoding.encode_records(records)
    maps, classes = gradcam.grad_cam(model, images, records=records)
    assert maps.shape == (2, 64, 64) and 0 <= maps.min() and maps.max() <= 1
    # Without a class given it explains the model's prediction (metadata included) ...
    np.testing.assert_array_equal(classes,
                                  probabilities(model, images, metadata=vectors).argmax(1))
    # ... and for a given class the map does not depend on the metadata (the head is linear).
    fixed = np.array([2, 0])
    np.testing.assert_allclose(gradcam.grad_cam(model, images, fixed, records=records)[0],
                               gradcam.grad_cam(model, images, fixed)[0], atol=1e-5)
