"""The DICOM node against a real PACS (Orthanc, Debian's packages, tests/orthanc.py): Orthanc sends the
studies uploaded to it (NEMA's real chest CR, phantoms as DICOM) to the node by C-STORE; the node answers
each with a structured report, which the tests read back from Orthanc's DICOMweb API and compare with the
REST answer for the same file."""
import logging
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid

import dicom_files as F
import orthanc as O
from cxr import contract
from cxr.serving.client import ServingClient
from cxr.serving.dev_server import ServerSettings, start
from cxr.serving.dicom_node.disk_queue import uid_key
from cxr.serving.dicom_node.node import DicomNode, read_audit
from cxr.serving.dicom_node.report import read_report
from cxr.serving.dicom_node.settings import CStoreDestination, ModelServer, NodeSettings, StowDestination
from helpers import write

pytestmark = pytest.mark.skipif(O.available() is not None, reason=str(O.available()))

NODE = "node"  # the node's name in Orthanc's modalities
REAL = F.real_downsampled("RG1_UNCR.dcm", step=4)  # NEMA's RG1: a PA chest CR, MONOCHROME1, 15 bits


def study(seed: int, *, images: int = 1, **tags) -> list:
    """DICOM files of one study (its own patient), phantoms of every kind the conversion reads."""
    study_uid = generate_uid()
    files = []
    for index in range(images):
        ds = F.dataset(F.stored_values(F.phantom(seed=seed * 100 + index, size=64), 12), **tags)
        ds.StudyInstanceUID = study_uid
        files.append(F.encoded(ds, JPEG2000Lossless if index % 2 else pydicom.uid.ExplicitVRLittleEndian))
    return files


@pytest.fixture(scope="module")
def upstream(model_base_path):
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0))
    yield running
    running.stop()


@pytest.fixture
def pacs(tmp_path):
    running = O.Orthanc(str(tmp_path / "orthanc")).start()
    yield running
    running.stop()


def node_settings(tmp_path, pacs, upstream_url, **changes) -> NodeSettings:
    fields = dict(queue_dir=str(tmp_path / "queue"), port=0, host="127.0.0.1",
                  destination=CStoreDestination(O.AE_TITLE, "127.0.0.1", pacs.dicom_port),
                  model_server=ModelServer(url=upstream_url), retry_min_s=0.1, retry_max_s=0.5)
    fields.update(changes)
    return NodeSettings(**fields)


@pytest.fixture
def node(tmp_path, pacs, upstream):
    running = DicomNode(node_settings(tmp_path, pacs, upstream.url)).start()
    pacs.add_modality(NODE, running.settings.ae_title, running.port)
    yield running
    running.stop()


def send(pacs, files) -> tuple:
    """Upload the files to Orthanc, then have Orthanc C-STORE them to the node: (Orthanc's answer, ids)."""
    ids = [pacs.upload(data) for data in files]
    return pacs.store_to(NODE, ids), ids


def rest_answers(url, files, tmp_path) -> list:
    paths = [write(str(tmp_path / "rest" / f"{index}.dcm"), data) for index, data in enumerate(files)]
    # One image per request, as the node sends them: a batch's numbers can differ in the last bits.
    return [contract.class_probabilities(result.outputs)
            for result in ServingClient(url).predict_files(paths, batch_size=1)]


def uids(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)


def test_each_image_is_answered_with_a_report_in_its_study_equal_to_the_rest_answer(node, pacs, upstream, tmp_path,
                                                                                   caplog):
    caplog.set_level(logging.DEBUG)
    files = [REAL] + study(1, images=2)
    answer, _ = send(pacs, files)
    assert answer.status_code == 200, answer.text
    assert node.wait_until_idle(60), node.counts
    expected = rest_answers(upstream.url, files, tmp_path)
    for data, probabilities in zip(files, expected):
        source = uids(data)
        reports = [r for r in pacs.reports(source.StudyInstanceUID)
                   if read_report(r).source_sop_instance_uid == source.SOPInstanceUID]
        assert len(reports) == 1, f"{len(reports)} reports for one image"
        sr = reports[0]
        contents = read_report(sr)
        assert contents.probabilities == probabilities  # the SR's FD values: the REST answer's floats
        assert contents.predicted == max(probabilities, key=probabilities.get)
        assert (contents.model_name, contents.model_version) == (contract.MODEL_NAME, 1)
        assert contents.verification_flag == "UNVERIFIED" and "Not for diagnostic use" in contents.comment
        assert (sr.PatientID, sr.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    audit = read_audit(node.settings.audit_path)
    answered = [line for line in audit if line["outcome"] == "answered"]
    assert sorted(line["image"] for line in answered) == sorted(uid_key(uids(d).SOPInstanceUID) for d in files)
    assert all(line["model_version"] == 1 and line["calling_ae"] == O.AE_TITLE for line in answered)
    assert node.queue.pending() == [] and os.listdir(os.path.join(node.settings.queue_dir, "pending")) == []
    _no_identifier_written(files, node.settings.queue_dir)
    # The node's and pynetdicom's lines (the tests' own DICOMweb URLs name UIDs: not the node's).
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("cxr", "pynetdicom"))
    assert "answered: image" in logged
    assert not [needle for needle in _needles(files) if needle in logged]


