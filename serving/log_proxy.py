"""`cxr log-proxy`: a front for TF Serving's REST API that logs a sample of what the model answers.

Every request is passed to TF Serving (the `upstream`) as it came and its answer returned as it
went, status and body; a sidecar in the serving pod, the Service pointing at it
(serving/k8s/). Once its answer is sent, an answered :predict request is offered to the request
log (serving/request_log.py), which samples it, and builds and writes its PredictionLog on its own
thread: the JSON is parsed there, not on the request's path. Refused ones (4xx) are counted
by status and reason. The version that answered a request for the latest version or a label is
read from TF Serving's metadata of the same path (cached for a while, so a push within that
while may be logged under the previous version).
"""
import http.client
import json
import logging
import re
import socket
import sys
import threading
import time
import urllib.parse
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import requests

from cxr import contract
from cxr.serving.dicom_front import converted_body, logged_acquisitions
from cxr.serving.errors import ServingError
from cxr.serving.http_server import HttpServer, wait_until_stopped, write_address
from cxr.serving.request_log import RequestLogger, Served
from cxr.serving.rest_json import (
    check_image_count, decode_b64, error_body, input_values, parse_body, signature_name)
from cxr.serving.server_settings import ProxySettings

log = logging.getLogger("cxr.log_proxy")
_PREDICT = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:predict")
VERSION_CACHE_S = 30.0
# The request log's writer thread builds each record in a burst of Python under the GIL (about 1.5 ms
# for a 224 px image); at Python's default switch interval (5 ms) a request whose thread waits for the
# GIL behind it waits through the burst. A shorter interval bounds that wait (bench/RESULTS.md).
GIL_SWITCH_INTERVAL_S = 0.0005


class LogProxy:
    def __init__(self, settings: ProxySettings, clock: Callable[[], float] = time.time):
        """clock: the time the request log stamps each record with (and names its files by)."""
        self.settings = settings
        self.upstream = settings.upstream.rstrip("/")
        if "://" not in self.upstream:
            self.upstream = f"http://{self.upstream}"
        log_settings = settings.request_log()
        self.request_log = RequestLogger(log_settings, clock=clock) if log_settings else None
        self.dicom_rules = settings.dicom_rules()
        self._sessions = threading.local()
        self._versions: Dict[str, Tuple[float, int]] = {}
        self._versions_lock = threading.Lock()
        self.http = HttpServer(self.handle, settings.host, settings.port, settings.http_limits(),
                               answered=self.answered if self.request_log is not None else None, tls=settings.tls())

    def start(self) -> "LogProxy":
        self.http.start()
        return self

    @property
    def url(self) -> str:
        host, port = self.http.server_address
        return f"{'https' if self.http.tls else 'http'}://{host}:{port}"

    def stop(self, drain_s: float = 0.0) -> None:
        self.http.stop(drain_s)
        if self.request_log is not None:
            self.request_log.close()

    def answered(self, method: str, path: str, handled: tuple, status: int, answer: bytes) -> None:
        """Once the answer is on its way: offered to the request log, whose writer thread then builds the
        record while the client reads, not before it is answered. `handled`: (the body forwarded, the
        acquisitions of the DICOM files it held)."""
        if method == "POST":
            self._log(path, *handled, status, answer)

    def handle(self, method: str, path: str, body: bytes) -> Tuple[int, bytes, bytes]:
        """On a worker thread: the request passed to TF Serving as it came, DICOM files converted to PNG
        (serving/dicom_front.py), unless it holds more images than allowed (400, nothing forwarded);
        (status, its answer or 502 / 504, the body forwarded)."""
        acquisitions: list = []
        if method == "POST" and _PREDICT.fullmatch(path):
            try:
                check_image_count(body, self.settings.max_images_per_request)
                body, acquisitions = converted_body(body, self.dicom_rules)
            except ServingError as error:
                return error.http_status, error_body(error.message), (body, [])
        return (*self._forward(method, path, body), (body, acquisitions))

    def _forward(self, method: str, path: str, body: bytes) -> Tuple[int, bytes]:
        try:
            try:
                return self._exchange(method, path, body)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._close_connection()  # an idle kept-alive connection the server closed: once more, on a new one
                return self._exchange(method, path, body)
        except socket.timeout:
            self._close_connection()
            return 504, error_body(f"TF Serving at {self.upstream} did not answer within "
                                   f"{self.settings.upstream_timeout_seconds:g} s")
        except (OSError, http.client.HTTPException) as error:
            self._close_connection()
            return 502, error_body(f"cannot reach TF Serving at {self.upstream}: {error}")

    def _exchange(self, method: str, path: str, body: bytes) -> Tuple[int, bytes]:
        # http.client on a kept-alive connection per worker thread: `requests` cost 2.2 ms more a request
        # (p50, one 224 px image); bench/RESULTS.md, "Request log proxy".
        connection = self._connection()
        connection.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._sessions, "connection", None)
        if connection is None:
            parsed = urllib.parse.urlsplit(self.upstream)
            connection = self._sessions.connection = http.client.HTTPConnection(
                parsed.hostname, parsed.port or 80, timeout=self.settings.upstream_timeout_seconds)
        return connection

    def _close_connection(self) -> None:
        connection = getattr(self._sessions, "connection", None)
        if connection is not None:
            connection.close()
            self._sessions.connection = None

    def _log(self, path: str, body: bytes, acquisitions: list, status: int, answer: bytes) -> None:
        match = _PREDICT.fullmatch(path)
        if not match:
            return
        if 400 <= status < 500:
            self.request_log.refused(status, refusal_reason(answer))
            return
        if status != 200:
            return
        model, version, label = match.groups()
        self.request_log.offer(label, lambda: self._logged(model, version, label, path, body, answer, acquisitions),
                               size=len(body) + len(answer))

    def _logged(self, model: str, version: Optional[str], label: Optional[str], path: str, body: bytes,
                answer: bytes, acquisitions: list):
        """On the request log's thread: the request and its answer as (served, inputs, outputs)."""
        document = parse_body(body)
        inputs, _ = input_values(document, _input_names(document))
        facts = logged_acquisitions(acquisitions, len(inputs.get(contract.IMAGES_INPUT, ())))
        if facts is not None:
            inputs[contract.ACQUISITION_LOG_INPUT] = facts
        answered = int(version) if version else self._version_of(path.rsplit(":", 1)[0])
        return Served(model, answered, label, signature_name(document)), inputs, outputs_of(json.loads(answer))

    def _version_of(self, model_path: str) -> int:
        with self._versions_lock:
            cached = self._versions.get(model_path)
        if cached and time.monotonic() - cached[0] < VERSION_CACHE_S:
            return cached[1]
        metadata = requests.get(f"{self.upstream}{model_path}/metadata", timeout=10).json()
        version = int(metadata["model_spec"]["version"])
        with self._versions_lock:
            self._versions[model_path] = (time.monotonic(), version)
        return version


