"""A client of TF Serving's REST API for the exported model: requests, numpy and Pillow only (and pydicom
for DICOM files, which it converts to the PNG the model receives: cxr/dicom/convert.py).

Sends TF Serving's documented request, {"signature_name": ..., "instances":
[{"b64": ...}, ...]}, in batches, with a timeout per request and retries while
the server is starting or busy (connection refused, HTTP 503). A batch the
server refuses is sent again one file at a time, so each error names its file.
"""
import base64
import dataclasses
import threading
import time
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import requests

from cxr import contract
from cxr.dicom.rules import DicomRefused, DicomRules, is_dicom

RETRY_STATUSES = (503,)
BATCH_SIZE = 16  # images per request
# What each signature's answer must hold for every image (components/export.py).
_EXPECTED_OUTPUTS = {
    contract.PREDICT_SIGNATURE: (contract.PROBABILITIES, contract.CLASS_ID, contract.CLASS_NAME),
    contract.EXPLAIN_SIGNATURE: (contract.PROBABILITIES, contract.CLASS_ID, contract.CLASS_NAME, contract.HEATMAP),
}


class ServingRequestError(RuntimeError):
    """The server's answer to a request that failed, or why no answer came."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """One file's answer: the server's outputs for it, or the server's error message."""
    path: str
    outputs: Optional[Dict[str, object]] = None
    error: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ServingClient:
    url: str = f"http://localhost:{contract.DEFAULT_REST_PORT}"
    model: str = contract.MODEL_NAME
    version: Optional[int] = None
    label: Optional[str] = None
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5
    dicom_rules: DicomRules = DicomRules()  # what a DICOM file must be to be sent
    # https:// fronts: the CA the server's certificate must chain to (default: the system's), and this
    # client's certificate and key where the front asks for one (mutual TLS).
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None

    def __post_init__(self):
        # localhost:8501, as curl lines write it, means http://localhost:8501.
        if "://" not in self.url:
            object.__setattr__(self, "url", f"http://{self.url}")

    def model_url(self) -> str:
        return self.url.rstrip("/") + contract.model_path(self.model, self.version, self.label)

    def status(self) -> dict:
        # A label in the status URL is ignored by TF Serving: ask for the whole model.
        path = contract.model_path(self.model, self.version)
        return self._send("GET", self.url.rstrip("/") + path)

    def wait_until_available(self, timeout_s: float) -> dict:
        """Polls the model's status until a version is AVAILABLE; raises after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status = self.status()
                if any(entry["state"] == "AVAILABLE" for entry in status["model_version_status"]):
                    return status
                problem = f"no version AVAILABLE yet: {status['model_version_status']}"
            except ServingRequestError as error:
                problem = error.message
            if time.monotonic() >= deadline:
                raise ServingRequestError(f"{self.model} at {self.url} not available after {timeout_s:g} s: {problem}")
            time.sleep(0.5)

    def predict(self, images: Sequence[bytes], signature: str = contract.PREDICT_SIGNATURE) -> List[dict]:
        """One output dict per image, as TF Serving's row format answers; any other answer is an error."""
        body = {"signature_name": signature,
                "instances": [{"b64": base64.b64encode(image).decode("ascii")} for image in images]}
        answer = self._send("POST", self.model_url() + ":predict", body)
        return _checked_predictions(answer, len(images), _EXPECTED_OUTPUTS.get(signature, ()))

    def predict_files(self, paths: Sequence[str], signature: str = contract.PREDICT_SIGNATURE,
                      batch_size: int = BATCH_SIZE) -> Iterator[ImageResult]:
        """One result per file, in order; a DICOM file is sent as the PNG the model receives (converted here,
        as ingestion and the serving fronts do), and one the conversion refuses is answered with why."""
        for batch in _batches(paths, batch_size):
            prepared = [self._image(path) for path in batch]
            sendable = [(path, image) for path, image in zip(batch, prepared) if isinstance(image, bytes)]
            answers = dict(self._answers([path for path, _ in sendable], [image for _, image in sendable], signature))
            for path, image in zip(batch, prepared):
                yield answers[path] if isinstance(image, bytes) else ImageResult(path, error=image.problem_line)

    def _image(self, path: str):
        data = _read(path)
        if not is_dicom(data):
            return data
        from cxr.dicom.convert import convert  # pydicom, only for a DICOM file
        try:
            return convert(data, self.dicom_rules).png
        except DicomRefused as refused:
            return _Refused(f"DICOM refused: {refused}")

    def _answers(self, batch: Sequence[str], images: List[bytes], signature: str) -> Iterator[Tuple[str, ImageResult]]:
        if not batch:
            return
        try:
            yield from ((path, ImageResult(path, outputs))
                        for path, outputs in zip(batch, self.predict(images, signature)))
        except ServingRequestError as error:
            if len(batch) > 1 and error.status is not None and error.status < 500:
                yield from ((result.path, result) for result in self._one_by_one(batch, images, signature))
            else:
                yield from ((path, ImageResult(path, error=error.message)) for path in batch)

    def _one_by_one(self, paths, images, signature) -> Iterator[ImageResult]:
        for path, image in zip(paths, images):
            try:
                yield ImageResult(path, self.predict([image], signature)[0])
            except ServingRequestError as error:
                yield ImageResult(path, error=error.message)

    def _session(self) -> requests.Session:
        """One kept-alive connection pool per thread: a TLS handshake per request would cost more than the
        request (bench/RESULTS.md, Request log proxy)."""
        local = self.__dict__.get("_local")
        if local is None:
            local = threading.local()
            object.__setattr__(self, "_local", local)
        if getattr(local, "session", None) is None:
            local.session = requests.Session()
        return local.session

    def _send(self, method: str, url: str, body: Optional[dict] = None) -> dict:
        for attempt in range(self.retries + 1):
            try:
                response = self._session().request(
                    method, url, json=body, timeout=self.timeout_s, verify=self.ca_file or True,
                    cert=(self.cert_file, self.key_file) if self.cert_file else None)
            except requests.exceptions.SSLError as error:
                raise ServingRequestError(f"TLS with {url} failed: {_reason(error)} (--ca-file is the CA of the "
                                          f"server's certificate; --cert-file and --key-file this client's)") from None
            except requests.ConnectionError as error:
                failure = ServingRequestError(f"cannot reach {url}: {_reason(error)}")
            except requests.Timeout:
                raise ServingRequestError(f"no answer from {url} within {self.timeout_s:g} s") from None
            else:
                if response.status_code == 200:
                    return _json_answer(response)
                failure = ServingRequestError(_server_message(response), response.status_code)
                if response.status_code not in RETRY_STATUSES:
                    raise failure
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        raise failure


