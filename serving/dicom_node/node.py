"""`cxr dicom-node`: a DICOM C-STORE SCP (pynetdicom) that answers each chest X-ray with a structured report.

Receiving (one thread per association, pynetdicom's):
- C-ECHO answered (Verification).
- C-STORE of CR Image Storage or Digital X-Ray (for presentation, for processing): the header checked with
  the project's conversion rules (cxr/dicom/rules.py: modality, view, photometric, size); a refused image
  is answered 0xC000 (cannot understand) with the reason in Error Comment. One that passes is written to
  the disk queue and only then acknowledged 0x0000; an image already waiting or answered (same SOP
  Instance UID) is acknowledged and not queued again; a full queue answers 0xA700 (out of resources),
  which a PACS retries later.
- Any other storage SOP class (CT, MR, an SR...): 0x0122 (SOP class not supported). Every presentation
  context is accepted with the transfer syntaxes the conversion decodes, so that each is answered with
  a DIMSE status the PACS shows, not a rejected context.

Answering (`workers` threads, 2 by default, in receipt order): the image converted to the PNG the model receives (the
same conversion as ingestion and the serving fronts), sent to the model server's REST API pinned to the
version its status names AVAILABLE (the newest), the SR built (report.py) and sent (destinations.py),
with the Grad-CAM overlay as a Secondary Capture where `grad_cam` is set;
then the image is remembered as answered and its file deleted. A model server or destination that is
down leaves the image first in line and is tried again after a doubling wait (retry_min_s to retry_max_s).

Every receipt, refusal and answer is an audit line (audit.jsonl: time, calling AE title and address, the
image's key (the SHA-256 of its SOP Instance UID), model version, outcome; for an answer, the seconds it
took and the seconds since it was received). Neither the audit nor the
logs hold a patient identifier or a UID; pynetdicom's own logger, which prints UIDs at its debug and
info levels, is set to warnings.
"""
import collections
import datetime
import io
import json
import logging
import os
import threading
import time
import warnings
from typing import Dict, Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                                  DigitalXRayImageStorageForProcessing, Verification)

from cxr import contract
from cxr.dicom.convert import convert, read_header
from cxr.dicom.rules import DicomRefused
from cxr.serving.client import ServingClient, ServingRequestError
from cxr.serving.dicom_node import destinations, report
from cxr.serving.dicom_node.disk_queue import DUPLICATE, FULL, QUEUED, DiskQueue, Item, uid_key
from cxr.serving.dicom_node.settings import NodeSettings
from cxr.serving.overlay import overlay

log = logging.getLogger("cxr.dicom_node")

ACCEPTED_SOP_CLASSES = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                        DigitalXRayImageStorageForProcessing)
# What cxr/dicom/convert.py decodes (docs/dicom.md): native, deflated, RLE, JPEG, JPEG-LS, JPEG 2000.
DECODED_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91")
SUCCESS, SOP_CLASS_NOT_SUPPORTED, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0x0122, 0xA700, 0xC000
_ERROR_COMMENT_CHARS = 64  # Error Comment is LO (PS3.7 C.4.2.1.3)


class ModelDown(RuntimeError):
    """The model server cannot answer now: try again later."""


