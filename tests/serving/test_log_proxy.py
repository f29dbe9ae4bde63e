"""cxr log-proxy in front of a server with TF Serving's REST API (cxr serve stands in for TF Serving)."""
import base64
import http.client
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import tensorflow as tf

from cxr import contract
from cxr.serving.client import ServingClient, ServingRequestError
from cxr.serving.dev_server import ServerSettings, start
from cxr.serving.log_proxy import LogProxy, outputs_of, refusal_reason
from cxr.serving.request_log import log_files, read_logs
from cxr.serving.server_settings import ProxySettings
from trained_model import demo_png


@pytest.fixture
def upstream(model_base_path):
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0))
    yield running
    running.stop()


def _proxy(upstream_url, root, **settings):
    return LogProxy(ProxySettings(upstream=upstream_url, port=0, request_log_root=str(root),
                                  request_log_sample_rate=1.0, **settings)).start()


def test_answers_pass_through_unchanged_and_each_is_logged_with_the_version_that_answered(upstream, tmp_path):
    proxy = _proxy(upstream.url, tmp_path / "log")
    images = [demo_png(seed) for seed in range(4)]
    try:
        direct = ServingClient(upstream.url).predict(images, contract.EXPLAIN_SIGNATURE)
        through = ServingClient(proxy.url).predict(images, contract.EXPLAIN_SIGNATURE)
        assert ServingClient(proxy.url).status() == ServingClient(upstream.url).status()
        with pytest.raises(ServingRequestError, match="Servable not found"):
            ServingClient(proxy.url, model="nope", retries=0).predict(images[:1])
    finally:
        proxy.stop()
    assert through == direct
    [record] = read_logs(log_files(str(tmp_path / "log")))
    spec = record.log_metadata.model_spec
    assert (spec.name, spec.signature_name, spec.version.value) == ("cxr", contract.EXPLAIN_SIGNATURE, 1)
    assert list(tf.make_ndarray(record.predict_log.request.inputs[contract.IMAGES_INPUT])) == images
    outputs = record.predict_log.response.outputs
    assert np.allclose(tf.make_ndarray(outputs[contract.HEATMAP]), [d[contract.HEATMAP] for d in direct], atol=1e-6)
    assert [name.decode() for name in tf.make_ndarray(outputs[contract.CLASS_NAME])] == [
        d[contract.CLASS_NAME] for d in direct]
    counts = proxy.request_log.counts()
    assert counts["written"] == 1 and counts["refused: 404 Servable not found for request"] == 1


def test_a_server_that_cannot_be_reached_is_a_bad_gateway_and_nothing_is_logged(tmp_path):
    proxy = _proxy("http://127.0.0.1:9", tmp_path / "log")  # the discard port: nothing listens
    try:
        response = requests.post(f"{proxy.url}/v1/models/cxr:predict", json={"instances": [1]}, timeout=30)
    finally:
        proxy.stop()
    assert response.status_code == 502 and "cannot reach TF Serving at http://127.0.0.1:9" in response.json()["error"]
    assert log_files(str(tmp_path / "log")) == [] and proxy.request_log.counts() == {}


def test_tf_serving_s_answers_become_one_array_per_output_in_either_format():
    rows = {"predictions": [{"class_name": "COVID", "probabilities": [0.1, 0.9]},
                            {"class_name": "NORMAL", "probabilities": [0.8, 0.2]}]}
    outputs = outputs_of(rows)
    assert list(outputs["class_name"]) == [b"COVID", b"NORMAL"]
    assert outputs["probabilities"].shape == (2, 2)
    columns = outputs_of({"outputs": {"image_bytes": [{"b64": "AAEAAA=="}], "score": [0.5]}})
    assert list(columns["image_bytes"]) == [b"\x00\x01\x00\x00"]  # trailing zero bytes kept


@pytest.mark.parametrize("answer, reason", [
    (b'{"error": "Servable not found for request: Latest(nope)"}', "Servable not found for request"),
    (b'{"error": "JSON Parse error: Invalid value. at offset: 0"}', "JSON Parse error"),
    (b'{"error": "Expected 4 bytes, 17 given"}', "Expected N bytes, N given"),
    (b"<html>", "not JSON"),
])
def test_refusals_count_by_the_kind_of_error_without_what_the_request_carried(answer, reason):
    assert refusal_reason(answer) == reason


def test_a_kept_alive_connection_the_server_closed_is_opened_again(model_base_path, tmp_path):
    # The proxy keeps one connection per worker to the server; the server closes idle ones (here after
    # 0.5 s, TF Serving's REST server after its own idle time): the next request must not fail for it.
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0, read_timeout_seconds=0.5))
    proxy = LogProxy(ProxySettings(upstream=running.url, port=0, workers=1)).start()
    try:
        client = ServingClient(proxy.url, retries=0)
        first = client.predict([demo_png(1)])
        time.sleep(1.5)
        assert client.predict([demo_png(1)]) == first
    finally:
        proxy.stop()
        running.stop()


