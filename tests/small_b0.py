"""EfficientNetV2-B0 at a quarter of its depth, for the tests that run in the pytest process.

`install()` makes `keras.applications.EfficientNetV2B0` (what `--model=b0` builds) build the
same network with `depth_coefficient=0.25` when it has no pretrained weights: every stage keeps
its block kind (fused-MBConv, MBConv with squeeze-excitation), widths, strides, layer names and
ops, but repeats its block 1-2 times instead of 1-8 (8 blocks instead of 16; the last two
stages keep a residual block). Tracing, training, saving and converting it take a third of the
time (a two-epoch run of conftest's `tiny_config`: 11 s instead of 33 s), which was most of the
suite's time. With weights="imagenet" the real B0 is built (and its download fails offline).

Scripts that tests start as subprocesses build the real B0 (the end-to-end tests), unless the
test starts them with `prelude(...)` because it compares their runs with one in the process.
"""

import keras

DEPTH = 0.25
REAL_B0 = keras.applications.EfficientNetV2B0


def small_b0(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax",
             include_preprocessing=True, name="efficientnetv2-b0"):
    from keras.src.applications import efficientnet_v2  # pylint: disable=g-import-not-at-top

    arguments = dict(include_top=include_top, weights=weights, input_tensor=input_tensor,
                     input_shape=input_shape, pooling=pooling, classes=classes,
                     classifier_activation=classifier_activation,
                     include_preprocessing=include_preprocessing, name=name)
    if weights is not None:
        return REAL_B0(**arguments)
    return efficientnet_v2.EfficientNetV2(width_coefficient=1.0, depth_coefficient=DEPTH,
                                          default_size=224, **arguments)


def install() -> None:
    keras.applications.EfficientNetV2B0 = small_b0


def prelude(tests_folder: str) -> str:
    """Python code that installs the small B0 in a subprocess (`python -c prelude + code`)."""
    return (f"import sys; sys.path.insert(0, {tests_folder!r}); import small_b0; "
            "small_b0.install()\n")
