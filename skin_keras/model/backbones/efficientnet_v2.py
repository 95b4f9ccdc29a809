"""EfficientNetV2 backbones from `keras.applications`, with Keras' ImageNet weights (downloaded
and cached by Keras), none, or a local weights file for machines offline."""

import os
import warnings

import keras

from skin_keras.core.errors import UserError, first_line


def backbone(constructor_name: str, weights: str) -> keras.Model:
    """The EfficientNetV2 feature extractor (no top, its own rescaling), for images of any size.

    Args:
      constructor_name: The keras.applications constructor (EfficientNetV2S, ...).
      weights: "imagenet" (Keras downloads and caches the file), "none" (random initialisation),
        or a path to a backbone weights file: a `.weights.h5` saved by Keras 3, or the
        `efficientnetv2-*_notop.h5` file Keras downloads, copied from a machine with internet.
    """
    variant = constructor_name.removeprefix("EfficientNetV2").lower()
    constructor = getattr(keras.applications, constructor_name)
    if weights.lower() in ("imagenet", "none"):
        keras_weights = None if weights.lower() == "none" else "imagenet"
    else:
        if not os.path.isfile(weights):
            raise UserError(f"--weights={weights}: no such file (use imagenet, none or a path to a "
                            "backbone weights file)")
        keras_weights = None
    try:
        model = constructor(include_top=False, weights=keras_weights,
                            input_shape=(None, None, 3), include_preprocessing=True)
    except Exception as error:  # Keras raises a bare Exception when the download fails.
        if "URL fetch failure" not in str(error):
            raise
        cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
        raise UserError(
            f"could not download the ImageNet weights of EfficientNetV2-{variant.upper()} (no "
            f"internet?): copy efficientnetv2-{variant}_notop.h5 into {cache}/ or pass "
            "--weights=PATH_TO_FILE; --model=lite0 is pretrained and works offline (its weights "
            "are an installed package); --weights=none trains from scratch") from error
    if keras_weights is None and weights.lower() != "none":
        try:
            with warnings.catch_warnings():  # A mismatch raises below; spare the user its echo.
                warnings.simplefilter("ignore")
                model.load_weights(weights)
        except (ValueError, OSError, KeyError) as error:
            raise UserError(f"--weights={weights} does not fit "
                            f"EfficientNetV2-{variant.upper()}: {first_line(error)}") from error
    return model
