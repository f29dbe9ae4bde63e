"""`cxr serve`: a development server with the subset of TF Serving's REST API that clients use.

Production runs TF Serving (serving/k8s/, the README's `docker run`). This
server exists so that a laptop or CI without the TF Serving binary can serve the
pushed model base path to the same clients, with the same URLs, JSON and status
codes (tensorflow_serving/model_servers/http_rest_api_handler.cc):

  GET  /v1/models/<m>[/versions/<v>]            version status
  GET  /v1/models/<m>[/versions/<v>|/labels/<l>]/metadata
  POST /v1/models/<m>[/versions/<v>|/labels/<l>]:predict   row or columnar

It polls the base path and loads a newly pushed version while the old one keeps
answering. Binds 127.0.0.1 unless told otherwise; its HTTP layer (http_server.py)
bounds what slow or greedy clients can hold: read deadlines, body and connection caps,
a fixed pool of workers.
"""
import argparse
import dataclasses
import json
import logging
import re
import sys
from typing import Callable, List, Optional, Tuple

import tensorflow as tf

from cxr import contract
from cxr.dicom.rules import DicomRules
from cxr.serving.dicom_front import converted_body, logged_acquisitions
from cxr.serving.errors import ServingError
from cxr.serving.http_server import HttpServer, wait_until_stopped, write_address
from cxr.serving.model_store import LoadedVersion, ModelSource, ModelStore
from cxr.serving.request_log import RequestLogger, Served
from cxr.serving.rest_json import (
    check_image_count, error_body, input_values, parse_body, predict_response, signature_name)
from cxr.serving.server_settings import ServerSettings

_POST = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)")
_GET = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?")
_GRAPH_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*")
_GRAPH_TRACE_LINES = ("Graph execution error", "Detected at node", "<stack traces unavailable>")


def model_source(settings: ServerSettings) -> ModelSource:
    if settings.model_config_file:
        return ModelSource.from_config_file(settings.model_config_file)
    if not settings.model_base_path:
        raise ValueError("give --model_base_path (the pushed <serving_dir>/<model_name>) "
                         "or --model_config_file")
    return ModelSource(name=settings.model_name, base_path=settings.model_base_path)


@dataclasses.dataclass
class RunningServer:
    url: str
    store: ModelStore
    http: HttpServer
    request_log: Optional[RequestLogger] = None

    def stop(self, drain_s: float = 0.0) -> None:
        self.http.stop(drain_s)
        self.store.stop()
        if self.request_log is not None:
            self.request_log.close()


def start(settings: ServerSettings) -> RunningServer:
    """Loads the wanted versions (refusing a base path with none), then answers requests and polls
    for new versions in the background."""
    store = ModelStore(model_source(settings), warm_up=settings.enable_model_warmup)
    store.refresh()
    store.require_a_version()
    log_settings = settings.request_log()
    request_log = RequestLogger(log_settings) if log_settings else None
    rules, most = settings.dicom_rules(), settings.max_images_per_request
    http = HttpServer(lambda method, path, body: handle(store, method, path, body, request_log, rules, most),
                      settings.host, settings.rest_api_port, settings.http_limits(), tls=settings.tls())
    store.poll_forever(settings.file_system_poll_wait_seconds)
    http.start()
    host, port = http.server_address
    return RunningServer(f"{'https' if http.tls else 'http'}://{host}:{port}", store, http, request_log)


