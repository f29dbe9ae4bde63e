"""Orthanc sends a study of many images to the DICOM node while the model server is restarted once: for the
load test (tests/serving/test_dicom_node_load.py) and its benchmark (bench/dicom_node.py).

What it returns is counted from what Orthanc holds afterwards (QIDO-RS and WADO-RS), not from the node's
own counts: reports per source image (none missing, none twice), the node's audit timings, and the bare REST
call for the same images (a PNG, one per request) to set the node's added latency against.
"""
import collections
import os
import statistics
import threading
import time
from typing import List, Optional

import pydicom
from pydicom.uid import generate_uid

import dicom_files as F
import orthanc as O
from cxr.dicom.convert import convert
from cxr.serving.client import ServingClient
from cxr.serving.dev_server import ServerSettings, start
from cxr.serving.dicom_node.node import DicomNode, read_audit
from cxr.serving.dicom_node.report import read_report
from cxr.serving.dicom_node.settings import CStoreDestination, ModelServer, NodeSettings

NODE = "node"


def one_study(count: int, size: int = 64) -> List[bytes]:
    """`count` DX phantoms (12-bit, of the four findings) of one study, as a PACS would hold them."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for index in range(count):
        finding = ("bacterial_pneumonia", "covid", "normal", "pneumothorax")[index % 4]
        ds = F.dataset(F.stored_values(F.phantom(seed=index, size=size, finding=finding), 12))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study_uid, series_uid, index + 1
        files.append(F.encoded(ds))
    return files


def run(work: str, model_base_path: str, files: List[bytes], restart_after: Optional[int] = None,
        batch: int = 20, timeout_s: float = 600.0) -> dict:
    pacs = O.Orthanc(os.path.join(work, "orthanc")).start()
    upstream = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0))
    port = int(upstream.url.rsplit(":", 1)[1])
    node = DicomNode(NodeSettings(
        queue_dir=os.path.join(work, "queue"), host="127.0.0.1", port=0,
        destination=CStoreDestination(O.AE_TITLE, "127.0.0.1", pacs.dicom_port),
        model_server=ModelServer(url=upstream.url), retry_min_s=0.1, retry_max_s=1.0)).start()
    restarts = []
    try:
        pacs.add_modality(NODE, node.settings.ae_title, node.port)
        ids = [pacs.upload(data) for data in files]
        bare = _bare_rest_seconds(upstream.url, files[:20])
        started = time.monotonic()
        failures = []
        sender = threading.Thread(target=_send_all, args=(pacs, ids, batch, failures))
        sender.start()
        while node.counts["answered"] < len(files) and time.monotonic() - started < timeout_s:
            if restart_after is not None and not restarts and node.counts["answered"] >= restart_after:
                upstream.stop()
                down = time.monotonic()
                upstream = start(ServerSettings(model_base_path=model_base_path, rest_api_port=port))
                restarts.append(time.monotonic() - down)
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        sender.join()
        node.stop()
        study_uid = pydicom.dcmread(pydicom.filebase.DicomBytesIO(files[0]), stop_before_pixels=True).StudyInstanceUID
        per_source = collections.Counter(read_report(sr).source_sop_instance_uid for sr in pacs.reports(study_uid))
        sources = [pydicom.dcmread(pydicom.filebase.DicomBytesIO(d), stop_before_pixels=True).SOPInstanceUID
                   for d in files]
        audit = read_audit(node.settings.audit_path)
    finally:
        node.stop()
        upstream.stop()
        pacs.stop()
    answer_s = [line["answer_s"] for line in audit if line["outcome"] == "answered"]
    return {
        "images": len(files), "store_failures": failures, "seconds": elapsed,
        "images_per_s": len(files) / elapsed, "restart_s": restarts, "retries": node.counts["retries"],
        "reports": sum(per_source.values()), "missing": [s for s in sources if per_source[s] == 0],
        "twice": [s for s, n in per_source.items() if n > 1], "strays": set(per_source) - set(sources),
        "answer_s_median": statistics.median(answer_s), "answer_s_p95": _quantile(answer_s, 0.95),
        "bare_rest_s_median": statistics.median(bare),
    }


def _send_all(pacs, ids, batch, failures) -> None:
    """Orthanc's C-STORE SCU sends the study in batches, as a routing rule would."""
    for start_at in range(0, len(ids), batch):
        answer = pacs.store_to(NODE, ids[start_at:start_at + batch])
        if answer.status_code != 200:
            failures.append(answer.text[:200])


def _bare_rest_seconds(url: str, files: List[bytes]) -> List[float]:
    client = ServingClient(url)
    pngs = [convert(data).png for data in files]
    client.predict(pngs[:1])  # warm
    seconds = []
    for png in pngs:
        began = time.monotonic()
        client.predict([png])
        seconds.append(time.monotonic() - began)
    return seconds


def _quantile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def node_memory(work: str, model_base_path: str, files: List[bytes], timeout_s: float = 600.0) -> dict:
    """`cxr dicom-node` in its own process answering `files`: its resident memory at rest and at peak
    (sampled every 20 ms), the model server in this process."""
    import subprocess
    import sys

    import psutil
    pacs = O.Orthanc(os.path.join(work, "orthanc-memory")).start()
    upstream = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0))
    port = O.free_port()
    audit = os.path.join(work, "queue-memory", "audit.jsonl")
    process = psutil.Popen([sys.executable, "-m", "cxr", "dicom-node", "--queue-dir", os.path.dirname(audit),
                            "--host", "127.0.0.1", "--port", str(port), "--url", upstream.url,
                            "--store-to", f"{O.AE_TITLE}@127.0.0.1:{pacs.dicom_port}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines = [process.stdout.readline().decode() for _ in range(2)]
        assert any(f"on port {port}" in line for line in lines), lines
        threading.Thread(target=process.stdout.read, daemon=True).start()  # its log, drained
        pacs.add_modality(NODE, "CXRNODE", port)
        ids = [pacs.upload(data) for data in files]
        time.sleep(1.0)
        at_rest = process.memory_info().rss
        peak, failures = at_rest, []
        sender = threading.Thread(target=_send_all, args=(pacs, ids, 10, failures))
        sender.start()
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            peak = max(peak, process.memory_info().rss)
            if os.path.exists(audit) and sum(line["outcome"] == "answered" for line in read_audit(audit)) >= len(files):
                break
            time.sleep(0.02)
        sender.join()
        answered = sum(line["outcome"] == "answered" for line in read_audit(audit))
    finally:
        process.kill()
        process.wait()
        upstream.stop()
        pacs.stop()
    return {"images": len(files), "answered": answered, "at_rest_bytes": at_rest, "peak_bytes": peak,
            "store_failures": failures}
