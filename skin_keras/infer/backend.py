"""Which backend runs a Keras model: Keras itself, or a converted copy (TFLite with LiteRT, ONNX
with ONNX Runtime) kept in <cache>/tflite and <cache>/onnx, keyed by the .keras file's content.

Each copy is its format's (formats/: the --backend names of BY_BACKEND). `--backend=auto`, on
a CPU-only machine, takes a cached ONNX copy (ONNX Runtime ran
EfficientNetV2-S 16% faster than LiteRT, docs/benchmarks.md), else TFLite when its copy is
cached or the job has at least AUTO_TFLITE_MIN_IMAGES images (converting pays for itself), else
Keras; it never converts to ONNX (tf2onnx peaks at 6.9 GB for S) and never fails on a
conversion. `--backend=onnx_int8` and `tflite_int8` (export.py's formats) are calibrated on
CALIBRATION_IMAGES of the validation folder of the run that trained the model, once, kept in
<cache>/onnx_int8 and tflite_int8; they agree less with float (docs/benchmarks.md).
Exported models run as they are.
"""

import logging
import tempfile
from pathlib import Path

import tensorflow as tf

from skin_keras.core import atomic, cache
from skin_keras.core.errors import UserError, first_line
from skin_keras.core.layout import RunFolder
from skin_keras.data import folders
from skin_keras.infer import formats
from skin_keras.infer.formats import CALIBRATION_IMAGES, CALIBRATION_SEED
from skin_keras.infer.runner import KerasRunner, Runner

_log = logging.getLogger(__name__)

BACKENDS = ("auto", "keras", *formats.BY_BACKEND)
# "auto" converts a .keras model to TFLite for a job of at least this many images (views
# included); a conversion done once is reused by every later job.
AUTO_TFLITE_MIN_IMAGES = 500


def _calibration_paths(runner: KerasRunner, backend: str) -> list[str]:
    """Up to CALIBRATION_IMAGES validation images of the run that trained the runner's model."""
    run = RunFolder.of_model(runner.source)
    if not run.params.is_file():
        raise UserError(f"--backend={backend} calibrates on the validation images of the run "
                        f"that trained {runner.source}, which is not in a run folder: export it "
                        f"with export.py --formats={backend} --data_val=FOLDER instead")
    data_val = run.read_params()["train parameters"].get("data_val", "")
    try:
        val = folders.scan_image_folder(data_val)
    except UserError as error:
        raise UserError(f"--backend={backend} calibrates on the run's validation images: "
                        f"{error}") from None
    chosen = folders.sample_indices(val, CALIBRATION_IMAGES, CALIBRATION_SEED)
    chosen = chosen[:formats.BY_BACKEND[backend].usable(len(chosen))]
    _log.info(f"int8: calibrating on {len(chosen)} images of {data_val}")
    return [str(val.paths[i]) for i in chosen]


def _converted(runner: KerasRunner, backend: str) -> bytes:
    """The runner's model as the `backend` format's bytes (calibrated for int8)."""
    fmt = formats.BY_BACKEND[backend]
    fmt.refuse(runner, f"--backend={backend}")
    with tempfile.TemporaryDirectory() as scratch:
        work = formats.Work(Path(scratch), _calibration_paths(runner, backend)
                            if fmt.calibrated else [])
        return fmt.convert(runner, work)


def cached_copy(runner: KerasRunner, backend: str, convert_if_missing: bool = True,
                digest: str | None = None) -> Runner | None:
    """A runner of the `backend` copy of the runner's .keras file, converted once per file
    content; None when not cached and `convert_if_missing` is False. `digest`: the file's SHA-1
    when the caller has it. The conversion runs in this process (for EfficientNetV2-S, TFLite
    peaks at about twice the memory of prediction, once)."""
    fmt = formats.BY_BACKEND[backend]
    path = cache.cache_root() / backend / (
        f"{digest or cache.file_sha1(runner.source)}{fmt.suffix}")
    if not path.exists():
        if not convert_if_missing:
            return None
        _log.info(f"converting {runner.source} to {fmt.title} (once; cached in "
                  f"{path.parent})")
        content = _converted(runner, backend)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_atomic(path, lambda tmp: Path(tmp).write_bytes(content))
        except OSError as error:  # A read-only or full cache: used once, not kept.
            _log.info(f"the {fmt.title} copy is not cached ({error.strerror}: "
                      f"{path.parent})")
        return fmt.open(content, runner.about)
    return fmt.open(path.read_bytes(), runner.about)


def select(runner: Runner, backend: str, images: int) -> Runner:
    """The runner to predict `images` images (views included) with on `backend`."""
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend={backend}; choose one of {', '.join(BACKENDS)}")
    if not isinstance(runner, KerasRunner) or backend == "keras":  # Exported: as they are.
        fmt = formats.BY_BACKEND.get(backend)
        if fmt is not None and runner.source.suffix != fmt.suffix:
            raise UserError(f"--backend={backend} needs a run folder, .keras or {fmt.suffix} "
                            f"file, not {runner.source}")
        if fmt is not None and fmt.calibrated and not fmt.is_kind(runner):
            raise UserError(f"--backend={backend}: {runner.source} is not an int8 file of "
                            f"that kind (export.py --formats={fmt.name} writes one)")
        return runner
    if backend == "auto" and tf.config.list_physical_devices("GPU"):
        return runner
    digest = cache.file_sha1(runner.source)  # Both copies are keyed by it: read the file once.
    if backend == "auto":
        try:
            copy = cached_copy(runner, "onnx", convert_if_missing=False, digest=digest)
        except Exception as error:  # pylint: disable=broad-except  (ONNX Runtime's own types)
            _log.info(f"the cached ONNX copy cannot be read ({first_line(error)}); not using it")
            copy = None
        if copy is not None:
            return copy
    chosen = "tflite" if backend == "auto" else backend
    try:
        copy = cached_copy(runner, chosen, convert_if_missing=(
            backend != "auto" or images >= AUTO_TFLITE_MIN_IMAGES), digest=digest)
    except UserError as error:  # Said as it is (no calibration images), unless auto's.
        if backend != "auto" or not isinstance(error, formats.ExportError):
            raise
        _log.info(f"TFLite conversion failed ({error}); predicting with Keras")
        return runner
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        name = formats.BY_BACKEND[chosen].title
        if backend != "auto":
            raise UserError(f"{runner.source} cannot be converted to {name}: "
                            f"{first_line(error)}") from None
        _log.info(f"{name} conversion failed ({first_line(error)}); predicting with Keras")
        return runner
    return runner if copy is None else copy