def _input_names(document: dict):
    """The inputs a request names; one unnamed input is the model's images (the exported signatures')."""
    first = (document.get("instances") or [None])[0] if "instances" in document else document.get("inputs")
    if isinstance(first, dict) and set(first) != {"b64"}:
        return sorted(first)
    return [contract.IMAGES_INPUT]


def outputs_of(answer: dict) -> Dict[str, np.ndarray]:
    """TF Serving's JSON answer (row or columnar) as {output: array, one row per example}."""
    if "predictions" in answer:
        rows = answer["predictions"]
        if rows and isinstance(rows[0], dict):
            return {name: _array([row[name] for row in rows]) for name in rows[0]}
        return {"outputs": _array(rows)}
    outputs = answer["outputs"]
    if isinstance(outputs, dict):
        return {name: _array(values) for name, values in outputs.items()}
    return {"outputs": _array(outputs)}


def _array(values) -> np.ndarray:
    decoded = decode_b64(values)
    array = np.asarray(decoded)
    if array.dtype.kind in "SU":  # bytes whole (numpy's fixed-width type drops trailing zero bytes); JSON text as UTF-8
        return np.vectorize(lambda value: value if isinstance(value, bytes) else value.encode("utf-8"),
                            otypes=[object])(np.array(decoded, dtype=object))
    return array


def refusal_reason(answer: bytes) -> str:
    """TF Serving's error message cut to its kind ('Servable not found', 'JSON Parse error'...), so that
    refusals count by kind: no image, file name or number is kept."""
    try:
        message = json.loads(answer).get("error", "")
    except (ValueError, AttributeError):
        return "not JSON"
    kind = re.split(r"[:.\"'{(\[]", str(message), maxsplit=1)[0]
    return re.sub(r"\d+", "N", kind).strip()[:60] or "no message"


def serve_proxy(settings: ProxySettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    proxy = LogProxy(settings).start()
    print(f"logging proxy at {proxy.url} for TF Serving at {proxy.upstream}", flush=True)
    if settings.address_file:
        write_address(settings.address_file, proxy.url)
    try:
        wait_until_stopped(proxy.http.thread)
    finally:
        proxy.stop(settings.drain_seconds)
