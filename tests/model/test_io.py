"""Named inputs and outputs: models built now have them; models saved before they existed (a
list of inputs, one output, the rule in an UnknownDetector) load with them and answer the same."""

import keras
import numpy as np

from skin_keras.data.patient_metadata import MISSING, Record
from skin_keras.infer import load
from skin_keras.model import io, record
from skin_keras.model.layers import (
    PatientMetadata,
    Temperature,
    UnknownDetector,
    UnknownScore,
    custom_objects,
)

from conftest import probabilities, tiny_model


def legacy_calibrated(model: keras.Model, temperature: float, detector: UnknownDetector):
    """`model` laid out as files written before named outputs were: inputs [image, metadata],
    one output, the probabilities passing through the detector."""
    named = io.input_dict(model)
    calibrated = Temperature(temperature, name="temperature")(io.output_dict(model)[
        io.PROBABILITIES])
    return keras.Model([named["image"], named["metadata"]],
                       detector([calibrated, io.pooled_features(model)]), name=model.name)


def test_models_saved_before_named_outputs_load_with_them_and_answer_the_same(tmp_path):
    encoding = PatientMetadata(("female", "male"), ("back",))
    model = tiny_model(encoding=encoding)
    features = model.get_layer(io.POOLED).output.shape[-1]
    detector = UnknownDetector("feature_distance", -5.0, 0.9, 3, features,
                               name="unknown_detector")
    legacy = legacy_calibrated(model, 1.7, detector)
    rng = np.random.default_rng(0)
    detector.set_weights([rng.normal(size=(features, features)).astype(np.float32) * 0.01,
                          rng.normal(size=(3, features)).astype(np.float32)])
    images = rng.uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    records = [Record(30.0, "male", "back"), MISSING, Record(None, "female", "")]
    vectors = encoding.encode_records(records)
    expected = legacy([images, vectors]).numpy()

    (tmp_path / "run" / "weights").mkdir(parents=True)
    record.save_model(legacy, tmp_path / "run" / "weights" / "best.keras",
                      record.ModelInfo(("a", "b", "c"), 32, legacy.name))
    reloaded = keras.models.load_model(tmp_path / "run" / "weights" / "best.keras")
    assert not isinstance(reloaded.output, dict)  # Laid out as before.
    named = io.named(reloaded)
    assert io.input_names(named) == ("image", "metadata")
    answer = named({"image": images, "metadata": vectors})
    assert sorted(answer) == ["probabilities", "unknown_score"]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-6)
    # The score is the rule's own: the same layer configuration and weights, now an output.
    score = io.unknown_layer(named)
    assert type(score) is UnknownScore and score.rule == detector.rule
    pooled = keras.Model(io.input_dict(named), io.pooled_features(named))(
        {"image": images, "metadata": vectors})
    np.testing.assert_allclose(answer["unknown_score"],
                               detector.score(expected, pooled).numpy(), rtol=1e-5)
    assert io.temperature_of(named) == 1.7

    # Loaded as predict.py loads it: a runner with both names and the rule.
    runner = load.load(tmp_path / "run")
    assert runner.inputs == ("image", "metadata") and runner.unknown == detector.rule
    np.testing.assert_allclose(probabilities(runner, images, records=records), expected,
                               atol=1e-6)
    # A model built now has its names already: named() leaves it as it is.
    assert io.named(model) is model


def test_every_layer_of_ours_is_registered_under_one_package():
    objects = custom_objects()
    assert set(objects) == {keras.saving.get_registered_name(cls) for cls in objects.values()}
    assert all(name.startswith("skin_keras>") for name in objects)
    assert {cls.__name__ for cls in objects.values()} >= {
        "ColorConstancy", "PatientMetadata", "Temperature", "UnknownScore", "UnknownDetector",
        "ConfusionMatrixMetric"}