class DicomNode:
    def __init__(self, settings: NodeSettings, clock=time.time):
        self.settings = settings
        self._clock = clock
        self.queue = DiskQueue(settings.queue_dir, settings.max_queue_items, settings.max_queue_bytes,
                               settings.answered_retention_days * 86400.0, clock=clock)
        self.counts: Dict[str, int] = collections.Counter()
        self._counts_lock = threading.Lock()
        self._audit = _AuditLog(settings.audit_path, clock)
        self._describe = destinations.sender(settings.destination, settings.ae_title).describe()
        self._device_uid = report.device_uid(settings.ae_title)
        server = settings.model_server
        self._client = ServingClient(url=server.url, model=server.model, timeout_s=server.timeout_s, retries=0,
                                     dicom_rules=settings.dicom_rules, ca_file=server.ca_file,
                                     cert_file=server.cert_file, key_file=server.key_file)
        self._stop = threading.Event()
        self._server = None
        self._workers: list = []
        self.port: Optional[int] = None

    # -- life ----------------------------------------------------------------------------------------
    def start(self) -> "DicomNode":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = AE(ae_title=self.settings.ae_title)
        ae.require_called_aet = True  # an association calling another AE title is rejected
        ae.maximum_associations = self.settings.max_associations
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, DECODED_TRANSFER_SYNTAXES)
        self._server = ae.start_server((self.settings.host, self.settings.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self._server.server_address[1]
        self._stop.clear()
        self._workers = [threading.Thread(target=self._work, name=f"dicom-node-worker-{index}", daemon=True)
                         for index in range(self.settings.workers)]
        for worker in self._workers:
            worker.start()
        log.warning("DICOM node %s listening on %s:%d; %d image(s) waiting in the queue; reports by %s",
                    self.settings.ae_title, self.settings.host, self.port, len(self.queue.pending()),
                    self._describe)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        for worker in self._workers:
            worker.join()
        self._workers = []

    def wait_until_idle(self, timeout_s: float) -> bool:
        """Whether the queue emptied within timeout_s (for tests and a clean shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.queue.pending():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # -- receiving -----------------------------------------------------------------------------------
    def _on_store(self, event) -> Dataset:
        sender = {"calling_ae": str(event.assoc.requestor.ae_title).strip(),
                  "address": str(event.assoc.requestor.address)}
        try:
            return self._received(event, sender)
        except Exception as error:  # never into pynetdicom, whose log would print the dataset's UIDs
            log.error("C-STORE from %s failed in the node: %s", sender["calling_ae"], type(error).__name__)
            self._record("error", sender, None, detail=type(error).__name__)
            return _status(CANNOT_UNDERSTAND, "the node failed to read the image")

    def _received(self, event, sender: Dict[str, str]) -> Dataset:
        sop_class = str(event.context.abstract_syntax)
        if sop_class not in ACCEPTED_SOP_CLASSES:
            name = pydicom.uid.UID(sop_class).name
            self._record("refused", sender, None, detail=f"SOP class {name} not supported (CR and DX only)")
            return _status(SOP_CLASS_NOT_SUPPORTED, "SOP class not supported: send CR or DX")
        data = event.encoded_dataset()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = read_header(data, self.settings.dicom_rules)
        except DicomRefused as refused:
            key = uid_key(str(event.request.AffectedSOPInstanceUID or ""))
            self._record("refused", sender, key, detail=str(refused))
            return _status(CANNOT_UNDERSTAND, f"refused: {refused.tag}")
        key = uid_key(str(dataset.SOPInstanceUID))
        try:
            outcome = self.queue.put(key, data, sender)
        except OSError as error:
            self._record("queue_error", sender, key, detail=error.strerror or type(error).__name__)
            return _status(OUT_OF_RESOURCES, "the node could not store the image")
        if outcome == FULL:
            self._record("queue_full", sender, key, detail=f"{self.settings.max_queue_items} images or "
                                                           f"{self.settings.max_queue_bytes:,} bytes waiting")
            return _status(OUT_OF_RESOURCES, "the node's queue is full: try again later")
        self._record("received" if outcome == QUEUED else "duplicate", sender, key)
        return _status(SUCCESS)

    # -- answering -----------------------------------------------------------------------------------
    def _work(self) -> None:
        sender = destinations.sender(self.settings.destination, self.settings.ae_title)  # one association each
        try:
            self._work_with(sender)
        finally:
            sender.close()

    def _work_with(self, sender) -> None:
        delays = self.settings.retry_delays()
        failures = 0
        while not self._stop.is_set():
            item = self.queue.take(timeout_s=0.2)
            if item is None:
                continue
            try:
                self._answer(item, sender)
                failures = 0
            except (ModelDown, destinations.PeerDown) as down:
                self.queue.release(item)
                delay = delays[min(failures, len(delays) - 1)]
                failures += 1
                with self._counts_lock:
                    self.counts["retries"] += 1
                log.warning("image %s waits: %s; trying again in %g s", item.key, down, delay)
                self._stop.wait(delay)
            except Exception as error:  # a bug must not stop the queue, nor print what the image holds
                log.error("image %s failed: %s", item.key, type(error).__name__)
                self._record("failed", item.sender, item.key, detail=f"node error {type(error).__name__}")
                self.queue.dropped(item)

    def _answer(self, item: Item, sender) -> None:
        started = time.monotonic()
        data = item.read()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                converted = convert(data, self.settings.dicom_rules)
        except DicomRefused as refused:
            self._record("refused", item.sender, item.key, detail=str(refused))
            self.queue.dropped(item)
            return
        version = self._served_version()
        # `explain` answers with the probabilities too (one request either way).
        signature = contract.EXPLAIN_SIGNATURE if self.settings.grad_cam else contract.PREDICT_SIGNATURE
        try:
            outputs = self._client_for(version).predict([converted.png], signature)[0]
        except ServingRequestError as error:
            if error.status is None or error.status >= 500 or error.status == 404:
                raise ModelDown(error.message) from None
            self._record("failed", item.sender, item.key, version, detail=f"the model refused: {error.message}")
            self.queue.dropped(item)
            return
        probabilities = contract.class_probabilities(outputs)
        source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        identity = report.Identity(self._device_uid, self.settings.ae_title, self.settings.model_server.model,
                                   version)
        answers = [report.structured_report(source, probabilities, identity)]
        if self.settings.grad_cam:
            picture = overlay(converted.png, outputs[contract.HEATMAP])
            answers.append(report.grad_cam_capture(source, np.asarray(picture), identity))
        try:
            for answer in answers:
                sender.send(answer)
        except destinations.PeerRefused as refused:
            self._record("failed", item.sender, item.key, version, detail=str(refused))
            self.queue.dropped(item)
            return
        self.queue.answered(item)
        self._record("answered", item.sender, item.key, version, detail=max(probabilities, key=probabilities.get),
                     answer_s=round(time.monotonic() - started, 4),
                     since_received_s=round((time.time_ns() - item.received_ns) / 1e9, 4))

    def _served_version(self) -> int:
        try:
            status = self._client.status()
        except ServingRequestError as error:
            raise ModelDown(error.message) from None
        available = [int(entry["version"]) for entry in status.get("model_version_status", [])
                     if entry.get("state") == "AVAILABLE"]
        if not available:
            raise ModelDown(f"no version of {self._client.model} is AVAILABLE")
        return max(available)

    def _client_for(self, version: int) -> ServingClient:
        import dataclasses
        return dataclasses.replace(self._client, version=version)

    def _record(self, outcome: str, sender: Dict[str, str], key: Optional[str], version: Optional[int] = None,
                detail: str = "", **timings: float) -> None:
        with self._counts_lock:
            self.counts[outcome] += 1
        self._audit.write({"outcome": outcome, "calling_ae": sender.get("calling_ae", ""),
                           "address": sender.get("address", ""), "image": key, "model_version": version,
                           "detail": detail, **timings})
        level = logging.INFO if outcome in ("received", "answered", "duplicate") else logging.WARNING
        log.log(level, "%s: image %s from %s%s%s", outcome, key, sender.get("calling_ae", ""),
                f", model version {version}" if version is not None else "", f": {detail}" if detail else "")


class _AuditLog:
    """One JSON line per receipt, refusal and answer; the owner's only (0600), appended, flushed per line."""

    def __init__(self, path: str, clock):
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        self._file = os.fdopen(fd, "a")
        self._lock = threading.Lock()
        self._clock = clock

    def write(self, fields: dict) -> None:
        stamp = datetime.datetime.fromtimestamp(self._clock(), datetime.timezone.utc).isoformat(timespec="milliseconds")
        line = json.dumps({"time": stamp, **fields}, sort_keys=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:_ERROR_COMMENT_CHARS]
    return status


def read_audit(path: str) -> list:
    """The audit's lines, parsed (for tests and `jq`-less checks)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
