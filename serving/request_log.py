"""A sample of what the served model receives, kept as TF Serving's own PredictionLog records.

Open-source TF Serving's `logging_config` needs a request-logger creator that no open-source build
provides (it stops at start-up, tensorflow_serving/core/server_request_logger.cc), so the log is
written here: a uniform sample of the answered :predict requests (a rate per model version label),
each as a PredictionLog (the PredictRequest, the PredictResponse and LogMetadata: model name,
version, label, signature, time) in TFRecord files rolled by size and by hour, under a root any
TensorFlow file system reads (a folder, a volume, gs://). The same records are what TF Serving's
warm-up file holds (serving/model_store.py reads them back).

Logging never slows or fails a request: a request only offers its record to a bounded queue, and
one thread builds and writes the records. A full queue or a failed write drops the sample and
counts it. Refused requests are counted by status and error code, never stored. The log holds
patient images: retention (age and total size) is enforced each time a file is closed.
"""
import calendar
import dataclasses
import logging
import os
import queue
import random
import re
import secrets
import socket
import threading
import time
from collections import Counter
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import logging_pb2, model_pb2, predict_pb2, prediction_log_pb2

from cxr.serving.server_settings import RequestLogSettings

log = logging.getLogger("cxr.request_log")

FILE_PATTERN = "requests-*.tfrecord"
PARTIAL = ".partial"  # a file being written; renamed without it once closed
_FILE_TIME = re.compile(r"requests-(\d{8}T\d{6})-")


@dataclasses.dataclass(frozen=True)
class Served:
    """What answered a request: the model, the version that answered, the label asked for, the signature."""
    model: str
    version: int
    label: Optional[str]
    signature: str


def prediction_log(served: Served, inputs: Mapping[str, Sequence], outputs: Mapping[str, np.ndarray],
                   when: float, sample_rate: float) -> prediction_log_pb2.PredictionLog:
    """One answered :predict as TF Serving logs it: inputs and outputs as TensorProtos, one row per example."""
    spec = model_pb2.ModelSpec(name=served.model, signature_name=served.signature)
    spec.version.value = served.version
    if served.label:
        spec.version_label = served.label
    request = predict_pb2.PredictRequest(model_spec=spec)
    for name, values in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(_array(values)))
    response = predict_pb2.PredictResponse(model_spec=spec)
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(_array(value)))
    metadata = logging_pb2.LogMetadata(model_spec=spec, timestamp_secs=int(when))
    metadata.sampling_config.sampling_rate = sample_rate
    return prediction_log_pb2.PredictionLog(
        log_metadata=metadata, predict_log=prediction_log_pb2.PredictLog(request=request, response=response))


def _array(values) -> np.ndarray:
    """Bytes stay whole as objects: numpy's fixed-width bytes type drops trailing zero bytes."""
    array = np.asarray(values)
    return np.array(values, dtype=object) if array.dtype.kind == "S" else array


def read_logs(paths: Sequence[str], unreadable: Optional[List[str]] = None) -> List[prediction_log_pb2.PredictionLog]:
    """The records of these log files, as a list (iter_logs streams them)."""
    return list(iter_logs(paths, unreadable))


def iter_logs(paths: Sequence[str], unreadable: Optional[List[str]] = None) -> Iterator[prediction_log_pb2.PredictionLog]:
    """The records of these log files, one file in memory at a time (a file is at most the writer's
    max_file_bytes, it rolls over then). A file that is corrupt (a crash mid-write, a copy cut short) is
    left out whole, logged and, when `unreadable` is given, listed there as 'path: why'."""
    for path in paths:
        try:
            records = [prediction_log_pb2.PredictionLog.FromString(record.numpy())
                       for record in tf.data.TFRecordDataset([path])]
        except (tf.errors.DataLossError, tf.errors.NotFoundError, DecodeError) as error:
            reason = f"{path}: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            log.warning("request log: skipped %s", reason)
            if unreadable is not None:
                unreadable.append(reason)
            continue
        yield from records


def log_files(root: str) -> List[str]:
    """Every closed log file under root, oldest first (their names start with their time). A file being
    written is named *.tfrecord.partial until its writer closes it, and is not listed."""
    found = [os.path.join(folder, name) for folder, _, names in tf.io.gfile.walk(root)
             for name in names if name.startswith("requests-") and name.endswith(".tfrecord")]
    return sorted(found, key=os.path.basename)


def _partial_files(root: str) -> List[str]:
    return [os.path.join(folder, name) for folder, _, names in tf.io.gfile.walk(root)
            for name in names if name.startswith("requests-") and name.endswith(".tfrecord" + PARTIAL)]