def test_a_ct_and_a_lateral_get_no_report_and_a_logged_refusal_with_a_dimse_failure(node, pacs):
    ct_ds = F.dataset(F.stored_values(F.phantom(seed=5, size=64), 12), modality="CT")
    ct_ds.SOPClassUID = ct_ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    lateral = F.dicom_file(seed=6, size=64, view="LL")
    for data, detail in ((F.encoded(ct_ds), "SOP class CT Image Storage not supported"),
                         (lateral, "(0018,5101) View Position: LL")):
        answer, _ = send(pacs, [data])
        assert answer.status_code != 200  # Orthanc's C-STORE SCU got a failure status
        source = uids(data)
        assert pacs.instances(source.StudyInstanceUID, modality="SR") == []
        refusal = [line for line in read_audit(node.settings.audit_path) if line["outcome"] == "refused"][-1]
        assert detail in refusal["detail"] and refusal["calling_ae"] == O.AE_TITLE
    assert node.counts["refused"] == 2 and node.counts["answered"] == 0


def test_the_same_image_twice_is_answered_once_even_after_a_restart(node, pacs, upstream, tmp_path):
    files = study(2)
    send(pacs, files)
    assert node.wait_until_idle(60)
    send(pacs, files)  # Orthanc sends it again
    node.stop()
    again = DicomNode(node.settings).start()  # the same queue folder
    pacs.add_modality(NODE, again.settings.ae_title, again.port)
    try:
        answer, _ = send(pacs, files)
        assert answer.status_code == 200
        assert again.wait_until_idle(30)
    finally:
        again.stop()
    outcomes = [line["outcome"] for line in read_audit(node.settings.audit_path)]
    assert outcomes.count("answered") == 1 and outcomes.count("duplicate") == 2, outcomes
    assert len(pacs.instances(uids(files[0]).StudyInstanceUID, modality="SR")) == 1


def test_reports_go_by_stow_rs_with_the_token(tmp_path, pacs, upstream):
    token = write(str(tmp_path / "token"), b"not-a-real-token\n")
    settings = node_settings(tmp_path, pacs, upstream.url,
                             destination=StowDestination(pacs.dicomweb, token_file=token))
    running = DicomNode(settings).start()
    pacs.add_modality(NODE, running.settings.ae_title, running.port)
    try:
        files = study(3, images=2)
        answer, _ = send(pacs, files)
        assert answer.status_code == 200
        assert running.wait_until_idle(60)
    finally:
        running.stop()
    reports = pacs.reports(uids(files[0]).StudyInstanceUID)
    assert sorted(read_report(r).source_sop_instance_uid for r in reports) == sorted(uids(d).SOPInstanceUID for d in files)


