"""serve.py's REST API: TF Serving's request bodies answered as the exported SavedModel's own
signatures answer them (called in-process), the page's API as predict.py answers, and every bad
input refused with a 4xx JSON error while the server goes on answering."""

import base64
import hashlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from skin_keras.core.errors import UserError
from skin_keras.infer.formats import saved_model
from skin_keras.infer import load
from skin_keras.infer.predict import PredictConfig, predict_to_folder
from skin_keras.infer.runner import Runner
from skin_keras.model import io as named_io
from skin_keras.serve import app as app_module
from skin_keras.serve import server
from skin_keras.serve.model_service import ModelService

from conftest import REPO, untrained_run_folder
from serving import http, running

_DTYPES = {tf.float32: "DT_FLOAT", tf.string: "DT_STRING", tf.bool: "DT_BOOL"}


def b64(contents: bytes) -> dict:
    return {"b64": base64.b64encode(contents).decode()}


def val_images(dataset: Path, count: int) -> list[Path]:
    return sorted((dataset / "val").rglob("*.jpg"))[:count]


@pytest.fixture(scope="module")
def api(tmp_path_factory, calibrated_run):
    """A server of the calibrated run (a temperature and an unknown rule), uploads kept."""
    kept = tmp_path_factory.mktemp("kept")
    config = server.ServeConfig(model_path=str(calibrated_run), backend="keras", port=0,
                                max_upload_mb=1, keep_uploads=str(kept))
    with running(config) as (base, info):
        yield base, info, kept


def saved_model_of(tmp_path_factory, run: Path) -> Path:
    """The SavedModel export.py writes for `run` (its version folder)."""
    return saved_model.write_saved_model(load.load(run),
                                         tmp_path_factory.mktemp("saved") / "skin", 1)


@pytest.fixture(scope="module")
def saved_path(tmp_path_factory, calibrated_run) -> Path:
    return saved_model_of(tmp_path_factory, calibrated_run)


@pytest.fixture(scope="module")
def saved(saved_path):
    return tf.saved_model.load(str(saved_path))


def assert_same_answers(predictions: list[dict], expected: dict) -> None:
    """The server's row-format predictions equal the signature's outputs."""
    assert all(set(p) == set(expected) for p in predictions)
    for name, values in expected.items():
        served = [p[name] for p in predictions]
        values = values.numpy()
        if values.dtype == object:
            assert served == [v.decode() for v in values]
        elif values.dtype == bool:
            assert served == values.tolist()
        else:
            np.testing.assert_allclose(served, values, rtol=1e-5, atol=1e-6)


def test_tf_serving_bodies_answer_as_the_saved_model(api, saved, tiny_dataset):
    base, _, _ = api
    contents = [p.read_bytes() for p in val_images(tiny_dataset, 5)]
    expected = saved.signatures["serving_default"](image_bytes=tf.constant(contents))
    url = f"{base}/v1/models/skin:predict"
    status, answer, _ = http("POST", url, {"instances": [b64(c) for c in contents]})
    assert status == 200, answer
    assert {"unknown", "unknown_score"} <= set(answer["predictions"][0])
    assert all(kept_copy(api[2], c).read_bytes() == c for c in contents)  # --keep_uploads
    assert_same_answers(answer["predictions"], expected)
    # The same instances named, at the version's URL, and in the columnar format.
    status, named, _ = http("POST", f"{base}/v1/models/skin/versions/1:predict", {
        "signature_name": "serving_default",
        "instances": [{"image_bytes": b64(c)} for c in contents]})
    assert (status, named) == (200, answer)
    status, columnar, _ = http("POST", url, {"inputs": {"image_bytes": [b64(c) for c in
                                                                         contents]}})
    assert status == 200
    assert columnar["outputs"]["label"] == [p["label"] for p in answer["predictions"]]
    # serving_images: RGB values in [0, 255] at the model's size.
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    status, by_pixels, _ = http("POST", url, {"signature_name": "serving_images",
                                              "instances": pixels.tolist()})
    assert status == 200, by_pixels
    assert_same_answers(by_pixels["predictions"],
                        saved.signatures["serving_images"](images=tf.constant(pixels)))


def kept_copy(folder: Path, contents: bytes) -> Path:
    return folder / f"{hashlib.sha256(contents).hexdigest()[:32]}.jpg"


