"""`cxr predict`, the REST client: table, JSON, Grad-CAM overlays, errors per file, retries, no TFX."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from cxr import contract
from cxr.cli import main
from cxr.serving.client import ServingClient, ServingRequestError
from cxr.serving.dev_server import ServerSettings, start
from helpers import encode, write
from trained_model import demo_png


@pytest.fixture(scope="module")
def server(model_base_path):
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0))
    yield running
    running.stop()


@pytest.fixture
def xrays(tmp_path):
    return [write(str(tmp_path / "in" / f"{label.lower()}.png"), demo_png(seed, label))
            for seed, label in enumerate(contract.LABELS)]


def test_predict_prints_a_row_per_file_with_the_class_and_every_probability(server, xrays, capsys):
    assert main(["predict", *xrays, "--url", server.url, "--batch-size", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["file", "class", *contract.LABELS]
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == [os.path.basename(path) for path in xrays]
    for row in rows:
        assert row[1] in contract.LABELS
        probabilities = [float(value) for value in row[2:]]
        assert sum(probabilities) == pytest.approx(1.0, abs=0.01)
        assert probabilities[contract.LABELS.index(row[1])] == max(probabilities)


def test_json_output_and_explain_write_an_overlay_the_size_of_each_xray(server, xrays, tmp_path, capsys):
    wide = write(str(tmp_path / "in" / "wide.jpg"),
                 encode(Image.open(xrays[0]).convert("L").resize((150, 100)), "JPEG"))
    out_dir = str(tmp_path / "explained")
    assert main(["predict", *xrays, wide, "--url", server.url, "--json", "--explain", out_dir]) == 0
    documents = json.loads(capsys.readouterr().out)
    assert [d["file"] for d in documents] == [*xrays, wide]
    for document in documents:
        assert document["class_name"] == contract.LABELS[document["class_id"]]
        overlay = Image.open(document["gradcam_png"])
        assert overlay.mode == "RGB" and overlay.size == Image.open(document["file"]).size


def test_a_file_the_server_refuses_gets_the_servers_message_and_the_others_their_answers(
        server, xrays, tmp_path, capsys):
    broken = write(str(tmp_path / "in" / "broken.png"), b"not an x-ray at all")
    assert main(["predict", xrays[0], broken, xrays[1], "--url", server.url]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.strip().splitlines()[1:]}
    assert "HTTP 400" in lines["broken.png"] and "not a PNG or JPEG file" in lines["broken.png"]
    assert lines[os.path.basename(xrays[0])].split()[1] in contract.LABELS
    assert lines[os.path.basename(xrays[1])].split()[1] in contract.LABELS


def test_a_url_without_its_scheme_is_taken_as_http(server, xrays, capsys):
    # As curl lines write it: localhost:8501.
    assert main(["predict", xrays[0], "--url", server.url.split("://", 1)[1]]) == 0
    assert os.path.basename(xrays[0]) in capsys.readouterr().out


def test_a_missing_file_is_named_before_anything_is_sent(capsys):
    assert main(["predict", "/no/such/xray.png", "--url", "http://127.0.0.1:9"]) == 2
    assert "/no/such/xray.png: no such image file" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_client_retries_while_the_server_refuses_connections(model_base_path):
    port = _free_port()
    started = []
    starter = threading.Timer(1.0, lambda: started.append(
        start(ServerSettings(model_base_path=model_base_path, rest_api_port=port))))
    starter.start()
    try:
        client = ServingClient(url=f"http://127.0.0.1:{port}", retries=8, backoff_s=0.5)
        predictions = client.predict([demo_png(1)])
        assert predictions[0][contract.CLASS_NAME] in contract.LABELS
    finally:
        starter.join()
        for running in started:
            running.stop()


NORMAL_PREDICTION = {"class_name": "NORMAL", "class_id": 2, "probabilities": [0.0, 0.0, 1.0, 0.0]}


class _BusyThenReady(BaseHTTPRequestHandler):
    """Answers 503 to the first `busy` requests, as a server still loading its model does."""
    busy = 2
    seen = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(self.path)
        if len(self.seen) <= self.busy:
            status, body = 503, {"error": "model is loading"}
        else:
            status, body = 200, {"predictions": [NORMAL_PREDICTION]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_the_client_retries_on_503_and_gives_up_with_the_servers_message():
    _BusyThenReady.seen = []
    http = ThreadingHTTPServer(("127.0.0.1", 0), _BusyThenReady)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{http.server_address[1]}"
    try:
        assert ServingClient(url=url, retries=3, backoff_s=0.01, label="canary").predict([b"x"]) == [
            NORMAL_PREDICTION]
        assert _BusyThenReady.seen == ["/v1/models/cxr/labels/canary:predict"] * 3
        _BusyThenReady.seen = []
        with pytest.raises(ServingRequestError, match="HTTP 503: model is loading") as raised:
            ServingClient(url=url, retries=1, backoff_s=0.01).predict([b"x"])
        assert raised.value.status == 503 and len(_BusyThenReady.seen) == 2
    finally:
        http.shutdown()


def test_waiting_for_a_server_that_never_comes_names_the_model_and_url():
    client = ServingClient(url=f"http://127.0.0.1:{_free_port()}", retries=0)
    started = time.monotonic()
    with pytest.raises(ServingRequestError, match="cxr at http://127.0.0.1:.* not available after 1 s"):
        client.wait_until_available(1.0)
    assert time.monotonic() - started < 10


def test_the_client_runs_without_tensorflow_or_tfx(server, xrays):
    blocker = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = ("tensorflow", "tfx", "tensorflow_transform", "apache_beam", "tf_keras")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        from cxr.cli import main
        code = main(["predict", {xrays[0]!r}, "--url", {server.url!r}, "--explain", {os.path.dirname(xrays[0])!r}])
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert os.path.basename(xrays[0]) in done.stdout


class _OddServer(BaseHTTPRequestHandler):
    """Answers every :predict with HTTP 200 and `answer`: what a proxy, another model or a bug might send."""
    answer = b""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("answer, message", [
    (b"<html>Sign in to continue</html>", "HTTP 200 but not JSON"),
    (json.dumps({"predictions": [{"class_name": "NORMAL", "class_id": 2, "probabilities": [0, 0, 1, 0]}]}).encode(),
     "the server answered 1 predictions for 2 images"),
    (json.dumps({"outputs": {"scores": [[0.5]]}}).encode(), "no 'predictions' list"),
    (json.dumps({"predictions": [{"scores": [0.1]}, {"scores": [0.9]}]}).encode(),
     "a prediction lacks probabilities, class_id, class_name"),
])
def test_an_answer_that_is_not_one_prediction_per_file_is_an_error_for_each_file(xrays, capsys, answer, message):
    _OddServer.answer = answer
    http = ThreadingHTTPServer(("127.0.0.1", 0), _OddServer)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        assert main(["predict", *xrays[:2], "--url", f"http://127.0.0.1:{http.server_address[1]}"]) == 1
    finally:
        http.shutdown()
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert len(rows) == 2 and all(message in row for row in rows), rows


def test_files_of_the_same_name_from_different_folders_keep_their_own_rows_and_overlays(server, tmp_path, capsys):
    first = write(str(tmp_path / "site-a" / "COVID-1.png"), demo_png(1, "COVID"))
    second = write(str(tmp_path / "site-b" / "COVID-1.png"), demo_png(2, "NORMAL"))
    out_dir = tmp_path / "explained"
    assert main(["predict", first, second, "--url", server.url, "--explain", str(out_dir)]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()[1:-2]]
    assert rows == ["site-a/COVID-1.png", "site-b/COVID-1.png"]
    assert sorted(os.listdir(out_dir)) == ["site-a__COVID-1_gradcam.png", "site-b__COVID-1_gradcam.png"]