def test_a_full_queue_answers_out_of_resources_and_a_model_server_down_is_retried(tmp_path, pacs, upstream):
    closed = f"http://127.0.0.1:{O.free_port()}"  # no model server there yet
    settings = node_settings(tmp_path, pacs, closed, max_queue_items=2)
    running = DicomNode(settings).start()
    pacs.add_modality(NODE, running.settings.ae_title, running.port)
    try:
        files = study(4, images=3)
        answer, _ = send(pacs, files)
        assert answer.status_code != 200  # the third: 0xA700
        assert len(running.queue.pending()) == 2
        assert [line["outcome"] for line in read_audit(settings.audit_path)].count("queue_full") == 1
        time.sleep(1.0)
        assert running.counts["retries"] >= 2 and len(running.queue.pending()) == 2
        for item in running.queue.pending():
            assert stat.S_IMODE(os.stat(item.path).st_mode) == 0o600
    finally:
        running.stop()
    assert stat.S_IMODE(os.stat(os.path.join(settings.queue_dir, "pending")).st_mode) == 0o700
    # Started again with the model server it names: the two waiting images are answered.
    again = DicomNode(node_settings(tmp_path, pacs, upstream.url, max_queue_items=2)).start()
    try:
        assert again.wait_until_idle(60)
    finally:
        again.stop()
    assert len(pacs.instances(uids(files[0]).StudyInstanceUID, modality="SR")) == 2


def test_the_queue_survives_a_killed_node(tmp_path, pacs, upstream):
    """`cxr dicom-node` acknowledges images while the model server is down, is killed (SIGKILL), and a new
    node on the same queue answers every one."""
    queue_dir = str(tmp_path / "queue")
    port = O.free_port()
    closed = f"http://127.0.0.1:{O.free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "cxr", "dicom-node", "--queue-dir", queue_dir, "--host", "127.0.0.1",
         "--port", str(port), "--url", closed, "--store-to", f"{O.AE_TITLE}@127.0.0.1:{pacs.dicom_port}",
         "--retry-max-s", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines = [process.stdout.readline().decode() for _ in range(2)]  # the node's log line, then its own
        assert any(f"on port {port}" in line for line in lines), lines
        pacs.add_modality(NODE, "CXRNODE", port)
        files = study(5, images=4)
        answer, _ = send(pacs, files)
        assert answer.status_code == 200, answer.text
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(os.listdir(os.path.join(queue_dir, "pending"))) == 2 * len(files)  # image + sender, each
    again = DicomNode(node_settings(tmp_path, pacs, upstream.url)).start()
    try:
        assert again.wait_until_idle(60)
    finally:
        again.stop()
    reports = pacs.reports(uids(files[0]).StudyInstanceUID)
    assert sorted(read_report(r).source_sop_instance_uid for r in reports) == sorted(uids(d).SOPInstanceUID for d in files)


def _no_identifier_written(files, folder) -> None:
    """Neither the audit nor anything left in the queue folder holds a planted identifier or a UID."""
    needles = _needles(files)
    for directory, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                content = f.read()
            found = [needle for needle in needles if needle.encode() in content]
            assert not found, f"{name} holds {found}"


def test_an_echo_is_answered_and_an_association_calling_another_ae_title_is_rejected(tmp_path, pacs):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    closed = f"http://127.0.0.1:{O.free_port()}"
    running = DicomNode(node_settings(tmp_path, pacs, closed)).start()
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification)
        association = scu.associate("127.0.0.1", running.port, ae_title="CXRNODE")
        assert association.is_established
        assert association.send_c_echo().Status == 0x0000
        association.release()
        wrong = scu.associate("127.0.0.1", running.port, ae_title="NOTTHENODE")
        assert wrong.is_rejected
    finally:
        running.stop()


def test_a_report_the_destination_refuses_for_good_is_audited_and_the_image_dropped(tmp_path, pacs, upstream):
    settings = node_settings(tmp_path, pacs, upstream.url,
                             destination=StowDestination(pacs.url + "/no-such-dicomweb-root"))
    running = DicomNode(settings).start()
    pacs.add_modality(NODE, running.settings.ae_title, running.port)
    try:
        files = study(7)
        answer, _ = send(pacs, files)
        assert answer.status_code == 200  # received: the refusal comes later, from the destination
        assert running.wait_until_idle(30)
    finally:
        running.stop()
    [failed] = [line for line in read_audit(settings.audit_path) if line["outcome"] == "failed"]
    assert "refused the report: HTTP 404" in failed["detail"] and failed["model_version"] == 1
    assert running.counts["answered"] == 0 and os.listdir(os.path.join(settings.queue_dir, "pending")) == []


def _needles(files) -> set:
    needles = set(F.PLANTED.values())
    for data in files:
        ds = uids(data)
        needles |= {str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.PatientID)}
    return needles


