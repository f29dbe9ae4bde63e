"""`cxr serve` against TF Serving's REST contract: request bodies from TF Serving's REST documentation,
its response and error shapes and status codes, bad inputs, labels, concurrency and hot reload."""
import base64
import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tensorflow as tf

from cxr import contract
from cxr.serving import dev_server
from cxr.serving.dev_server import ServerSettings, start
from helpers import encode
from trained_model import IMAGE_SIZE, demo_png
from PIL import Image

MAX_BODY = 2 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def server(model_base_path):
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0, max_body_bytes=MAX_BODY))
    yield running
    running.stop()


def _post(server, body, path="/v1/models/cxr:predict"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server.url + path, data=data, timeout=60)


def _images():
    return [demo_png(seed, label) for seed, label in enumerate(contract.LABELS)]


def _direct(loaded_model, images, signature=contract.PREDICT_SIGNATURE):
    return {key: value.numpy() for key, value in loaded_model.signatures[signature](images=tf.constant(images)).items()}


def test_the_row_format_from_the_documentation_answers_one_prediction_per_instance(server, loaded_model):
    images = _images()
    response = _post(server, {"signature_name": "serving_default", "instances": [{"b64": _b64(i)} for i in images]})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    predictions = response.json()["predictions"]
    direct = _direct(loaded_model, images)
    assert [set(p) for p in predictions] == [{"probabilities", "class_id", "class_name"}] * len(images)
    np.testing.assert_allclose([p["probabilities"] for p in predictions], direct["probabilities"], atol=1e-6)
    assert [p["class_name"] for p in predictions] == [name.decode() for name in direct["class_name"]]
    assert [p["class_id"] for p in predictions] == direct["class_id"].tolist()


def test_named_instances_and_both_columnar_forms_give_the_same_answer(server):
    images = _images()[:2]
    rows = _post(server, {"instances": [{"images": {"b64": _b64(i)}} for i in images]}).json()["predictions"]
    for body in ({"inputs": [{"b64": _b64(i)} for i in images]},
                 {"inputs": {"images": [{"b64": _b64(i)} for i in images]}}):
        outputs = _post(server, body).json()["outputs"]
        assert set(outputs) == {"probabilities", "class_id", "class_name"}
        np.testing.assert_allclose(outputs["probabilities"], [r["probabilities"] for r in rows], atol=1e-6)
        assert outputs["class_name"] == [r["class_name"] for r in rows]


def test_explain_returns_a_heatmap_per_image_and_explain_class_takes_the_class(server):
    images = _images()[:2]
    explained = _post(server, {"signature_name": "explain",
                               "instances": [{"b64": _b64(i)} for i in images]}).json()["predictions"]
    heatmap = np.array(explained[0]["heatmap"])
    assert heatmap.shape == (IMAGE_SIZE, IMAGE_SIZE) and heatmap.min() >= 0 and heatmap.max() == pytest.approx(1)
    asked = _post(server, {"signature_name": "explain_class", "instances": [
        {"images": {"b64": _b64(images[0])}, "class_id": 3}]}).json()["predictions"]
    assert asked[0]["class_name"] == contract.LABELS[3]


