"""The web application: the page (one HTML file with its script and style, all served from
here: it loads nothing from elsewhere, and its Content-Security-Policy forbids it to), the page's
own small API and TF Serving's REST API (tf_serving.py).

    GET  /                     the page          GET  /api/model     the model's record
    POST /api/predict?name=&age_approx=&sex=&anatom_site_general=   body: one image's bytes
         -> {"row": predict.py's row, "csv": its predictions.csv cells}
    POST /api/explain?...      body: one image's bytes -> PNG, Grad-CAM over the image
    /v1/models/...             TF Serving (tf_serving.py)

Every error is JSON {"error": "..."} with a 4xx status (5xx only for a fault of the server,
logged with its traceback); with a token, every API call needs `Authorization: Bearer <token>`.
"""

import contextlib
import hmac
import logging
import math
import re
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from skin_keras.data.patient_metadata import Record
from skin_keras.infer import outputs
from skin_keras.serve import tf_serving
from skin_keras.serve.admission import Admission, BrowserGuard
from skin_keras.serve.model_service import ModelService, RequestError, Upload

_log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_TF_SERVING_PATH = re.compile(
    r"(?P<name>[^/:]+)(/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>:predict|:classify|:regress|/metadata)?")
_DRAIN_FACTOR = 4  # An oversized body is read (and dropped) up to this many limits, then cut.
BODY_IDLE_SECONDS = 30.0  # A body that sends nothing for this long is answered 408.


def make_app(service: ModelService, info: dict, token: str | None = None,
             max_upload_bytes: int = 20 * 2 ** 20, capacity: int = 65,
             tokenless_loopback: bool = False) -> Starlette:
    """The application serving `service`; `info` is the model's record the page shows (its
    name, version, classes, input size, ...). `capacity`: requests admitted to wait for the
    model at once (admission.py); `tokenless_loopback`: a server without a token on this
    machine, open to what any web page makes a browser send (admission.BrowserGuard)."""
    handlers = _Handlers(service, info, token, max_upload_bytes, Admission(capacity))

    @contextlib.asynccontextmanager
    async def lifespan(app):  # Every admitted request can have its thread while it waits.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, capacity + 8)
        yield

    return Starlette(lifespan=lifespan, middleware=[
        Middleware(BrowserGuard, tokenless_loopback=tokenless_loopback)], routes=[
        Route("/", handlers.page), Route("/api/model", handlers.model),
        Route("/api/predict", handlers.predict_upload, methods=["POST"]),
        Route("/api/explain", handlers.explain_upload, methods=["POST"]),
        Route("/v1/models/{rest:path}", handlers.tf_serving, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=STATIC))],
        exception_handlers={RequestError: _refused, HTTPException: _http_error,
                            Exception: _fault})