def test_a_saved_model_and_a_tflite_copy_are_served_too(saved_path, saved, calibrated_run,
                                                         tiny_dataset):
    contents = [p.read_bytes() for p in val_images(tiny_dataset, 3)]
    expected = saved.signatures["serving_default"](image_bytes=tf.constant(contents))
    body = {"instances": [b64(c) for c in contents]}
    with running(server.ServeConfig(model_path=str(saved_path), port=0)) as (base, info):
        assert (info["backend"], info["explain"]) == ("savedmodel", False)
        assert (info["version"], info["source"]) == ("1", "skin/1")
        status, answer, _ = http("POST", f"{base}/v1/models/skin/versions/1:predict", body)
        assert status == 200
        assert_same_answers(answer["predictions"], expected)
        status, refused, _ = http("POST", f"{base}/api/explain", contents[0])
        assert status == 400 and "Grad-CAM needs a Keras model" in refused["error"]
    with running(server.ServeConfig(model_path=str(calibrated_run), port=0,
                                    backend="tflite")) as (base, info):
        assert (info["backend"], info["explain"]) == ("tflite", True)
        status, answer, _ = http("POST", f"{base}/v1/models/skin:predict", body)
        assert [p["label"] for p in answer["predictions"]] == [
            label.decode() for label in expected["label"].numpy()]
        np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]],
                                   expected["probabilities"].numpy(), atol=1e-4)


def test_status_and_metadata_describe_the_saved_models_signatures(api, saved):
    base, _, _ = api
    status, answer, _ = http("GET", f"{base}/v1/models/skin")
    assert status == 200
    assert answer["model_version_status"][0]["state"] == "AVAILABLE"
    status, answer, _ = http("GET", f"{base}/v1/models/skin/versions/1/metadata")
    assert status == 200
    definitions = answer["metadata"]["signature_def"]["signature_def"]
    assert set(definitions) == set(saved.signatures)

    def described(specs) -> dict:
        return {name: (_DTYPES[spec.dtype], [str(-1 if s is None else s)
                                             for s in spec.shape.as_list()])
                for name, spec in specs.items()}

    def given(tensors) -> dict:
        return {name: (tensor["dtype"], [dim["size"] for dim in tensor["tensor_shape"]["dim"]])
                for name, tensor in tensors.items()}

    for name, function in saved.signatures.items():
        assert given(definitions[name]["inputs"]) == described(
            function.structured_input_signature[1])
        assert given(definitions[name]["outputs"]) == described(function.structured_outputs)


def test_metadata_model_answers_as_its_saved_model(tmp_path_factory, metadata_data):
    run = untrained_run_folder(tmp_path_factory.mktemp("metadata_run"), metadata_data,
                               metadata=str(metadata_data / "train_metadata.csv"))
    saved_metadata = tf.saved_model.load(str(saved_model_of(tmp_path_factory, run)))
    contents = [p.read_bytes() for p in val_images(metadata_data, 3)]
    ages, sexes, sites = [35.0, -1.0, 60.0], ["male", "", "female"], ["site 1", "", "site 9"]
    expected = saved_metadata.signatures["serving_default"](
        image_bytes=tf.constant(contents), age_approx=tf.constant(ages),
        sex=tf.constant(sexes), anatom_site_general=tf.constant(sites))
    with running(server.ServeConfig(model_path=str(run), backend="keras", port=0)) as (
            base, info):
        assert info["metadata"]["sex"] == ["female", "male"]
        url = f"{base}/v1/models/skin:predict"
        status, answer, _ = http("POST", url, {"instances": [
            {"image_bytes": b64(c), "age_approx": a, "sex": s, "anatom_site_general": t}
            for c, a, s, t in zip(contents, ages, sexes, sites)]})
        assert status == 200, answer
        assert_same_answers(answer["predictions"], expected)
        status, image_only, _ = http("POST", url, {"signature_name": "serving_image_only",
                                                   "instances": [b64(c) for c in contents]})
        assert status == 200
        assert_same_answers(image_only["predictions"], saved_metadata.signatures[
            "serving_image_only"](image_bytes=tf.constant(contents)))
        page = f"{base}/api/predict?name=a.jpg"
        for query, used in (("&age_approx=35&sex=male&anatom_site_general=site%201", "used"),
                            ("", "missing"), ("&sex=nobody", "missing")):
            status, answer, _ = http("POST", page + query, contents[0])
            assert (status, answer["row"]["metadata"]) == (200, used)
            assert answer["csv"][-2] == used
        status, refused, _ = http("POST", page + "&age_approx=old", contents[0])
        assert status == 400 and "age_approx='old' is not a number" in refused["error"]
        explain = f"{base}/api/explain?age_approx=35&sex=male&anatom_site_general=site%201"
        status, overlay, headers = http("POST", explain, contents[0])
        assert status == 200 and headers["content-type"] == "image/png", overlay
        status, refused, _ = http("POST", url, {"instances": [b64(contents[0])]})
        assert status == 400 and "several inputs" in refused["error"]
        status, refused, _ = http("POST", url, {"instances": [
            {"image_bytes": b64(contents[0]), "age_approx": "old", "sex": "", 
             "anatom_site_general": ""}]})
        assert status == 400 and "age_approx of instance 0" in refused["error"]


