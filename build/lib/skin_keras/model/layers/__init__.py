"""Every layer of ours a saved model can contain, registered with Keras under "skin_keras".

Importing this package registers them, so `keras.models.load_model` rebuilds any model
skin_keras wrote (infer/load.py does it for you); with plain Keras, pass `custom_objects()`:

    keras.models.load_model("runs/exp3/weights/best.keras", custom_objects=custom_objects())
"""

from skin_keras.model.layers.color_constancy import ColorConstancy
from skin_keras.model.layers.metadata import PatientMetadata
from skin_keras.model.layers.temperature import Temperature
from skin_keras.model.layers.unknown import UnknownDetector, UnknownScore
from skin_keras.model.metrics import ConfusionMatrixMetric
from skin_keras.model.spec import PACKAGE

LAYERS = (ColorConstancy, PatientMetadata, Temperature, UnknownScore, UnknownDetector)


def custom_objects() -> dict:
    """{"skin_keras>Name": class} for every layer (and the training metric) a saved model may
    hold, for `keras.models.load_model(..., custom_objects=custom_objects())`."""
    return {f"{PACKAGE}>{cls.__name__}": cls for cls in (*LAYERS, ConfusionMatrixMetric)}
