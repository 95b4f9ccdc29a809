"""serve.py's job: load a model, build the application (app.py) and serve it with uvicorn.

Binds to 127.0.0.1 unless --host says otherwise; any other address needs a token (--token or
$SKIN_KERAS_TOKEN), which every API call must then carry as `Authorization: Bearer <token>`.
"""

import dataclasses
import ipaddress
import logging
import os
import socket
import tempfile
from pathlib import Path

from skin_keras.core.errors import UserError
from skin_keras.core.options import check_options, option
from skin_keras.core.layout import RunFolder
from skin_keras.infer import backend as backends
from skin_keras.infer import load
from skin_keras.infer.runner import KerasRunner, Runner
from skin_keras.serve import app as application
from skin_keras.serve.model_service import ModelService

_log = logging.getLogger(__name__)

TOKEN_VARIABLE = "SKIN_KERAS_TOKEN"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """serve.py's flags."""

    model_path: str = option(None, "Run folder (weights/best.keras), a .keras file, an "
                             "exported SavedModel folder, a .tflite or an .onnx file.",
                             required=True)
    backend: str = option("auto", "As predict.py's --backend: keras, tflite, onnx, onnx_int8, "
                          "tflite_int8 or auto (a cached ONNX or TFLite copy of a .keras model when there is one, "
                          "else Keras).", choices=backends.BACKENDS)
    host: str = option("127.0.0.1", "Address to listen on. Anything but this machine's "
                       "loopback needs --token.")
    port: int = option(8000, "Port to listen on (0: any free port; the address is printed).",
                       low=0, high=65535)
    token: str = option("", f"Bearer token every API call must carry (default: "
                        f"${TOKEN_VARIABLE}); required when --host is not a loopback address.")
    model_name: str = option("skin", "The model's name in TF Serving's URLs "
                             "(/v1/models/<name>:predict), as export.py's --name.")
    max_upload_mb: float = option(20.0, "Largest request body accepted, in MB (a page upload "
                                  "is one image; an API request its JSON).", low=0.01,
                                  high=2048)
    max_concurrent: int = option(1, "Batches predicted at the same time (each uses all "
                                 "cores); more requests wait and run together.", low=1,
                                 high=64)
    max_batch: int = option(8, "Most images in one batch: the requests waiting while a batch "
                            "runs are predicted together, up to this many images.", low=1,
                            high=1024)
    max_waiting: int = option(64, "Requests that may wait beyond the --max_concurrent being "
                              "answered (page and API predictions and Grad-CAM alike); one "
                              "more gets 503 (busy) at once, before its body is read.", low=0,
                              high=4096)
    keep_uploads: str = option("", "Folder to keep every uploaded image in (named by its "
                               "SHA-256); by default nothing uploaded is written.", path=True)

    def __post_init__(self):
        check_options(self)


def model_info(config: ServeConfig, loaded: Runner, runner: Runner,
               service: ModelService) -> dict:
    """What the page shows and /api/model answers: the model's own record."""
    source = loaded.source
    encoding = runner.about.encoding
    shown = source.name  # A run's weights/best.keras, a SavedModel's <name>/<version>: named
    if source.name == RunFolder.BEST or source.name.isdigit():  # with their parents.
        shown = str(Path(*source.parts[-3 if source.name == RunFolder.BEST else -2:]))
    return {
        "name": config.model_name,
        "version": source.name if source.name.isdigit() else "1",  # A SavedModel's, as in TF
        "source": shown,                                             # Serving.

        "architecture": loaded.model.name if isinstance(loaded, KerasRunner) else "",
        "backend": type(runner).__name__.removesuffix("Runner").lower(),
        "class_names": list(runner.class_names), "img_size": runner.img_size,
        "temperature": loaded.temperature,
        "unknown": runner.unknown.to_dict() if runner.unknown is not None else None,
        "metadata": (encoding.describe()["vocabulary"] if encoding is not None else {}) if (
            service.takes_metadata) else None,
        "explain": service.can_explain, "csv_header": service.csv_header(),
        "max_upload_bytes": int(config.max_upload_mb * 2 ** 20)}


def build(config: ServeConfig):
    """The application for `config` and the model's record (`model_info`)."""
    token = config.token or os.environ.get(TOKEN_VARIABLE, "")
    if not _is_loopback(config.host) and not token:
        raise UserError(f"--host={config.host} lets other machines in: give a token with "
                        f"--token or ${TOKEN_VARIABLE} (clients send 'Authorization: Bearer "
                        "<token>')")
    keep = Path(config.keep_uploads) if config.keep_uploads else None
    if keep is not None:
        _check_writable(keep)
    loaded = load.load(config.model_path)
    runner = backends.select(loaded, config.backend, 0)
    service = ModelService(loaded, runner, config.max_concurrent, keep, config.max_batch)
    info = model_info(config, loaded, runner, service)
    return application.make_app(
        service, info, token or None, info["max_upload_bytes"],
        capacity=config.max_concurrent + config.max_waiting,
        tokenless_loopback=not token and _is_loopback(config.host)), info


def _check_writable(folder: Path) -> None:
    """UserError (at start, not at the first upload) when `folder` cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"--keep_uploads={folder} cannot be written "
                        f"({error.strerror or error})") from None


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); UserError when it cannot be."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except (OSError, UnicodeError) as error:
        raise UserError(f"cannot listen on {host}:{port}: "
                        f"{getattr(error, 'strerror', None) or error}") from None
    return listener


def serve(config: ServeConfig) -> None:
    """Serves until interrupted (Ctrl+C)."""
    import uvicorn  # pylint: disable=g-import-not-at-top  (the server only)

    app, info = build(config)
    listener = open_socket(config.host, config.port)
    host, port = listener.getsockname()[:2]
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    token = config.token or os.environ.get(TOKEN_VARIABLE, "")
    _log.info(f"serving {info['source']} ({len(info['class_names'])} classes, "
              f"{info['img_size']} px, {info['backend']}) as '{info['name']}'\n"
              f"  page:        {base}/{'#token=' + token if token else ''}\n"
              f"  TF Serving:  POST {base}/v1/models/{info['name']}:predict\n"
              "  stop with Ctrl+C")
    try:
        uvicorn.Server(uvicorn_config(app)).run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn stops gracefully, then passes the signal on.
        pass
    _log.info("stopped")


def uvicorn_config(app):
    """How uvicorn runs the application: on SIGTERM or Ctrl+C the requests running finish
    (a stalled body times out: app.py), whatever they take."""
    import uvicorn  # pylint: disable=g-import-not-at-top  (the server only)

    return uvicorn.Config(app, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=None)


def _is_loopback(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)