def test_page_api_answers_as_predict_py(api, calibrated_run, tiny_dataset, tmp_path):
    base, info, kept = api
    path = val_images(tiny_dataset, 1)[0]
    status, answer, _ = http("POST", f"{base}/api/predict?name=../../{path.name}",
                             path.read_bytes())
    assert status == 200, answer
    [row] = json.loads(predict_to_folder(PredictConfig(
        model_path=str(calibrated_run), backend="keras", source=(str(path),),
        output=str(tmp_path / "out"))).read_text())
    assert answer["row"]["label"] == row["label"]
    assert answer["row"]["unknown"] == row["unknown"]
    np.testing.assert_allclose(list(answer["row"]["probabilities"].values()),
                               list(row["probabilities"].values()), atol=1e-6)
    header = (tmp_path / "out" / "predictions.csv").read_text().splitlines()[0].split(",")
    assert info["csv_header"] == header and len(answer["csv"]) == len(header)
    assert answer["csv"][0] == f"../../{path.name}"  # Only shown: the kept copy is named by
    assert kept_copy(kept, path.read_bytes()).is_file()  # its content, never by the client.
    assert not (kept.parent.parent / path.name).exists()
    status, overlay, headers = http("POST", f"{base}/api/explain", path.read_bytes())
    assert status == 200 and headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay)).size == Image.open(path).size


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG of 1 x 1 pixel whose header claims width x height (PIL reads only the header)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(png[24:29])
    png[12:29] = header
    png[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(png)


def bomb() -> bytes:
    """A real 9,000 x 9,000 PNG of zeros: 81 Mpx in about 80 kB."""
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, "PNG")
    return buffer.getvalue()


