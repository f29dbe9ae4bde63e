"""`cxr serve`: a development server with the subset of TF Serving's REST API that clients use.

Production runs TF Serving (serving/k8s/, the README's `docker run`). This
server exists so that a laptop or CI without the TF Serving binary can serve the
pushed model base path to the same clients, with the same URLs, JSON and status
codes (tensorflow_serving/model_servers/http_rest_api_handler.cc):

  GET  /v1/models/<m>[/versions/<v>]            version status
  GET  /v1/models/<m>[/versions/<v>|/labels/<l>]/metadata
  POST /v1/models/<m>[/versions/<v>|/labels/<l>]:predict   row or columnar

It polls the base path and loads a newly pushed version while the old one keeps
answering. Binds 127.0.0.1 unless told otherwise and refuses oversized bodies.
"""
import dataclasses
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import tensorflow as tf

from cxr.serving import contract
from cxr.serving.errors import ServingError
from cxr.serving.model_store import LoadedVersion, ModelSource, ModelStore
from cxr.serving.rest_json import error_body, input_values, parse_body, predict_response, signature_name

_POST = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)")
_GET = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?")
_GRAPH_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*")
_GRAPH_TRACE_LINES = ("Graph execution error", "Detected at node", "<stack traces unavailable>")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    model_base_path: Optional[str] = None
    model_name: str = "cxr"
    model_config_file: Optional[str] = None
    rest_api_port: int = contract.DEFAULT_REST_PORT
    host: str = "127.0.0.1"
    file_system_poll_wait_seconds: float = 1.0
    max_body_bytes: int = 64 * 1024 * 1024
    enable_model_warmup: bool = True

    def model_source(self) -> ModelSource:
        if self.model_config_file:
            return ModelSource.from_config_file(self.model_config_file)
        if not self.model_base_path:
            raise ValueError("give --model_base_path (the pushed <serving_dir>/<model_name>) "
                             "or --model_config_file")
        return ModelSource(name=self.model_name, base_path=self.model_base_path)


@dataclasses.dataclass
class RunningServer:
    url: str
    store: ModelStore
    http: ThreadingHTTPServer
    thread: threading.Thread

    def stop(self) -> None:
        self.store.stop()
        self.http.shutdown()
        self.http.server_close()


def start(settings: ServerSettings) -> RunningServer:
    """Loads the wanted versions, then answers requests and polls for new versions in the background."""
    store = ModelStore(settings.model_source(), warm_up=settings.enable_model_warmup)
    store.refresh()
    store.poll_forever(settings.file_system_poll_wait_seconds)
    handler = type("Handler", (_Handler,), {"store": store, "max_body_bytes": settings.max_body_bytes})
    http = ThreadingHTTPServer((settings.host, settings.rest_api_port), handler)
    http.daemon_threads = True
    thread = threading.Thread(target=http.serve_forever, name="rest-api", daemon=True)
    thread.start()
    host, port = http.server_address[:2]
    return RunningServer(f"http://{host}:{port}", store, http, thread)


def serve(settings: ServerSettings) -> None:
    running = start(settings)
    source = running.store.source
    print(f"serving {source.name} from {source.base_path} at {running.url}/v1/models/{source.name}", flush=True)
    try:
        running.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()


def model_status(store: ModelStore, model: str, version: Optional[int]) -> dict:
    return {"model_version_status": [
        {"version": str(status.version), "state": status.state,
         "status": {"error_code": status.error_code, "error_message": status.error_message}}
        for status in store.statuses(model, version)]}


def model_metadata(loaded: LoadedVersion, model: str) -> dict:
    return {"model_spec": {"name": model, "signature_name": "", "version": str(loaded.version)},
            "metadata": {"signature_def": {"signature_def": loaded.signature_defs}}}


def predict(loaded: LoadedVersion, body: bytes) -> dict:
    document = parse_body(body)
    name = signature_name(document)
    if name not in loaded.signatures:
        raise ServingError("INVALID_ARGUMENT", f'Serving signature name: "{name}" not found in signature def')
    function = loaded.signatures[name]
    specs = function.structured_input_signature[1]
    values, row_format = input_values(document, sorted(specs))
    tensors = {input_name: _tensor(input_name, values[input_name], spec) for input_name, spec in specs.items()}
    try:
        outputs = function(**tensors)
    except tf.errors.OpError as error:
        raise ServingError(_code_name(error), _clean(error.message)) from error
    return predict_response({key: value.numpy() for key, value in outputs.items()}, row_format)


def _tensor(name: str, values: list, spec: tf.TensorSpec) -> tf.Tensor:
    try:
        tensor = tf.constant(values, dtype=spec.dtype)
    except (TypeError, ValueError) as error:
        raise ServingError("INVALID_ARGUMENT", f"input {name}: expected {spec.dtype.name} values: {error}") from error
    if not spec.shape.is_compatible_with(tensor.shape):
        raise ServingError("INVALID_ARGUMENT", f"input {name}: expected shape {spec.shape}, got {tensor.shape}")
    return tensor


def _code_name(error: tf.errors.OpError) -> str:
    return {tf.errors.INVALID_ARGUMENT: "INVALID_ARGUMENT", tf.errors.NOT_FOUND: "NOT_FOUND",
            tf.errors.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED", tf.errors.OUT_OF_RANGE: "OUT_OF_RANGE",
            tf.errors.FAILED_PRECONDITION: "FAILED_PRECONDITION"}.get(error.error_code, "INTERNAL")


def _clean(message: str) -> str:
    """The op's message on one line, without the graph's node names and trace, which mean nothing to a client."""
    lines = _GRAPH_NOISE.sub("", message).split("\n\t [[")[0].splitlines()
    kept = [line.strip() for line in lines if line.strip() and not line.startswith(_GRAPH_TRACE_LINES)]
    return " ".join(kept) or message.strip()


class _Handler(BaseHTTPRequestHandler):
    store: ModelStore
    max_body_bytes: int
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _get(self) -> dict:
        match = _GET.fullmatch(self.path)
        if not match:
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: GET {self.path}")
        model, version, label, metadata = match.groups()
        if not model:
            raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
        if metadata:
            return model_metadata(self.store.get(model, _int(version), label), model)
        return model_status(self.store, model, _int(version))

    def _post(self) -> dict:
        body = self._body()
        match = _POST.fullmatch(self.path)
        if not match:
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: POST {self.path}")
        model, version, label, method = match.groups()
        if method.lower() != "predict":
            raise ServingError("UNIMPLEMENTED", f"the development server answers :predict only, not :{method}")
        return predict(self.store.get(model, _int(version), label), body)

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ServingError("INVALID_ARGUMENT", "a request body needs a Content-Length header")
        length = int(length)
        if length > self.max_body_bytes:
            self.close_connection = True
            raise _TooLarge(f"request body of {length} bytes is over the server's limit of "
                            f"{self.max_body_bytes} bytes (--max_body_bytes)")
        return self.rfile.read(length)

    def _answer(self, work) -> None:
        try:
            status, body = 200, json.dumps(work()).encode("utf-8")
        except _TooLarge as error:
            status, body = 413, error_body(str(error))
        except ServingError as error:
            status, body = error.http_status, error_body(error.message)
        except Exception as error:  # the server keeps answering whatever one request did
            status, body = 500, error_body(f"internal error: {type(error).__name__}: {error}")
            print(f"cxr serve: {self.command} {self.path}: {error!r}", file=sys.stderr)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


class _TooLarge(Exception):
    pass


def _int(text: Optional[str]) -> Optional[int]:
    return None if text is None else int(text)
