"""A DICOM file through every way into the served model gives the same answer: ingested (cxr
build-tfrecords --dicom) and its record's image sent, converted in the client (cxr predict), in the front
(cxr log-proxy before TF Serving, cxr serve), or converted first (cxr convert-dicom) and sent as PNG; a refused one is answered with TF Serving's error shape, naming the tag."""
import base64
import json
import os

import pytest
import requests
import tensorflow as tf
from pydicom.uid import JPEG2000Lossless

import dicom_files as F
from cxr import contract
from cxr.cli import main
from cxr.dicom.convert import convert
from cxr.serving.client import ServingClient
from cxr.serving.dev_server import ServerSettings, start
from cxr.serving.dicom_front import may_hold_dicom
from cxr.serving.log_proxy import LogProxy
from cxr.serving.request_log import log_files, read_logs
from cxr.serving.server_settings import ProxySettings
from helpers import IN_PROCESS_BEAM, write
from trained_model import demo_png

# NEMA's RG1 (a real PA chest CR, MONOCHROME1, 15 bits, its own window), every 4th pixel: 489 x 461.
REAL = F.real_downsampled("RG1_UNCR.dcm", step=4)
PHANTOM = F.dicom_file(seed=3, size=160, bits_stored=12, syntax=JPEG2000Lossless, photometric="MONOCHROME1",
                       finding="pneumothorax")


@pytest.fixture(scope="module")
def upstream(model_base_path):
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0))
    yield running
    running.stop()


@pytest.fixture
def proxy(upstream, tmp_path):
    running = LogProxy(ProxySettings(upstream=upstream.url, port=0, request_log_root=str(tmp_path / "log"),
                                     request_log_sample_rate=1.0)).start()
    yield running
    running.stop()


@pytest.mark.parametrize("dicom", [REAL, PHANTOM], ids=["RG1", "phantom"])
def test_client_front_dev_server_and_png_give_identical_probabilities(dicom, upstream, proxy, tmp_path):
    path = write(str(tmp_path / "in" / "study.dcm"), dicom)
    png = convert(dicom).png
    answers = {
        "ingested": ServingClient(upstream.url).predict([_ingested(path, tmp_path)])[0],
        "client": next(ServingClient(upstream.url).predict_files([path])).outputs,
        "log-proxy": ServingClient(proxy.url).predict([dicom])[0],  # raw DICOM bytes in the request
        "cxr serve": ServingClient(upstream.url).predict([dicom])[0],
        "png": ServingClient(upstream.url).predict([png])[0],
    }
    probabilities = {way: answer[contract.PROBABILITIES] for way, answer in answers.items()}
    assert all(p == probabilities["png"] for p in probabilities.values()), probabilities


def _ingested(path, tmp_path) -> bytes:
    """The image bytes of the record `cxr build-tfrecords --dicom` writes for this file."""
    import glob

    from cxr.dataprep.build import build_tfrecords
    from cxr.dataprep.config import IngestConfig
    from cxr.dataprep.dicom_source import DicomSource
    from cxr.dicom.pseudonyms import PseudonymKey
    labels = write(str(tmp_path / "labels.csv"), f"file,label\n{os.path.basename(path)},NORMAL\n".encode())
    dicom = DicomSource(root=os.path.dirname(path), labels_file=labels, key=PseudonymKey(b"k" * 64, "test"))
    config = IngestConfig(source_roots={}, out_dir=str(tmp_path / "tfrecords"), beam_args=IN_PROCESS_BEAM,
                          dicom=dicom.with_labels())
    build_tfrecords(config)
    [record] = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(
        glob.glob(os.path.join(config.span_dir, "*.tfrecord.gz")), compression_type="GZIP")]
    return record.features.feature[contract.IMAGE].bytes_list.value[0]


def test_the_front_forwards_and_logs_the_png_and_leaves_other_images_as_they_came(upstream, proxy, tmp_path):
    other = demo_png(2)
    ServingClient(proxy.url).predict([other, PHANTOM])
    proxy.stop()
    [record] = read_logs(log_files(str(tmp_path / "log")))
    logged = list(tf.make_ndarray(record.predict_log.request.inputs[contract.IMAGES_INPUT]))
    assert logged == [other, convert(PHANTOM).png]
    assert not any(value.startswith(b"\0" * 128 + b"DICM") for value in logged)
    facts = [json.loads(v) for v in tf.make_ndarray(record.predict_log.request.inputs[contract.ACQUISITION_LOG_INPUT])]
    assert facts == [{}, {"bits_stored": 12, "manufacturer": "Phantom Imaging", "manufacturer_model": "PX-100",
                          "modality": "DX", "photometric_interpretation": "MONOCHROME1", "view_position": "PA"}]
    assert not any(planted in str(record) for planted in F.PLANTED.values())
    # The monitor reads them back as features of the served images.
    from cxr.monitoring.features import describe, received_from_logs
    received = received_from_logs([record])
    table = describe(received, lambda images: {contract.EMBEDDING: [[0.0]] * len(images),
                                               contract.PROBABILITIES: [[0.25] * 4] * len(images)}).table
    assert list(table[contract.VIEW_POSITION]) == ["unknown", "PA"]
    assert list(table[contract.MANUFACTURER]) == ["unknown", "Phantom Imaging"]
    assert list(table[contract.BITS_STORED]) == [0, 12]


