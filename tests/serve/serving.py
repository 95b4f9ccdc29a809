"""A server of serve.py's application running in a thread of the test process, and a plain HTTP
client (urllib: what a user's script would use, nothing of the server's stack)."""

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import uvicorn

from skin_keras.serve import server


@contextlib.contextmanager
def running(config: server.ServeConfig):
    """Yields (base URL, model record) of a server of `config` on a free loopback port."""
    app, info = server.build(config)
    listener = server.open_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    instance = uvicorn.Server(server.uvicorn_config(app))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", info
    finally:
        instance.should_exit = True
        thread.join(10)


def http(method: str, url: str, body: bytes | dict | None = None,
         headers: dict | None = None) -> tuple[int, dict | bytes, dict]:
    """(status, JSON or bytes, headers) of one request; errors are answers too."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    elif body is not None:  # urllib would say application/x-www-form-urlencoded.
        headers.setdefault("Content-Type", "application/json" if "/v1/" in url
                           else "application/octet-stream")
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, content, answer_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, content, answer_headers = error.code, error.read(), error.headers
    if answer_headers.get("content-type", "").startswith("application/json"):
        return status, json.loads(content), dict(answer_headers)
    return status, content, dict(answer_headers)