def test_on_sigterm_the_proxy_writes_what_it_holds_and_closes_its_log(upstream, tmp_path):
    # Kubernetes stops a pod's containers with SIGTERM; the records queued and the open file must not be lost.
    address = tmp_path / "address"
    proxy = subprocess.Popen([sys.executable, "-m", "cxr", "log-proxy", "--upstream", upstream.url, "--port", "0",
                              "--request_log_root", str(tmp_path / "log"), "--request_log_sample_rate", "1.0",
                              "--address_file", str(address)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not address.exists() and proxy.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        images = [demo_png(seed) for seed in range(3)]
        for image in images:
            ServingClient(address.read_text().strip()).predict([image])
    finally:
        proxy.send_signal(signal.SIGTERM)
        _, stderr = proxy.communicate(timeout=60)
    assert proxy.returncode == 0, stderr[-2000:]
    logged = read_logs(log_files(str(tmp_path / "log")))
    assert [tf.make_ndarray(r.predict_log.request.inputs[contract.IMAGES_INPUT])[0] for r in logged] == images


def test_a_failure_after_the_answer_is_sent_costs_neither_that_answer_nor_the_next(upstream, tmp_path, monkeypatch):
    proxy = _proxy(upstream.url, tmp_path / "log")

    def broken(label, build):
        raise RuntimeError("a bug in the request log")
    monkeypatch.setattr(proxy.request_log, "offer", broken)
    host, port = proxy.http.server_address
    connection = http.client.HTTPConnection(host, port, timeout=60)  # one connection, never opened again
    answers = []
    try:
        for seed in range(2):
            body = json.dumps({"instances": [{"b64": base64.b64encode(demo_png(seed)).decode()}]})
            connection.request("POST", "/v1/models/cxr:predict", body=body,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
    finally:
        connection.close()
        proxy.stop()
    assert [status for status, _ in answers] == [200, 200]
    assert all(len(answer["predictions"]) == 1 for _, answer in answers)


def test_a_request_of_too_many_images_is_refused_at_the_proxy_and_never_reaches_the_server(upstream, tmp_path):
    import base64 as b64
    from helpers import encode
    from PIL import Image
    proxy = _proxy(upstream.url, tmp_path / "log", max_images_per_request=4)
    tiny = b64.b64encode(encode(Image.new("L", (1, 1), 90), "PNG")).decode()
    url = proxy.url + contract.model_path(contract.MODEL_NAME) + ":predict"
    try:
        refused = requests.post(url, json={"instances": [{"b64": tiny}] * 5}, timeout=30)
        assert refused.status_code == 400
        assert "more than 4 images (limit --max_images_per_request)" in refused.json()["error"]
        assert len(ServingClient(proxy.url).predict([demo_png(seed) for seed in range(4)])) == 4
    finally:
        proxy.stop()
    counts = proxy.request_log.counts()
    assert counts["refused: 400 the request holds more than N images"] == 1
    assert counts["written"] == 1  # the answered one; the refused request was not forwarded


def test_on_sigterm_the_proxy_finishes_the_request_under_way_then_stops(tmp_path):
    # Kubernetes sends SIGTERM as it takes the pod out of the Service: a request already forwarded must
    # still get its answer (the upstream here takes 2 s to answer).
    import threading as threads
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(2)
            body = json.dumps({"predictions": [{"class_name": "NORMAL"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    slow = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threads.Thread(target=slow.serve_forever, daemon=True).start()
    address = tmp_path / "address"
    proxy = subprocess.Popen([sys.executable, "-m", "cxr", "log-proxy", "--upstream",
                              f"http://127.0.0.1:{slow.server_address[1]}", "--port", "0",
                              "--address_file", str(address)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not address.exists() and proxy.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        url = address.read_text().strip() + contract.model_path(contract.MODEL_NAME) + ":predict"
        answers = []
        sender = threads.Thread(target=lambda: answers.append(requests.post(url, json={"instances": [1]}, timeout=30)))
        sender.start()
        time.sleep(0.7)
        proxy.send_signal(signal.SIGTERM)
        sender.join(30)
        _, stderr = proxy.communicate(timeout=60)
    finally:
        slow.shutdown()
        if proxy.poll() is None:
            proxy.kill()
    assert proxy.returncode == 0, stderr[-2000:]
    assert [answer.status_code for answer in answers] == [200]
