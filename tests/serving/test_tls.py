"""The fronts with real TLS (serving/tls.py): `cxr log-proxy` with a server certificate and mutual TLS in front
of `cxr serve`, certificates made per test; who may connect, what the audit line says, rotation."""
import json
import logging
import os
import shutil
import socket
import ssl
import time

import pytest
import requests

from certificates import Authority, write_pair
from cxr import contract
from cxr.serving.client import ServingClient, ServingRequestError
from cxr.serving.dev_server import ServerSettings, start
from cxr.serving.log_proxy import LogProxy
from cxr.serving.server_settings import ProxySettings
from trained_model import demo_png


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("pki"))
    ca, other = Authority("cxr test CA"), Authority("someone else's CA")
    found = {"folder": folder, "ca": ca, "ca_file": ca.write(folder)}
    found["server"] = write_pair(folder, "server", *ca.issue("cxr-serving", server=True))
    found["client"] = write_pair(folder, "client", *ca.issue("ris.hospital.example"))
    found["stranger"] = write_pair(folder, "stranger", *other.issue("ris.hospital.example"))
    found["expired"] = write_pair(folder, "expired", *ca.issue("old.hospital.example", expired=True))
    return found


@pytest.fixture(scope="module")
def upstream(model_base_path):
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0))
    yield running
    running.stop()


@pytest.fixture
def front(upstream, pki, tmp_path):
    cert, key = (shutil.copy(path, tmp_path / os.path.basename(path)) for path in pki["server"])
    proxy = LogProxy(ProxySettings(upstream=upstream.url, port=0, host="127.0.0.1", tls_cert_file=str(cert),
                                   tls_key_file=str(key), tls_client_ca_file=pki["ca_file"],
                                   tls_reload_seconds=0.2)).start()
    yield proxy
    proxy.stop()


def _client(front, pki, who="client"):
    cert, key = pki[who] if who else (None, None)
    return ServingClient(url=front.url, ca_file=pki["ca_file"], cert_file=cert, key_file=key, retries=0)


def test_a_caller_with_a_certificate_of_the_client_ca_is_answered(front, pki):
    assert front.url.startswith("https://")
    [answer] = _client(front, pki).predict([demo_png(1)])
    assert len(answer[contract.PROBABILITIES]) == contract.NUM_CLASSES


@pytest.mark.parametrize("who", [None, "stranger", "expired"], ids=["no certificate", "another CA", "expired"])
def test_a_caller_without_a_good_certificate_is_refused_at_the_handshake(front, pki, who):
    with pytest.raises(ServingRequestError, match="TLS with|cannot reach"):
        _client(front, pki, who).predict([demo_png(1)])
    # Refused at the handshake, not by an HTTP answer: a raw TLS connection sees the alert.
    context = ssl.create_default_context(cafile=pki["ca_file"])
    if who:
        context.load_cert_chain(*pki[who])
    host, port = front.http.server_address
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection((host, port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /v1/models/cxr HTTP/1.1\r\nHost: x\r\n\r\n")
            if not tls.recv(1):  # TLS 1.3: the client's certificate is judged after the client's Finished
                raise ConnectionError("closed")
    # And the front still answers a good caller.
    assert _client(front, pki).status()["model_version_status"]


def test_plain_http_is_not_answered_by_a_tls_front(front):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(front.url.replace("https://", "http://") + "/v1/models/cxr", timeout=10)


def test_each_request_leaves_one_audit_line_with_the_caller_and_no_image(front, pki, caplog):
    caplog.set_level(logging.INFO, logger="cxr.audit")
    image = demo_png(2)
    _client(front, pki).predict([image])

    def lines():
        return [json.loads(record.getMessage()) for record in caplog.records if record.name == "cxr.audit"]
    # The front's line names the caller; cxr serve behind it (plain HTTP on localhost) writes its own, without.
    # The line is written once the answer is sent: the client may have it first.
    deadline = time.monotonic() + 10
    while not [line for line in lines() if line["caller"] != "-"] and time.monotonic() < deadline:
        time.sleep(0.05)
    mine = [line for line in lines() if line["method"] == "POST" and line["caller"] != "-"]
    assert len(mine) == 1, lines()
    (line,) = mine
    assert line["caller"] == "ris.hospital.example" and line["status"] == 200 and line["model"] == "cxr"
    assert line["version"] == "latest" and line["request_bytes"] > len(image) and len(line["request_id"]) == 16
    assert set(line) == {"time", "caller", "peer", "request_id", "method", "model", "version", "status",
                         "request_bytes", "answer_bytes", "ms"}


def test_a_rotated_server_certificate_is_served_without_a_restart(front, pki):
    def served_serial():
        context = ssl.create_default_context(cafile=pki["ca_file"])
        context.load_cert_chain(*pki["client"])
        host, port = front.http.server_address
        with socket.create_connection((host, port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            from cryptography import x509
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number

    before = served_serial()
    rotated = pki["ca"].issue("cxr-serving", server=True)
    write_pair(os.path.dirname(front.settings.tls_cert_file), "server", *rotated)
    deadline = time.monotonic() + 10
    while served_serial() == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served_serial() == rotated[0].serial_number
    assert _client(front, pki).predict([demo_png(3)])


def test_a_front_on_the_network_without_tls_is_refused_unless_a_mesh_does_it():
    with pytest.raises(ValueError, match="without TLS would take plain HTTP from the network"):
        ProxySettings(host="0.0.0.0")
    assert ProxySettings(host="0.0.0.0", plaintext_behind_mesh=True).tls() is None
    with pytest.raises(ValueError, match="go together"):
        ProxySettings(tls_cert_file="/tls/tls.crt")