@pytest.mark.parametrize("front", ["log-proxy", "cxr serve"])
def test_a_refused_dicom_gets_tf_serving_s_error_shape_naming_the_tag(front, upstream, proxy):
    lateral = F.dicom_file(seed=4, ViewPosition="LL")
    url = (proxy.url if front == "log-proxy" else upstream.url) + contract.model_path(contract.MODEL_NAME) + ":predict"
    body = {"instances": [{"b64": base64.b64encode(demo_png(1)).decode()},
                          {"b64": base64.b64encode(lateral).decode()}]}
    answer = requests.post(url, json=body, timeout=30)
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert "DICOM image 1 of the request refused: (0018,5101) View Position: LL; expected one of PA, AP" in message
    assert not any(planted in message for planted in F.PLANTED.values())


def test_named_and_columnar_requests_are_converted_too(upstream, proxy):
    url = proxy.url + contract.model_path(contract.MODEL_NAME) + ":predict"
    value = {"b64": base64.b64encode(PHANTOM).decode()}
    expected = ServingClient(upstream.url).predict([convert(PHANTOM).png])[0][contract.PROBABILITIES]
    for body in ({"instances": [{contract.IMAGES_INPUT: value}]}, {"inputs": {contract.IMAGES_INPUT: [value]}},
                 {"inputs": [value]}):
        answer = requests.post(url, json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        probabilities = result["predictions"][0] if "predictions" in result else result["outputs"]
        probabilities = probabilities[contract.PROBABILITIES]
        assert (probabilities[0] if isinstance(probabilities[0], list) else probabilities) == expected


def test_only_bodies_holding_a_dicom_are_parsed():
    png_body = json.dumps({"instances": [{"b64": base64.b64encode(demo_png(seed)).decode()} for seed in range(3)]})
    assert not may_hold_dicom(png_body.encode())
    mixed = json.dumps({"instances": [{"b64": base64.b64encode(demo_png(0)).decode()},
                                      {"b64": base64.b64encode(PHANTOM).decode()}]})
    assert may_hold_dicom(mixed.encode())
    assert may_hold_dicom(json.dumps({"inputs": {"images": [{"b64": base64.b64encode(REAL).decode()}]}},
                                     separators=(",", ":")).encode())


def test_cxr_predict_takes_dicom_files_and_says_why_one_is_refused(upstream, tmp_path, capsys):
    good = write(str(tmp_path / "frontal.dcm"), REAL)
    lateral = write(str(tmp_path / "lateral.dcm"), F.dicom_file(seed=5, ViewPosition="LL"))
    assert main(["predict", good, lateral, "--url", upstream.url]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.strip().splitlines()[1:]}
    assert lines["frontal.dcm"].split()[1] in contract.LABELS
    assert "error: DICOM refused: (0018,5101) View Position: LL" in lines["lateral.dcm"]
    assert main(["predict", lateral, "--url", upstream.url, "--dicom-view-positions", "PA,AP,LL"]) == 0


def test_cxr_convert_dicom_writes_owner_only_pngs_and_names_each_refusal(tmp_path, capsys):
    real = write(str(tmp_path / "in" / "rg1.dcm"), F.real_file("RG1_J2KR.dcm"))
    ct = write(str(tmp_path / "in" / "ct.dcm"), F.dicom_file(seed=6, Modality="CT"))
    assert main(["convert-dicom", real, ct, "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "rg1.png: 1841 x 1955, 16-bit PNG (CR PA, MONOCHROME1, 15 bits stored)" in out
    assert f"{ct}: refused: (0008,0060) Modality: CT; expected one of CR, DX" in out
    assert sorted(os.listdir(tmp_path / "out")) == ["rg1.png"]
    assert os.stat(tmp_path / "out" / "rg1.png").st_mode & 0o777 == 0o600
    with open(tmp_path / "out" / "rg1.png", "rb") as f:
        assert f.read() == convert(F.real_file("RG1_UNCR.dcm")).png