def test_model_status_has_tf_servings_shape(server):
    response = requests.get(server.url + "/v1/models/cxr", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(server.url + "/v1/models/cxr/versions/1", timeout=10).status_code == 200


def test_metadata_lists_the_signatures_as_tf_serving_prints_them(server):
    document = requests.get(server.url + "/v1/models/cxr/metadata", timeout=10).json()
    assert document["model_spec"] == {"name": "cxr", "signature_name": "", "version": "1"}
    signatures = document["metadata"]["signature_def"]["signature_def"]
    assert {contract.PREDICT_SIGNATURE, contract.EXPLAIN_SIGNATURE} <= set(signatures)
    images = signatures[contract.PREDICT_SIGNATURE]["inputs"]["images"]
    assert images["dtype"] == "DT_STRING" and images["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert signatures[contract.PREDICT_SIGNATURE]["method_name"] == "tensorflow/serving/predict"


@pytest.mark.parametrize("path, status, message", [
    ("/v1/models/cxr/versions/1:predict", 200, None),
    ("/v1/models/cxr/versions/7:predict", 404, "Servable not found for request: Specific(cxr, 7)"),
    ("/v1/models/other:predict", 404, "Servable not found for request: Latest(other)"),
    ("/v1/models/cxr/labels/stable:predict", 400, "Unrecognized servable version label: stable"),
    ("/v1/models/cxr/versions/one:predict", 400, "Malformed request"),
    ("/v1/models/cxr:classify", 501, ":predict only"),
])
def test_versions_labels_and_models_are_resolved_as_tf_serving_does(server, path, status, message):
    response = _post(server, {"instances": [{"b64": _b64(demo_png(1))}]}, path)
    assert response.status_code == status
    if message:
        assert message in response.json()["error"]


def _truncated_png():
    data = demo_png(2)
    return data[:len(data) // 2]


def _one(image: bytes) -> dict:
    return {"instances": [{"b64": _b64(image)}]}


@pytest.mark.parametrize("name, body, status, message", [
    ("not an image", lambda: _one(b"hello, not an image"), 400, "not a PNG or JPEG file"),
    ("truncated PNG", lambda: _one(_truncated_png()), 400, "PNG"),
    ("pixel bomb", lambda: _one(encode(Image.new("L", (1_200, 1_000)), "PNG")), 400, "declares more than"),
    ("empty instances", lambda: {"instances": []}, 400, "No values in 'instances' array"),
    ("unknown signature", lambda: {"signature_name": "nope", **_one(demo_png(1))}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("malformed JSON", lambda: b'{"instances": [', 400, "JSON Parse error"),
    ("not an object", lambda: b"[1, 2]", 400, "Is not object"),
    ("no instances or inputs", lambda: {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
    ("both instances and inputs", lambda: {"instances": [1], "inputs": [1]}, 400, "only one of 'inputs' or 'instances'"),
    ("bad base64", lambda: {"instances": [{"b64": "%%%"}]}, 400, "Unable to base64 decode"),
    ("numbers for strings", lambda: {"instances": [1.5]}, 400, "expected string values"),
    ("oversized body", lambda: b'{"instances": ["' + b"A" * MAX_BODY + b'"]}', 413, "over the server's limit"),
])
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_answering(server, name, body, status, message):
    response = _post(server, body())
    assert response.status_code == status, (name, response.text)
    assert message in response.json()["error"], name
    good = _post(server, _one(demo_png(3)))
    assert good.status_code == 200 and len(good.json()["predictions"]) == 1, name


def test_concurrent_requests_are_all_answered_correctly(server, loaded_model):
    images = _images()
    expected = _direct(loaded_model, images)["class_id"].tolist()

    def ask(_):
        response = _post(server, {"instances": [{"b64": _b64(i)} for i in images]})
        return response.status_code, [p["class_id"] for p in response.json()["predictions"]]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(24)))
    assert answers == [(200, expected)] * 24


def _wait_for(condition, timeout_s=90.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not true after {timeout_s} s")


def _states(running) -> dict:
    answer = requests.get(running.url + "/v1/models/cxr", timeout=10).json()
    return {int(entry["version"]): (entry["state"], entry["status"]["error_message"])
            for entry in answer["model_version_status"]}


def _push_like_tfx_pusher(source: str, destination: str, pause_s: float) -> None:
    """What TFX's Pusher does (tfx/components/pusher/executor.py): copies the model in place, every file
    but saved_model.pb first, then saved_model.pb; here with a pause between the two, as a slow copy has."""
    shutil.copytree(source, destination, ignore=lambda folder, names: [n for n in names if n == "saved_model.pb"])
    time.sleep(pause_s)
    shutil.copyfile(os.path.join(source, "saved_model.pb"), os.path.join(destination, "saved_model.pb"))


def test_a_newly_pushed_version_is_served_without_restart_and_a_broken_push_is_not(model_base_path, tmp_path):
    base_path = str(tmp_path / "cxr")
    shutil.copytree(os.path.join(model_base_path, "1"), os.path.join(base_path, "1"))
    running = start(ServerSettings(model_base_path=base_path, rest_api_port=0, file_system_poll_wait_seconds=0.2))
    try:
        # A push slower than five polls: not a failed load, waited for until saved_model.pb arrives.
        pusher = threading.Thread(target=_push_like_tfx_pusher, args=(
            os.path.join(base_path, "1"), os.path.join(base_path, "2"), 2.0))
        pusher.start()
        time.sleep(1.5)
        assert 2 not in _states(running), "a version still being copied is not reported, nor tried"
        pusher.join()
        answered_while_loading = []
        while _states(running).get(2, ("",))[0] != "AVAILABLE":
            answered_while_loading.append(_post(running, _one(demo_png(4))).status_code)
            time.sleep(0.05)
        assert set(answered_while_loading) <= {200}
        _wait_for(lambda: _states(running)[1][0] == "END")
        assert _post(running, _one(demo_png(4)), "/v1/models/cxr/versions/2:predict").status_code == 200
        assert _post(running, _one(demo_png(4)), "/v1/models/cxr/versions/1:predict").status_code == 404

        os.makedirs(os.path.join(base_path, "3"))
        with open(os.path.join(base_path, "3", "saved_model.pb"), "wb") as f:
            f.write(b"half-copied")
        _wait_for(lambda: 3 in _states(running))
        state, error = _states(running)[3]
        assert state == "END" and "version 3 failed to load" in error
        assert _states(running)[2][0] == "AVAILABLE"
        assert _post(running, _one(demo_png(4))).status_code == 200
    finally:
        running.stop()


def test_labels_come_from_the_model_config_file(model_base_path, tmp_path):
    config = tmp_path / "model_config.pbtxt"
    config.write_text('model_config_list { config { name: "cxr" base_path: "%s" model_platform: "tensorflow" '
                      'model_version_policy { specific { versions: 1 } } '
                      'version_labels { key: "stable" value: 1 } } }' % model_base_path)
    running = start(ServerSettings(model_config_file=str(config), rest_api_port=0))
    try:
        assert _post(running, _one(demo_png(5)), "/v1/models/cxr/labels/stable:predict").status_code == 200
        canary = _post(running, _one(demo_png(5)), "/v1/models/cxr/labels/canary:predict")
        assert canary.status_code == 400 and "Unrecognized servable version label: canary" in canary.json()["error"]
    finally:
        running.stop()


def test_the_server_binds_this_machine_only_by_default(server):
    # The module's server is started with the default host.
    assert server.http.server_address[0] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")


# -- what slow, stalled or greedy clients cannot do (serving/http_server.py) ------------------------

@pytest.fixture(scope="module")
def strict_server(model_base_path):
    """Short read deadlines, so that the tests can wait them out."""
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0, read_timeout_seconds=1.0,
                                   body_timeout_seconds=1.5, workers=2))
    yield running
    running.stop()


def _connect(running) -> socket.socket:
    host, port = running.http.server_address
    return socket.create_connection((host, port), timeout=10)


def _received(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_a_good_request_is_answered_while_a_hundred_connections_stall(strict_server):
    stalled = [_connect(strict_server) for _ in range(100)]
    for sock in stalled[:50]:  # half stop in the middle of their headers, half never send a byte
        sock.sendall(b"POST /v1/models/cxr:predict HTTP/1.1\r\nContent-")
    started = time.monotonic()
    response = _post(strict_server, _one(demo_png(6)))
    assert response.status_code == 200 and time.monotonic() - started < 5
    answers = [_received(sock) for sock in stalled]  # each is closed by the server once its deadline passes
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers[:50])
    assert b"request headers not received within 1 s" in answers[0]
    assert answers[50:] == [b""] * 50  # never started a request: closed without an answer
    for sock in stalled:
        sock.close()


def test_a_body_slower_than_its_deadline_is_refused_with_408(strict_server):
    with _connect(strict_server) as sock:
        sock.sendall(b"POST /v1/models/cxr:predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"instances\"")
        answer = _received(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request body of 1000 bytes not received within 1.5 s" in answer


def test_kept_alive_connections_serve_several_requests_then_close_when_idle(strict_server):
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(strict_server.url + "/v1/models/cxr", timeout=10).status_code == 200
    with _connect(strict_server) as sock:
        sock.sendall(b"GET /v1/models/cxr HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        answer = _received(sock)  # the status, then the server closes the idle connection
    assert answer.startswith(b"HTTP/1.1 200 ") and 0.9 < time.monotonic() - started < 5


@pytest.mark.parametrize("raw, status, message", [
    (b"BREW /coffee\r\n\r\n", 400, "malformed request line"),
    (b"POST /v1/models/cxr:predict HTTP/1.1\r\nHost: x\r\n\r\n", 411, "needs a Content-Length"),
    (b"POST /v1/models/cxr:predict HTTP/1.1\r\nContent-Length: lots\r\n\r\n", 400, "is not a number of bytes"),
    (b"POST /v1/models/cxr:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501, "chunked"),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, "request headers over"),
])
def test_protocol_errors_get_a_status_and_a_reason_and_are_logged(strict_server, caplog, raw, status, message):
    with caplog.at_level(logging.INFO, logger="cxr.serve"), _connect(strict_server) as sock:
        sock.sendall(raw)
        answer = _received(sock)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    assert message.encode() in answer
    assert any(message in record.getMessage() for record in caplog.records)


def test_every_request_gets_one_audit_line(strict_server, caplog):
    with caplog.at_level(logging.INFO, logger="cxr.audit"):
        _post(strict_server, _one(demo_png(7)))
        requests.get(strict_server.url + "/v1/models/nope/versions/3", timeout=10, headers={"X-Request-Id": "ris-42"})
        deadline = time.monotonic() + 10  # written once the answer is sent
        while len([r for r in caplog.records if r.name == "cxr.audit"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "cxr.audit"]
    assert [(line["method"], line["model"], line["version"], line["status"]) for line in lines] == [
        ("POST", "cxr", "latest", 200), ("GET", "nope", "3", 404)]
    assert lines[1]["request_id"] == "ris-42" and lines[0]["request_bytes"] > 0 and lines[0]["caller"] == "-"


def test_an_internal_error_is_logged_and_not_shown_to_the_client(strict_server, caplog, monkeypatch):
    def broken(*args):
        raise KeyError("a secret path /srv/models/internal")

    monkeypatch.setattr(dev_server, "predict", broken)
    with caplog.at_level(logging.INFO, logger="cxr.serve"):
        response = _post(strict_server, _one(demo_png(8)))
    assert response.status_code == 500 and "secret" not in response.text
    assert response.json()["error"] == "internal error; the server's log has the details"
    assert any("secret" in record.exc_text for record in caplog.records if record.exc_text)


def test_a_busy_port_is_named(strict_server, model_base_path):
    port = strict_server.http.server_address[1]
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: .*another server holds the port"):
        start(ServerSettings(model_base_path=model_base_path, rest_api_port=port))


@pytest.mark.parametrize("layout", ["missing", "empty", "parent folder", "no saved_model.pb"])
def test_a_base_path_with_no_version_is_refused_naming_the_layout(model_base_path, tmp_path, layout):
    base = tmp_path / "cxr"
    if layout == "empty":
        base.mkdir()
    elif layout == "parent folder":  # --model_base_path <serving_dir> instead of <serving_dir>/cxr
        shutil.copytree(model_base_path, base / "cxr")
    elif layout == "no saved_model.pb":
        (base / "1" / "variables").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"no version of cxr to serve under {base}.*Expected {base}/<version number>/"
                                         "saved_model.pb"):
        start(ServerSettings(model_base_path=str(base), rest_api_port=0))


def test_the_poll_survives_a_failing_listing_and_a_stray_folder(model_base_path, tmp_path, monkeypatch, caplog):
    base_path = tmp_path / "cxr"
    shutil.copytree(os.path.join(model_base_path, "1"), base_path / "1")
    (base_path / "\u00b2").mkdir()  # "²": str.isdigit() says yes, int() says no
    running = start(ServerSettings(model_base_path=str(base_path), rest_api_port=0, file_system_poll_wait_seconds=0.2))
    real_listdir, failures = tf.io.gfile.listdir, []

    def flaky_listdir(path):
        if len(failures) < 3:
            failures.append(path)
            raise tf.errors.UnavailableError(None, None, "the volume went away for a moment")
        return real_listdir(path)

    try:
        with caplog.at_level(logging.INFO, logger="cxr.serve"):
            monkeypatch.setattr(tf.io.gfile, "listdir", flaky_listdir)
            _wait_for(lambda: len(failures) == 3)
            shutil.copytree(base_path / "1", base_path / "2")
            _wait_for(lambda: _states(running).get(2, ("",))[0] == "AVAILABLE")
        assert _post(running, _one(demo_png(9))).status_code == 200
        assert sum("looking for versions of cxr" in record.getMessage() for record in caplog.records) == 3
        assert any("version 2 of cxr AVAILABLE" in record.getMessage() for record in caplog.records)
    finally:
        running.stop()


def test_connections_beyond_the_cap_are_answered_503():
    from cxr.serving.http_server import HttpLimits, HttpServer
    http = HttpServer(lambda method, path, body: (200, b"{}"), "127.0.0.1", 0,
                      HttpLimits(max_body_bytes=1024, header_timeout_s=5, max_connections=2)).start()
    try:
        host, port = http.server_address
        held = [socket.create_connection((host, port), timeout=10) for _ in range(2)]
        time.sleep(0.2)  # both accepted and waiting for their headers
        with socket.create_connection((host, port), timeout=10) as third:
            answer = _received(third)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"server busy: 2 connections open" in answer
        for sock in held:
            sock.close()
    finally:
        http.stop()


@pytest.mark.parametrize("body", [
    lambda tiny: {"instances": [{"b64": tiny}] * 2_000},
    lambda tiny: {"instances": [{contract.IMAGES_INPUT: {"b64": tiny}}] * 2_000},
    lambda tiny: {"inputs": {contract.IMAGES_INPUT: [{"b64": tiny}] * 2_000}},
], ids=["row", "named", "columnar"])
def test_thousands_of_tiny_images_are_refused_before_any_is_decoded_and_the_next_request_is_answered(server, body):
    # 2,000 1x1 PNGs, about 210 KB: once 0.75 -> 7 GB resident; 20,000 crashed the server.
    tiny = _b64(encode(Image.new("L", (1, 1), 90), "PNG"))
    started = time.monotonic()
    answer = _post(server, body(tiny))
    assert answer.status_code == 400
    assert f"more than {contract.MAX_IMAGES_PER_REQUEST} images (limit --max_images_per_request)" in answer.json()["error"]
    assert time.monotonic() - started < 5
    assert _post(server, _one(demo_png(1))).status_code == 200
    assert _post(server, {"instances": [{"b64": tiny}] * contract.MAX_IMAGES_PER_REQUEST}).status_code == 200


def test_request_bodies_held_at_once_are_bounded_in_bytes_and_the_server_recovers(model_base_path):
    # Two connections sending 600 KB bodies slowly, against a budget of 1 MB: the second waits for nothing,
    # it is answered 503; once the first is done, requests are answered again.
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0, body_timeout_seconds=5.0))
    running.http.limits = dataclasses.replace(running.http.limits, max_buffered_bytes=1_000_000)
    host, port = running.http.server_address
    try:
        first = socket.create_connection((host, port), timeout=10)
        first.sendall(b"POST /v1/models/cxr:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 600000\r\n\r\n" + b" " * 1000)
        time.sleep(0.3)
        second = requests.post(f"{running.url}/v1/models/cxr:predict", data=b" " * 600_000, timeout=30)
        assert second.status_code == 503 and "bytes of request bodies held already" in second.json()["error"]
        # A body far larger than the socket's buffers: the server reads and discards what the client still
        # sends after answering (a lingering close), so the client gets the 503 rather than a broken pipe.
        import http.client
        third = http.client.HTTPConnection(host, port, timeout=30)
        third.request("POST", "/v1/models/cxr:predict", body=b" " * 16_000_000)
        answer = third.getresponse()
        assert answer.status == 503 and b"bytes of request bodies held already" in answer.read()
        third.close()
        first.close()
        time.sleep(0.3)
        assert _post(running, _one(demo_png(1))).status_code == 200
        deadline = time.monotonic() + 5  # released once the answer is written, which the client may see first
        while running.http._buffered and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running.http._buffered == 0
    finally:
        running.stop()