def _json_answer(response: requests.Response) -> dict:
    try:
        return response.json()
    except ValueError:
        start = " ".join(response.text.split())[:120]
        raise ServingRequestError(f"HTTP 200 but not JSON from {response.url}: {start!r}") from None


def _checked_predictions(answer, images: int, outputs: Sequence[str]) -> List[dict]:
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(predictions, list):
        keys = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
        raise ServingRequestError(f"the answer has no 'predictions' list (it has {keys})")
    if len(predictions) != images:
        raise ServingRequestError(f"the server answered {len(predictions)} predictions for {images} images")
    for prediction in predictions:
        missing = [name for name in outputs if not isinstance(prediction, dict) or name not in prediction]
        if missing:
            raise ServingRequestError(f"a prediction lacks {', '.join(missing)}: is this the cxr model?")
    return predictions


class _Refused(NamedTuple):
    problem_line: str


def _batches(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return (items[start:start + size] for start in range(0, len(items), size))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _server_message(response: requests.Response) -> str:
    try:
        message = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason
    return f"HTTP {response.status_code}: {message}"


def _reason(error: requests.ConnectionError) -> str:
    text = str(error).lower()
    if "refused" in text:
        return "connection refused: is the server running (cxr serve, or TF Serving's --rest_api_port)?"
    if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
        return "unknown host name: check --url"
    return str(error)