def test_the_node_asks_the_serving_front_over_mutual_tls_and_waits_while_it_is_refused(tmp_path, pacs, upstream):
    from certificates import Authority, write_pair
    from cxr.serving.log_proxy import LogProxy
    from cxr.serving.server_settings import ProxySettings
    folder = str(tmp_path / "pki")
    ca = Authority("cxr test CA")
    ca_file = ca.write(folder)
    server_cert, server_key = write_pair(folder, "server", *ca.issue("cxr-serving", server=True))
    node_cert, node_key = write_pair(folder, "node", *ca.issue("cxr-dicom-node"))
    front = LogProxy(ProxySettings(upstream=upstream.url, port=0, host="127.0.0.1", tls_cert_file=server_cert,
                                   tls_key_file=server_key, tls_client_ca_file=ca_file)).start()
    try:
        assert front.url.startswith("https://")
        without = DicomNode(node_settings(tmp_path, pacs, front.url, model_server=ModelServer(url=front.url,
                                                                                              ca_file=ca_file)))
        without.start()
        pacs.add_modality(NODE, without.settings.ae_title, without.port)
        files = study(8)
        assert send(pacs, files)[0].status_code == 200
        time.sleep(0.5)
        without.stop()
        assert without.counts["answered"] == 0 and without.counts["retries"] >= 1  # no certificate: refused
        with_cert = DicomNode(node_settings(tmp_path, pacs, front.url, model_server=ModelServer(
            url=front.url, ca_file=ca_file, cert_file=node_cert, key_file=node_key))).start()
        try:
            assert with_cert.wait_until_idle(30)
        finally:
            with_cert.stop()
    finally:
        front.stop()
    [sr] = pacs.reports(uids(files[0]).StudyInstanceUID)
    assert read_report(sr).model_version == 1


def test_with_grad_cam_the_overlay_goes_too_as_a_secondary_capture_in_the_study(tmp_path, pacs, upstream):
    settings = node_settings(tmp_path, pacs, upstream.url, grad_cam=True)
    running = DicomNode(settings).start()
    pacs.add_modality(NODE, running.settings.ae_title, running.port)
    files = [F.dicom_file(seed=9, size=96, bits_stored=12, photometric="MONOCHROME1", finding="pneumothorax")]
    try:
        assert send(pacs, files)[0].status_code == 200
        assert running.wait_until_idle(60)
    finally:
        running.stop()
    source = uids(files[0])
    [sr] = pacs.reports(source.StudyInstanceUID)
    [entry] = [e for e in pacs.instances(source.StudyInstanceUID)
               if e["00080016"]["Value"][0] == "1.2.840.10008.5.1.4.1.1.7"]  # Secondary Capture Image Storage
    capture = pacs.retrieve(source.StudyInstanceUID, entry["0020000E"]["Value"][0], entry["00080018"]["Value"][0])
    assert (capture.Rows, capture.Columns, capture.PhotometricInterpretation) == (96, 96, "RGB")
    assert capture.PatientID == source.PatientID and "not for diagnostic use" in capture.SeriesDescription
    pixels = capture.pixel_array.astype(float)
    colour = np.abs(pixels[..., 0] - pixels[..., 2]).mean()  # gray where cold; red or blue where the heat is
    assert pixels.std() > 10 and colour > 1, (pixels.std(), colour)
    assert read_report(sr).source_sop_instance_uid == source.SOPInstanceUID


def test_a_pacs_that_is_down_is_retried_until_it_takes_the_report(tmp_path, pacs, upstream):
    """The reports go to a second PACS, not yet started: the image waits, retried, and its report lands once
    that PACS is up."""
    destination_port = O.free_port()
    settings = node_settings(tmp_path, pacs, upstream.url,
                             destination=CStoreDestination(O.AE_TITLE, "127.0.0.1", destination_port))
    running = DicomNode(settings).start()
    pacs.add_modality(NODE, running.settings.ae_title, running.port)
    later = O.Orthanc(str(tmp_path / "later"), dicom_port=destination_port)
    try:
        files = study(10)
        assert send(pacs, files)[0].status_code == 200
        time.sleep(0.6)
        assert running.counts["retries"] >= 2 and running.counts["answered"] == 0
        later.start()
        assert running.wait_until_idle(30)
        [sr] = later.reports(uids(files[0]).StudyInstanceUID)
        assert read_report(sr).source_sop_instance_uid == uids(files[0]).SOPInstanceUID
    finally:
        running.stop()
        later.stop()