class RequestLogger:
    """`offer` from any request thread; one writer thread does the rest. `close` writes what is queued."""

    def __init__(self, settings: RequestLogSettings, clock: Callable[[], float] = time.time,
                 rng: Optional[random.Random] = None):
        self.settings = settings
        self._clock, self._rng = clock, rng or random.Random()
        self._queue: "queue.Queue" = queue.Queue(maxsize=settings.max_queued)
        self._counts: Counter = Counter()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._file: Optional[_OpenFile] = None
        self._thread = threading.Thread(target=self._write_forever, name="request-log", daemon=True)
        self._thread.start()

    def offer(self, label: Optional[str], build: Callable[[], Tuple[Served, Mapping, Mapping]], size: int = 0) -> bool:
        """Samples a request made to this version label (None: none); `build()` -> (served, inputs, outputs)
        runs later, on the writer thread; `size`: the bytes the queued sample holds (its body), which the
        queue bounds as well as the count. Returns whether the sample was queued; never blocks, never raises."""
        rate = self.settings.rate(label)
        if rate <= 0 or self._rng.random() >= rate:
            return False
        with self._lock:
            if self._queued_bytes + size > self.settings.max_queued_bytes and self._queued_bytes:
                self._counts["dropped: queue full (bytes)"] += 1
                return False
            self._queued_bytes += size
        try:
            self._queue.put_nowait((build, self._clock(), rate, size))
        except queue.Full:
            with self._lock:
                self._queued_bytes -= size
            self._count("dropped: queue full")
            return False
        self._count("sampled")
        return True

    def refused(self, status: int, reason: str) -> None:
        """A request answered with an error: counted by status and reason, never stored."""
        self._count(f"refused: {status} {reason}")

    def counts(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def close(self, timeout_s: float = 30.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[what] += n

    def _write_forever(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._close_file()
                return
            build, when, rate, size = item
            try:
                self._write(build, when, rate)
            except Exception as error:  # a full disk, a slow or refusing bucket: drop the sample, keep serving
                self._count("dropped: write failed")
                log.warning("request log: a sample was dropped: %s", error)
                self._close_file(enforce=False)
            finally:
                with self._lock:
                    self._queued_bytes -= size

    def _write(self, build: Callable[[], tuple], when: float, rate: float) -> None:
        served, inputs, outputs = build()
        record = prediction_log(served, inputs, outputs, when, rate).SerializeToString()
        if self._file is not None and not self._file.takes(served.model, when, len(record),
                                                          self.settings.max_file_bytes):
            self._close_file()
        if self._file is None:
            self._file = _OpenFile(self.settings.root, served.model, when)
        self._file.write(record)
        self._count("written")

    def _close_file(self, enforce: bool = True) -> None:
        if self._file is None:
            return
        opened, self._file = self._file, None
        try:
            opened.close()
        finally:
            if enforce:
                removed = enforce_retention(self.settings.root, self.settings.max_age_hours,
                                            self.settings.max_total_bytes, self._clock())
                if removed:
                    self._count("removed by retention", len(removed))


def writer_id() -> str:
    """Unique to this writer among the replicas sharing a log root: the pod's name (HOSTNAME in Kubernetes),
    the process id (1 in every container) and a random part."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", os.environ.get("HOSTNAME") or socket.gethostname() or "host")[:63]
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


class _OpenFile:
    """<root>/<model>/<YYYY-MM-DD>/<HH>/requests-<YYYYmmddTHHMMSS>-<writer>-<n>.tfrecord, one hour at most:
    written as <name>.partial, renamed once flushed and closed, so a reader never sees a file being written.
    On a local disk the folders are 0700 and the files 0600: they hold patient images."""
    _opened = 0
    _writer_id = writer_id()

    def __init__(self, root: str, model: str, when: float):
        moment = time.gmtime(when)
        _OpenFile._opened += 1
        folder = os.path.join(root, model, time.strftime("%Y-%m-%d", moment), time.strftime("%H", moment))
        _private_folders(root, folder)
        name = (f"requests-{time.strftime('%Y%m%dT%H%M%S', moment)}-{_OpenFile._writer_id}-"
                f"{_OpenFile._opened}.tfrecord")
        self.path, self.model, self.hour = os.path.join(folder, name), model, int(when // 3600)
        self.partial = self.path + PARTIAL
        self._writer = tf.io.TFRecordWriter(self.partial)
        if _is_local(self.partial):
            os.chmod(self.partial, 0o600)
        self.size = 0

    def takes(self, model: str, when: float, size: int, max_bytes: int) -> bool:
        return model == self.model and int(when // 3600) == self.hour and (self.size == 0 or self.size + size <= max_bytes)

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self.size += len(record) + 16  # TFRecord framing: length, two CRCs

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
        tf.io.gfile.rename(self.partial, self.path, overwrite=False)


def _is_local(path: str) -> bool:
    return "://" not in path


def _private_folders(root: str, folder: str) -> None:
    tf.io.gfile.makedirs(folder)
    if not _is_local(folder):
        return
    root = os.path.abspath(root)
    here = os.path.abspath(folder)
    while here.startswith(root) and len(here) >= len(root):
        os.chmod(here, 0o700)
        if here == root:
            break
        here = os.path.dirname(here)


def enforce_retention(root: str, max_age_hours: float, max_total_bytes: int, now: float) -> List[str]:
    """Removes the log files older than max_age_hours, then the oldest until the rest fit max_total_bytes.
    A .partial file older than the age (its writer died) goes too: it holds patient images all the same."""
    stale = [path for path in _partial_files(root)
             if file_time(path) is not None and now - file_time(path) > max_age_hours * 3600 + 3600]
    for path in stale:
        tf.io.gfile.remove(path)
    files = [(path, file_time(path), tf.io.gfile.stat(path).length) for path in log_files(root)]
    removed = [path for path, started, _ in files if started is not None and now - started > max_age_hours * 3600]
    kept = [(path, size) for path, started, size in files if path not in set(removed)]
    total = sum(size for _, size in kept)
    for path, size in kept:
        if total <= max_total_bytes:
            break
        removed.append(path)
        total -= size
    for path in removed:
        tf.io.gfile.remove(path)
    return stale + removed


def file_time(path: str) -> Optional[float]:
    found = _FILE_TIME.search(os.path.basename(path))
    if not found:
        return None
    return float(calendar.timegm(time.strptime(found.group(1), "%Y%m%dT%H%M%S")))
