"""The model's named inputs and outputs: the one place where an optional part is present or not.

Every model skin_keras builds takes a dict and answers a dict:

    inputs   "image"          float32 [B, H, W, 3], RGB in [0, 255]
             "metadata"       float32 [B, size], encoded patient metadata (metadata models)
    outputs  "probabilities"  float32 [B, classes] (calibrated once the run is)
             "unknown_score"  float32 [B] (models with an "unknown" rule)

tf.data yields the same dicts, the runners of every backend (infer/) take and answer them, and
the exports keep the names. Models saved before the names existed (a list of inputs, one
output, the rule in an `UnknownDetector`) are given them when loaded (`named`).
"""

import keras

from skin_keras.data import pipeline
from skin_keras.model.layers.temperature import Temperature
from skin_keras.model.layers.unknown import UnknownDetector, UnknownScore

IMAGE, METADATA = pipeline.IMAGE, pipeline.METADATA  # As the datasets give them.
# A runner's batch (infer/runner.py) carries the patient records of its images under RECORDS
# (data.patient_metadata.Record, one per image); the model's METADATA input is their encoded
# vector, which the runner makes. One name, one meaning.
RECORDS = "records"
PROBABILITIES, UNKNOWN_SCORE = "probabilities", "unknown_score"
# Derived models (parts.py): the pooled image features out of `feature_model`, into `head_model`.
FEATURES = "features"
POOLED = "avg_pool"  # The layer whose output the unknown score reads (and the feature cache).


def input_dict(model: keras.Model) -> dict:
    """The model's inputs by name."""
    return {tensor.name.split(":")[0]: tensor for tensor in model.inputs}


def output_dict(model: keras.Model) -> dict:
    """The model's outputs by name (a model of one unnamed output: its probabilities)."""
    outputs = model.output
    return outputs if isinstance(outputs, dict) else {PROBABILITIES: model.outputs[0]}


def input_names(model: keras.Model) -> tuple[str, ...]:
    return tuple(input_dict(model))


def rebuilt(model: keras.Model, outputs: dict, name: str | None = None) -> keras.Model:
    """A model of the same named inputs and layers (weights shared) with other outputs."""
    return keras.Model(input_dict(model), outputs, name=name or model.name)


def named(model: keras.Model) -> keras.Model:
    """`model` with named inputs and outputs: itself when it has them, else the same layers
    (weights shared) behind them; an `UnknownDetector` becomes the `unknown_score` output."""
    legacy = next((layer for layer in model.layers if type(layer) is UnknownDetector), None)
    if isinstance(model.output, dict) and isinstance(model.input, dict) and legacy is None:
        return model
    outputs = output_dict(model)
    if legacy is not None:
        probabilities, features = legacy.input
        score = UnknownScore.from_config({**legacy.get_config(), "name": UNKNOWN_SCORE})
        outputs = {PROBABILITIES: probabilities, UNKNOWN_SCORE: score([probabilities, features])}
        score.set_weights(legacy.get_weights())
    return rebuilt(model, outputs)


def unknown_layer(model: keras.Model) -> UnknownScore | None:
    """The layer giving the model's unknown score; None for a model without a rule."""
    return next((layer for layer in model.layers if isinstance(layer, UnknownScore)), None)


def temperature_of(model: keras.Model) -> float | None:
    """The temperature of a calibrated model; None for one as trained."""
    return next((layer.temperature for layer in model.layers
                 if isinstance(layer, Temperature)), None)


def pooled_features(model: keras.Model):
    """The output of the model's pooling layer (its image features); None for a model without
    one backbone (an ensemble)."""
    layer = next((layer for layer in model.layers if layer.name == POOLED), None)
    return None if layer is None else layer.output


def calibrated(model: keras.Model, temperature: float, score: UnknownScore) -> keras.Model:
    """The same layers (weights shared) with a `Temperature` after the probabilities, and
    `score` as the `unknown_score` output, reading the calibrated probabilities and the pooled
    features (an ensemble, which has none: the probabilities again)."""
    probabilities = Temperature(temperature, name="temperature")(output_dict(model)[PROBABILITIES])
    features = pooled_features(model)
    return rebuilt(model, {PROBABILITIES: probabilities, UNKNOWN_SCORE: score(
        [probabilities, probabilities if features is None else features])})
