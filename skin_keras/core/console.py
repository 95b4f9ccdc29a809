"""What reaches the console from below our code: TensorFlow's and LiteRT's native logs and the
deprecation warnings of their internals, silenced unless `--verbose` is on the command line.

TF_CPP_MIN_LOG_LEVEL=3 silences TensorFlow's C++ log after import, but not what TensorFlow 2.19+
logs while it is imported (tensorflow/tensorflow#100442: oneDNN and CUDA-driver notes), nor
LiteRT's "Created TensorFlow Lite XNNPACK delegate": for those, stderr's file descriptor points
at /dev/null for the duration of the call alone (Python exceptions raised there still reach the
user, printed after it is restored).
"""

import contextlib
import logging
import os
import sys
import warnings

from skin_keras.core import tensorflow_env

VERBOSE = "--verbose" in sys.argv


@contextlib.contextmanager
def quiet_native_stderr():
    """Native (C/C++) writes to stderr are dropped inside the block, unless --verbose."""
    if VERBOSE:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow_startup() -> None:
    """Imports TensorFlow and Keras without their start-up noise (CUDA probing on machines
    without a GPU: "failed call to cuInit", "Could not find cuda drivers"; oneDNN and
    CPU-instruction notes) and hides the deprecation warnings and tf.function retracing notes
    of their internals; sets `tensorflow_env`'s defaults first. The entry points that run
    TensorFlow call it before importing anything else."""
    tensorflow_env.set_defaults()
    if VERBOSE or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category,
                                module=r"(tensorflow|keras|tf2onnx|onnx|google|absl)")
    with quiet_native_stderr():
        import keras  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
        import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
