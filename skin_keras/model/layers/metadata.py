"""The encoding of patient metadata, a Keras layer saved with the model.

    age_approx            -> age / 100 clipped to [0, 1], and a missing indicator
    sex                   -> one-hot over the training vocabulary + "missing"
    anatom_site_general   -> one-hot over the training vocabulary + "missing"

`PatientMetadata` is the first layer of the model's metadata input: its vocabularies are part of
its config, so a saved model knows how to encode raw values and nothing beside it can get lost.
`encode` (TensorFlow ops) is the one definition of the encoding: training, prediction and the
exported SavedModel's raw-value signatures call it; a TFLite file takes its output as a second
input, described in the file's metadata.json. Missing values and categories the training CSV did
not have become "missing", never an error. In training the input pipeline blanks whole rows to
"missing" (`row_blanker`, with probability --metadata_dropout), so the model also learns to do
without; the layer itself never changes its input.
"""

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from skin_keras.data.patient_metadata import (
    AGE_SCALE,
    COLUMNS,
    MAX_AGE,
    Record,
    as_arrays,
)
from skin_keras.model.spec import PACKAGE


# What Python's str.strip() removes (Unicode white space, e.g. a no-break space), for RE2:
# tf.strings.strip removes ASCII white space only.
_OUTER_SPACE = r"^[\s\p{Z}\x{0b}\x{1c}-\x{1f}\x{85}]+|[\s\p{Z}\x{0b}\x{1c}-\x{1f}\x{85}]+$"


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatientMetadata(keras.layers.Layer):
    """Encoded metadata [B, size] in, the same out. Holds the vocabularies; `encode` turns raw
    values into the vector (as `patient_metadata.normalize` compares them: Unicode-aware).
    Always float32."""

    def __init__(self, sexes=(), sites=(), **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.sexes, self.sites = tuple(sexes), tuple(sites)

    @classmethod
    def fit(cls, records: Sequence[Record], **kwargs):
        """The encoding whose vocabularies are the values `records` (the training images') have."""
        return cls(sorted({r.sex for r in records} - {""}),
                   sorted({r.anatom_site_general for r in records} - {""}), **kwargs)

    @property
    def size(self) -> int:
        return 2 + len(self.sexes) + 1 + len(self.sites) + 1

    def feature_names(self) -> list[str]:
        return (["age_approx / 100", "age_approx missing"]
                + [f"sex={value}" for value in self.sexes] + ["sex missing"]
                + [f"anatom_site_general={value}" for value in self.sites]
                + ["anatom_site_general missing"])

    def encode(self, ages, sexes, sites) -> tf.Tensor:
        """Raw values [B] (ages float, NaN or out of [0, 120] = missing; strings, "" or unknown
        categories = missing) -> float32 [B, size]."""
        ages = tf.cast(tf.convert_to_tensor(ages), tf.float32)
        known = tf.math.is_finite(ages) & (ages >= 0.0) & (ages <= MAX_AGE)
        scaled = tf.where(known, tf.clip_by_value(ages / AGE_SCALE, 0.0, 1.0), 0.0)
        parts = [scaled[:, None], tf.cast(~known, tf.float32)[:, None]]
        for values, vocabulary in ((sexes, self.sexes), (sites, self.sites)):
            values = tf.strings.lower(tf.strings.regex_replace(
                tf.convert_to_tensor(values, tf.string), _OUTER_SPACE, ""), encoding="utf-8")
            matches = tf.equal(values[:, None], tf.constant(list(vocabulary) or [""],
                                                            tf.string)[None, :])
            matches = matches[:, :len(vocabulary)]
            found = tf.reduce_any(matches, axis=1)
            parts += [tf.cast(matches, tf.float32), tf.cast(~found, tf.float32)[:, None]]
        return tf.concat(parts, axis=1)

    def encode_records(self, records: Sequence[Record]) -> np.ndarray:
        if not records:
            return np.zeros((0, self.size), np.float32)
        return self.encode(*as_arrays(records)).numpy()

    def knows(self, records: Sequence[Record]) -> np.ndarray:
        """Per record, whether the model gets anything from it: a believed age or a category
        in its vocabulary (a record of unknown categories runs as missing)."""
        vectors = self.encode_records(records)
        sex_missing, site_missing = 2 + len(self.sexes), self.size - 1
        return ((vectors[:, 1] == 0) | (vectors[:, sex_missing] == 0)
                | (vectors[:, site_missing] == 0)) if len(records) else np.zeros(0, bool)

    def varied_records(self, count: int) -> list[Record]:
        """`count` records in which every age band, every vocabulary value and "missing" of
        each input occur (for checking and calibrating exports without a metadata CSV)."""
        sexes, sites = ("", *self.sexes), ("", *self.sites)
        return [Record(None if i % 7 == 6 else float(5 + 10 * (i % 9)), sexes[i % len(sexes)],
                       sites[(i // 2) % len(sites)]) for i in range(count)]

    def missing_vector(self) -> np.ndarray:
        """`encode` of a record with nothing known (tested equal), as a NumPy constant that
        graphs can hold."""
        return np.array([0.0, 1.0] + [0.0] * len(self.sexes) + [1.0] + [0.0] * len(self.sites)
                        + [1.0], np.float32)

    def call(self, vectors):
        return tf.cast(vectors, tf.float32)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "sexes": list(self.sexes), "sites": list(self.sites)}

    def describe(self) -> dict:
        """For metadata.json and train_params.json: how to build the vector a TFLite file takes."""
        return {"columns": list(COLUMNS), "vector size": self.size,
                "vector": self.feature_names(),
                "age_approx": f"age / {AGE_SCALE:g} clipped to [0, 1]; missing (empty, not a "
                              f"number, outside [0, {MAX_AGE:g}]): 0 and the indicator 1",
                "categories": "stripped and lower-cased; empty, 'unknown' or not in the "
                              "vocabulary: the missing column 1",
                "vocabulary": {"sex": list(self.sexes), "anatom_site_general": list(self.sites)}}


def row_blanker(encoding: PatientMetadata, rate: float, seed: int | None = None):
    """A tf.data map function for training: one encoded vector -> itself, or with probability
    `rate` the vector of a record with nothing known (a whole row, never part of one).

    In the input pipeline, where the augmentations are, not in the model: the model stays the
    same function in fit() and predict().
    """
    missing = tf.constant(encoding.missing_vector())

    def blank(vector):
        return tf.where(tf.random.uniform((), seed=seed) < rate, missing, vector)
    return blank