def bad_requests(tiny_dataset):
    jpeg = val_images(tiny_dataset, 1)[0].read_bytes()
    predict = "/v1/models/skin:predict"
    return [
        ("POST", predict, b"{not json", 400, "not JSON"),
        ("POST", predict, b"\xff\xfe\x00", 400, "not JSON"),
        ("POST", predict, b"[" * 100000, 400, "nested too deeply"),
        ("POST", predict, {"instances": [b64(b"hi")] * 1025}, 413, "at most 1024"),
        ("POST", predict, {"instances": []}, 400, "non-empty list"),
        ("POST", predict, {"instances": [b64(jpeg)], "inputs": [b64(jpeg)]}, 400,
         "exactly one"),
        ("POST", predict, {"instances": [{"b64": "%%%"}]}, 400, "not valid base64"),
        ("POST", predict, {"instances": [b64(b"hello, not an image")]}, 400,
         "not a readable image"),
        ("POST", predict, {"instances": [b64(jpeg[:len(jpeg) // 2])]}, 400, "truncated JPEG"),
        ("POST", predict, {"instances": [b64(bomb())]}, 413, "more than the server decodes"),
        ("POST", predict, {"instances": [b64(png_header_claiming(20000, 20000))]}, 400,
         "DecompressionBombError"),
        ("POST", predict, {"instances": [b64(jpeg)], "signature_name": "x"}, 400,
         "no signature named"),
        ("POST", predict, {"instances": [b64(jpeg), 3]}, 400, "binary input"),
        ("POST", predict, b"x" * (1024 * 1024 + 1), 413, "larger than the server's limit"),
        ("POST", "/v1/models/other:predict", {"instances": [b64(jpeg)]}, 404,
         "Servable not found"),
        ("POST", "/v1/models/skin/versions/7:predict", {"instances": [b64(jpeg)]}, 404,
         "Servable not found"),
        ("POST", "/v1/models/skin:classify", {"examples": []}, 400, "answers :predict"),
        ("GET", predict, None, 405, "takes POST"),
        ("POST", "/api/predict?name=a.txt", b"", 400, "empty upload"),
        ("POST", "/api/predict?name=a.jpg", b"GIF89a not really", 400, "a.jpg: not a readable"),
        ("POST", "/api/predict?name=big.png", bomb(), 413, "big.png: 9000 x 9000 pixels"),
        ("GET", "/no/such/page", None, 404, "Not Found"),
        ("GET", "/static/../../etc/passwd", None, 404, "Not Found"),
        # Reliability 2026-12-07 T1, T2: an unhashable name, Python's 4,300-digit limit.
        ("POST", predict, {"instances": [b64(jpeg)], "signature_name": []}, 400,
         "no signature named"),
        ("POST", predict, b'{"x": ' + b"9" * 5000 + b', "instances": [1]}', 400,
         "not JSON this server reads"),
        ("POST", "/api/predict", b"GIF89a", 415, "Content-Type image/... or application/"),
    ]


def test_bad_requests_get_a_4xx_json_error_and_the_server_goes_on(api, tiny_dataset):
    base, _, _ = api
    for method, path, body, expected, words in bad_requests(tiny_dataset):
        kind = {"Content-Type": "text/plain"} if expected == 415 else None
        status, answer, _ = http(method, base + path, body, headers=kind)
        assert (status, isinstance(answer, dict)) == (expected, True), (path, answer)
        assert words in answer["error"] and "Traceback" not in answer["error"], answer
        assert http("GET", f"{base}/v1/models/skin")[0] == 200  # Still answering.


def test_a_fault_of_the_server_is_a_500_json_error_and_it_goes_on(untrained_run, tiny_dataset,
                                                                   monkeypatch):
    with running(server.ServeConfig(model_path=str(untrained_run), port=0)) as (base, _):
        def broken(self, uploads):
            raise RuntimeError("a bug /secret/path")

        monkeypatch.setattr(ModelService, "predict", broken)
        status, answer, _ = http("POST", f"{base}/api/predict",
                                 val_images(tiny_dataset, 1)[0].read_bytes())
        assert status == 500
        assert answer == {"error": "internal error (RuntimeError); the server log has the "
                                   "details"}  # Nothing of the bug's text or traceback.
        assert http("GET", f"{base}/v1/models/skin")[0] == 200


def test_a_token_is_needed_when_given_and_off_this_machine(untrained_run, monkeypatch):
    monkeypatch.delenv(server.TOKEN_VARIABLE, raising=False)
    with pytest.raises(UserError, match="--host=0.0.0.0 lets other machines in"):
        server.build(server.ServeConfig(model_path=str(untrained_run), host="0.0.0.0"))
    monkeypatch.setenv(server.TOKEN_VARIABLE, "s3cret")
    with running(server.ServeConfig(model_path=str(untrained_run), port=0)) as (base, _):
        url = f"{base}/v1/models/skin"
        status, answer, headers = http("GET", url)
        assert status == 401 and "Bearer" in answer["error"]
        assert headers["www-authenticate"] == "Bearer"
        assert http("GET", url, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert http("GET", url, headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert http("GET", base + "/")[0] == 200  # The page itself holds no data.


class _Overlaps(Runner):
    """A runner that counts how many of its calls run at the same time."""

    def __init__(self, about, thread_safe: bool):
        super().__init__(about, (named_io.IMAGE,), (named_io.PROBABILITIES,))
        self.thread_safe, self.running, self.most = thread_safe, 0, 0
        self.lock = threading.Lock()

    def _run(self, feed):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)
        with self.lock:
            self.running -= 1
        return {named_io.PROBABILITIES: np.full((len(feed[named_io.IMAGE]), 3), 1 / 3)}


@pytest.mark.parametrize("thread_safe", [True, False])
def test_a_runner_that_is_not_thread_safe_runs_one_call_at_a_time(untrained, thread_safe):
    runner = _Overlaps(untrained.about, thread_safe)
    service = ModelService(untrained, runner, max_concurrent=4, max_batch=1)
    calls = [threading.Thread(target=service.run, args=(np.zeros((1, 64, 64, 3)), None))
             for _ in range(4)]
    for call in calls:
        call.start()
    for call in calls:
        call.join(30)
    assert runner.most == (4 if thread_safe else 1)


def test_serve_py_prints_its_address_serves_and_stops_on_ctrl_c(untrained_run, tiny_dataset):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "serve.py"), f"--model_path={untrained_run}", "--port=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        lines = []
        while not any("TF Serving:" in line for line in lines):
            line = process.stdout.readline()
            assert line, process.stderr.read()
            lines.append(line)
        url = next(line for line in lines if "TF Serving:" in line).split("POST ")[1].strip()
        status, answer, _ = http("POST", url, {"instances": [
            b64(val_images(tiny_dataset, 1)[0].read_bytes())]})
        assert status == 200 and answer["predictions"][0]["label"]
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    assert "Traceback" not in errors
    refused = subprocess.run([sys.executable, str(REPO / "serve.py"),
                              f"--model_path={untrained_run}", "--host=0.0.0.0"],
                             capture_output=True, text=True, cwd=REPO, check=False,
                             env={k: v for k, v in os.environ.items()
                                  if k != server.TOKEN_VARIABLE})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("serve.py: error: --host=0.0.0.0")
    as_module = subprocess.run([sys.executable, "-m", "skin_keras.serve",
                                "--model_path=/no/such/model"], capture_output=True, text=True,
                               cwd=REPO, check=False)
    assert as_module.returncode == 2 and as_module.stderr.strip().splitlines()[-1] == (
        "python -m skin_keras.serve: error: model path /no/such/model does not exist")


def raw(base: str, head: str, body: bytes = b"", wait: float = 10) -> tuple[int, bytes]:
    """(status, everything read) of a request written by hand on a socket (headers that
    urllib would correct, a body that never comes)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def test_the_server_admits_work_before_it_queues_it(untrained_run, tiny_dataset, monkeypatch):
    # Reliability 2026-12-07 H1, H2, C11: the 503 at the documented limit, Grad-CAM counted;
    # an oversized declared body refused up front; a stalled body timed out.
    release = threading.Event()
    monkeypatch.setattr(ModelService, "predict", lambda self, uploads: (release.wait(30), [
        {"path": "x", "label": "a", "score": 1.0, "probabilities": {}, "error": ""}])[1])
    monkeypatch.setattr(ModelService, "explain", lambda self, upload: (release.wait(30),
                                                                       b"png")[1])
    monkeypatch.setattr(app_module, "BODY_IDLE_SECONDS", 1.0)
    jpeg = val_images(tiny_dataset, 1)[0].read_bytes()
    config = server.ServeConfig(model_path=str(untrained_run), port=0, max_waiting=2,
                                max_upload_mb=1)
    with running(config) as (base, _):
        answers = []
        calls = [threading.Thread(target=lambda path=path: answers.append(
            http("POST", f"{base}{path}", jpeg)[0]))
            for path in ["/api/predict", "/api/explain"] * 4]
        for call in calls:
            call.start()
        deadline = time.monotonic() + 30
        while answers.count(503) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answers.count(503) == 5  # 1 answered + 2 waiting admitted; 5 of 8 refused.
        release.set()
        for call in calls:
            call.join(30)
        assert sorted(answers) == [200] * 3 + [503] * 5
        status, answer = raw(base, "POST /api/predict HTTP/1.1\nHost: 127.0.0.1\n"
                             "Content-Type: image/jpeg\nContent-Length: 1000000000000\n\n")
        assert status == 413 and b"--max_upload_mb" in answer
        started = time.monotonic()
        status, answer = raw(base, "POST /api/predict HTTP/1.1\nHost: 127.0.0.1\n"
                             "Content-Type: image/jpeg\nContent-Length: 1000\n\n", b"x" * 10)
        assert status == 408 and b"stalled" in answer and time.monotonic() - started < 8
        assert http("GET", f"{base}/v1/models/skin")[0] == 200


def test_the_server_trusts_no_origin(untrained_run, tiny_dataset, monkeypatch):
    # Reliability 2026-12-07 X1, X2, C9, C10.
    jpeg = val_images(tiny_dataset, 1)[0].read_bytes()
    monkeypatch.delenv(server.TOKEN_VARIABLE, raising=False)
    with running(server.ServeConfig(model_path=str(untrained_run), port=0)) as (base, _):
        port = base.rsplit(":", 1)[1]
        for host, expected in (("evil.example:" + port, 403), ("localhost:" + port, 200),
                               ("[::1]:" + port, 200), ("127.0.0.1", 200)):
            status, _ = raw(base, f"GET /api/model HTTP/1.1\nHost: {host}\n"
                            "Connection: close\n")
            assert status == expected, host
        status, answer, _ = http("POST", f"{base}/api/predict", jpeg,
                                 headers={"Origin": "https://evil.example"})
        assert status == 403 and "another site" in answer["error"]
        assert http("POST", f"{base}/api/predict", jpeg, headers={"Origin": base})[0] == 200
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            assert http("POST", f"{base}/api/predict", jpeg,
                        headers={"Content-Type": kind})[0] == 415
        assert http("GET", f"{base}/v1/models/skin/versions/01")[0] == 200  # The integer 1.
    token = "s3crét-ключ"
    with running(server.ServeConfig(model_path=str(untrained_run), port=0, token=token)
                 ) as (base, _):
        status, answer, _ = http("POST", f"{base}/v1/models/guess:predict", {"instances": []})
        assert status == 401 and "skin" not in answer["error"]  # Nothing named before it.
        status, _ = raw(base, "GET /v1/models/skin HTTP/1.1\nHost: 127.0.0.1\n"
                        f"Connection: close\nAuthorization: bearer {token}\n")
        assert status == 200  # The scheme in any case, the token as UTF-8.
        status, _ = raw(base, "GET /api/model HTTP/1.1\nHost: evil.example\n"
                        f"Connection: close\nAuthorization: Bearer {token}\n")
        assert status == 200  # With a token the Host does not matter.


def test_keep_uploads_that_cannot_be_written_is_refused_at_start_and_never_fails_a_prediction(
        api, untrained_run, tiny_dataset, tmp_path, monkeypatch, caplog):
    # Reliability 2026-12-07 T3: every upload got a 500 on a read-only or full disk.
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="--keep_uploads=.* cannot be written"):
        server.build(server.ServeConfig(model_path=str(untrained_run),
                                        keep_uploads=str(tmp_path / "file" / "kept")))
    from skin_keras.core import atomic  # pylint: disable=g-import-not-at-top

    def full_disk(path, write, suffix=""):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "write_atomic", full_disk)
    base, _, _ = api
    image = np.random.default_rng(5).integers(0, 256, (40, 40, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")  # Never kept before: a new name.
    status, answer, _ = http("POST", f"{base}/api/predict", buffer.getvalue())
    assert status == 200 and answer["row"]["label"]
    assert any("--keep_uploads: cannot write" in r.getMessage() for r in caplog.records)


def test_a_stop_lets_running_requests_finish_and_a_lost_client_is_one_line(
        untrained_run, tiny_dataset, monkeypatch, caplog):
    # Reliability 2026-12-07 T4 (a request running longer than uvicorn's graceful 5 s got a
    # text/plain 500) and C3 (a client gone mid-body logged a traceback).
    started = threading.Event()

    def slow(self, uploads):
        started.set()
        time.sleep(6)
        return [{"path": "x", "label": "a", "score": 1.0, "probabilities": {}, "error": ""}]

    monkeypatch.setattr(ModelService, "predict", slow)
    jpeg = val_images(tiny_dataset, 1)[0].read_bytes()
    answers = []
    with running(server.ServeConfig(model_path=str(untrained_run), port=0)) as (base, _):
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as gone:
            gone.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"image/jpeg\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        call = threading.Thread(target=lambda: answers.append(
            http("POST", f"{base}/api/predict", jpeg)))
        call.start()
        assert started.wait(30)
    call.join(30)  # The server stopped while the request ran: it finished first.
    assert answers and answers[0][0] == 200 and answers[0][1]["row"]["label"] == "a"
    assert any("went away while sending" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)
