"""What the server lets in, decided before a request's body is read or a thread is taken.

- `BrowserGuard` (ASGI middleware) refuses what a web page of another site could make a
  browser send: a POST whose `Origin` is another origin; and, on a loopback server without a
  token, any `Host` that is not a loopback name (DNS rebinding makes evil.example resolve to
  127.0.0.1, and the page is then same-origin) and a POST of a content type a browser sends
  cross-site without asking first (text/plain, form, multipart) or of none. (With a token a
  page of another site cannot send the Authorization header without asking first.)
- `Admission` counts the requests that wait for the model (predictions of the page and of TF
  Serving's API, and Grad-CAM): past `--max_concurrent` + `--max_waiting` the next one gets
  503 at once.
"""

import contextlib
import ipaddress
import urllib.parse

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from skin_keras.serve.model_service import RequestError

def host_name(host: str) -> str:
    """The name of a Host header's value, without port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback_name(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _refusal(headers: Headers, method: str, path: str, tokenless_loopback: bool
             ) -> tuple[int, str] | None:
    host = headers.get("host", "")
    if tokenless_loopback and not is_loopback_name(host_name(host)):
        return 403, (f"this server answers only requests to this machine (Host {host!r} is not "
                     "localhost or a loopback address); start it with --token to serve others")
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    origin = headers.get("origin")
    if origin is not None:
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return 403, f"requests from another site ({origin}) are refused"
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    api = path.startswith("/v1/")
    if tokenless_loopback and not (kind == "application/json" if api else
                                   kind == "application/octet-stream" or kind.startswith("image/")):
        wanted = ("application/json (curl -d sends a form type: add -H 'Content-Type: "
                  "application/json')" if api else "image/... or application/octet-stream")
        return 415, (f"send the body with Content-Type {wanted}; got {kind or 'none'}, a type a "
                     "web page may send to any site")
    return None


class BrowserGuard:
    """ASGI middleware answering the refusals above with a JSON error."""

    def __init__(self, app, tokenless_loopback: bool):
        self.app, self.tokenless_loopback = app, tokenless_loopback

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refused = _refusal(Headers(scope=scope), scope["method"], scope["path"],
                               self.tokenless_loopback)
            if refused is not None:
                response = JSONResponse({"error": refused[1]}, status_code=refused[0])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Admission:
    """`with admission.enter():` around a request that will wait for the model; RequestError
    503 past `capacity` requests at once. Used from the event loop only (no lock needed)."""

    def __init__(self, capacity: int):
        self.capacity, self.inside = capacity, 0

    @contextlib.contextmanager
    def enter(self):
        if self.inside >= self.capacity:
            raise RequestError(503, f"the server is busy ({self.inside} requests are being "
                               "answered or wait already: --max_concurrent + --max_waiting); "
                               "try again shortly")
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1