def serve(settings: ServerSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    running = start(settings)
    source = running.store.source
    print(f"serving {source.name} from {source.base_path} at {running.url}/v1/models/{source.name}", flush=True)
    if settings.address_file:
        write_address(settings.address_file, running.url)
    try:
        wait_until_stopped(running.http.thread)
    finally:
        running.stop(settings.drain_seconds)


def handle(store: ModelStore, method: str, path: str, body: bytes,
           request_log: Optional[RequestLogger] = None, dicom_rules: DicomRules = DicomRules(),
           max_images: int = contract.MAX_IMAGES_PER_REQUEST) -> Tuple[int, bytes]:
    """One request of TF Serving's REST API: (HTTP status, JSON body); answered :predict requests are
    offered to the request log, refused ones counted there. A request with more than `max_images` images
    is refused before anything is parsed; DICOM files are converted to the PNG the model receives first,
    as `cxr log-proxy` does in front of TF Serving."""
    try:
        if method == "GET":
            answer = _get(store, path)
        elif method == "POST":
            answer = _post(store, path, body, request_log, dicom_rules, max_images)
        else:
            raise ServingError("INVALID_ARGUMENT", f"Unsupported HTTP method {method}; GET or POST")
        return 200, json.dumps(answer).encode("utf-8")
    except ServingError as error:
        if request_log is not None:
            request_log.refused(error.http_status, error.code)
        return error.http_status, error_body(error.message)


def _get(store: ModelStore, path: str) -> dict:
    match = _GET.fullmatch(path)
    if not match:
        raise ServingError("INVALID_ARGUMENT", f"Malformed request: GET {path}")
    model, version, label, metadata = match.groups()
    if not model:
        raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
    if metadata:
        return model_metadata(store.get(model, _int(version), label), model)
    return model_status(store, model, _int(version))


def _post(store: ModelStore, path: str, body: bytes, request_log: Optional[RequestLogger] = None,
          dicom_rules: DicomRules = DicomRules(), max_images: int = contract.MAX_IMAGES_PER_REQUEST) -> dict:
    match = _POST.fullmatch(path)
    if not match:
        raise ServingError("INVALID_ARGUMENT", f"Malformed request: POST {path}")
    model, version, label, method = match.groups()
    if method.lower() != "predict":
        raise ServingError("UNIMPLEMENTED", f"the development server answers :predict only, not :{method}")
    loaded = store.get(model, _int(version), label)
    check_image_count(body, max_images)
    body, acquisitions = converted_body(body, dicom_rules)
    answered = None
    if request_log is not None:
        def answered(signature: str, inputs: dict, outputs: dict) -> None:
            facts = logged_acquisitions(acquisitions, len(inputs.get(contract.IMAGES_INPUT, ())))
            logged = inputs if facts is None else {**inputs, contract.ACQUISITION_LOG_INPUT: facts}
            request_log.offer(label, lambda: (Served(model, loaded.version, label, signature), logged, outputs))
    return predict(loaded, body, answered)


def model_status(store: ModelStore, model: str, version: Optional[int]) -> dict:
    return {"model_version_status": [
        {"version": str(status.version), "state": status.state,
         "status": {"error_code": status.error_code, "error_message": status.error_message}}
        for status in store.statuses(model, version)]}


def model_metadata(loaded: LoadedVersion, model: str) -> dict:
    return {"model_spec": {"name": model, "signature_name": "", "version": str(loaded.version)},
            "metadata": {"signature_def": {"signature_def": loaded.signature_defs}}}


def predict(loaded: LoadedVersion, body: bytes,
            answered: Optional[Callable[[str, dict, dict], None]] = None) -> dict:
    """The answer to a :predict body; `answered(signature, inputs, outputs)` sees the values of an answered one."""
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
    arrays = {key: value.numpy() for key, value in outputs.items()}
    if answered is not None:
        answered(name, values, arrays)
    return predict_response(arrays, row_format)


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


def _int(text: Optional[str]) -> Optional[int]:
    return None if text is None else int(text)


def main(argv: Optional[List[str]] = None) -> None:
    """`python -m cxr.serving.dev_server --settings '<JSON>'`: the server with these ServerSettings fields (the
    others their defaults), as a program starts it with no command line to parse (the ServingCheck does);
    people run `cxr serve` and its flags."""
    parser = argparse.ArgumentParser(prog="python -m cxr.serving.dev_server", description=main.__doc__)
    parser.add_argument("--settings", required=True, help="a JSON object of ServerSettings fields")
    fields = json.loads(parser.parse_args(argv).settings)
    serve(ServerSettings(**{name: tuple(value) if isinstance(value, list) else value
                            for name, value in fields.items()}))


if __name__ == "__main__":
    main()