class _Handlers:
    """The routes' handlers, sharing the service, the token and the size limit."""

    def __init__(self, service: ModelService, info: dict, token: str | None,
                 max_upload_bytes: int, admission: Admission):
        self.service, self.info, self.token = service, info, token
        self.max_upload_bytes, self.admission = max_upload_bytes, admission

    def check_token(self, request: Request) -> None:
        """RFC 7235: the scheme's case does not matter; the token is compared as UTF-8 bytes
        (the header's bytes as sent: Starlette decodes them as Latin-1)."""
        if not self.token:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode("latin-1", "replace"), self.token.encode()):
            raise RequestError(401, "this server needs the header 'Authorization: Bearer "
                               "<token>' (the token it was started with)")

    async def body(self, request: Request) -> bytes:
        """The request's body after the token check: 413 above the limit, up front when the
        declared length is over a few limits (else the excess is read and dropped up to a few
        limits, so that a client still sending reads the answer); 408 when the body stalls."""
        self.check_token(request)
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise RequestError(400, "Content-Length is not a number")
        limit = self.max_upload_bytes
        too_large = RequestError(413, f"the request is larger than the server's limit of "
                                 f"{limit / 2 ** 20:g} MB (--max_upload_mb)")
        if declared is not None and int(declared) > _DRAIN_FACTOR * limit:
            raise too_large  # Up front: not worth reading (a body not much over is drained).
        chunks, total = [], 0
        stream = request.stream().__aiter__()
        try:
            while True:
                with anyio.move_on_after(BODY_IDLE_SECONDS) as waited:
                    chunk = await stream.__anext__()
                if waited.cancelled_caught:
                    raise RequestError(408, f"the body stalled (nothing for "
                                       f"{BODY_IDLE_SECONDS:g} s)")
                total += len(chunk)
                if total > _DRAIN_FACTOR * limit:
                    break
                if total <= limit:
                    chunks.append(chunk)
        except StopAsyncIteration:
            pass
        except ClientDisconnect:
            _log.info(f"a client went away while sending {request.url.path}")
            raise RequestError(400, "the client disconnected") from None
        if total > limit:
            raise too_large
        return b"".join(chunks)

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=_HEADERS)

    async def model(self, request: Request) -> Response:
        self.check_token(request)
        return JSONResponse(self.info)

    async def predict_upload(self, request: Request) -> Response:
        self.check_token(request)
        with self.admission.enter():
            upload = _upload(request, await self.body(request), self.service.takes_metadata)
            rows = await run_in_threadpool(self.service.predict, [upload])
        return JSONResponse({"row": _json_row(rows[0]), "csv": outputs.csv_cells(rows[0])})

    async def explain_upload(self, request: Request) -> Response:
        self.check_token(request)
        if not self.service.can_explain:
            raise RequestError(400, "Grad-CAM needs a Keras model (a run folder or .keras "
                               "file of one classifier)")
        with self.admission.enter():
            upload = _upload(request, await self.body(request), self.service.takes_metadata)
            return Response(await run_in_threadpool(self.service.explain, upload),
                            media_type="image/png")

    async def tf_serving(self, request: Request) -> Response:
        self.check_token(request)  # Before anything, even a 404, names the model.
        name, version = self.info["name"], self.info["version"]
        match = _TF_SERVING_PATH.fullmatch(request.path_params["rest"])
        if match is None:
            raise RequestError(404, f"no such resource: {request.url.path}")
        asked = match["version"]  # An integer, as TF Serving reads it: 01 is 1.
        if match["name"] != name or (asked is not None and int(asked) != int(version)) or (
                match["label"] is not None):
            raise RequestError(404, f"Servable not found for request: {match['name']}"
                               f"{'/' + match['version'] if match['version'] else ''} "
                               f"(this server has {name}, version {version})")
        tail = match["tail"]
        if request.method == "POST":
            if tail != ":predict":
                raise RequestError(400 if tail in (":classify", ":regress") else 405,
                                   "this server answers :predict (the signatures take image "
                                   "bytes, not tf.Example)")
            with self.admission.enter():
                body = await self.body(request)
                return JSONResponse(await run_in_threadpool(tf_serving.predict, self.service,
                                                            body))
        if tail == "/metadata":
            return JSONResponse(tf_serving.metadata(self.service, name, version))
        if tail is None:
            return JSONResponse(tf_serving.status(version))
        raise RequestError(405, f"{tail} takes POST")


async def _refused(request: Request, error: RequestError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse({"error": str(error)}, status_code=error.status, headers=headers)


async def _http_error(request: Request, error: HTTPException) -> Response:
    return JSONResponse({"error": error.detail}, status_code=error.status_code)


async def _fault(request: Request, error: Exception) -> Response:
    # Starlette raises the error again after this answer: uvicorn logs it with its traceback.
    return JSONResponse({"error": f"internal error ({error.__class__.__name__}); the server "
                         "log has the details"}, status_code=500)


def _upload(request: Request, contents: bytes, takes_metadata: bool) -> Upload:
    """The page's upload: bytes and, in the query, its file name (only shown) and metadata."""
    query = request.query_params
    record = Record()
    if takes_metadata:
        age = query.get("age_approx", "").strip()
        try:
            age_value = float(age) if age else None
        except ValueError:
            age_value = math.nan
        if age_value is not None and not math.isfinite(age_value):
            raise RequestError(400, f"age_approx={age!r} is not a number")
        record = Record(age_value if age_value is None or age_value >= 0 else None,
                        query.get("sex", ""), query.get("anatom_site_general", ""))
    if not contents:
        raise RequestError(400, "empty upload: send the image's bytes as the request body")
    return Upload(contents, record, query.get("name", "")[:255])


def _json_row(row: dict) -> dict:
    return {key: value for key, value in row.items() if key != "path"} | {"name": row["path"]}
