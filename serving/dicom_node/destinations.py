"""Where the node's reports go: a DICOM peer by C-STORE (pynetdicom) or a DICOMweb server by STOW-RS.

`send` returns once the peer has stored the report. It raises PeerDown when the peer could not take it
now (no association, a timeout, an out-of-resources status, HTTP 5xx: the node keeps the image and tries
again later) and PeerRefused when the peer refuses this report for good (a failure status, HTTP 4xx:
the node logs it in the audit and drops the image). Neither message holds an identifier.
"""
import io
import uuid
from typing import Tuple

import pydicom
import requests
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from cxr.serving.dicom_node.settings import CStoreDestination, StowDestination

_CSTORE_OK = (0x0000, 0xB000, 0xB006, 0xB007)  # success and the storage warnings (PS3.4 B.2.3)


class PeerDown(RuntimeError):
    """The destination cannot take the report now: try again later."""


class PeerRefused(RuntimeError):
    """The destination refused the report: sending it again would not help."""


def sender(destination, calling_ae_title: str):
    if isinstance(destination, CStoreDestination):
        return CStoreSender(destination, calling_ae_title)
    if isinstance(destination, StowDestination):
        return StowSender(destination)
    raise ValueError(f"unknown destination {destination!r}")


class CStoreSender:
    """Keeps one association open across reports (opening one per report cost 130 ms against Orthanc, more
    than the model's answer: bench/RESULTS.md, "DICOM node"); one that the peer closed meanwhile (Orthanc
    after its DicomScpTimeout) is opened again once, then the report is sent on it."""

    def __init__(self, destination: CStoreDestination, calling_ae_title: str, timeout_s: float = 30.0):
        self.destination = destination
        self._ae = AE(ae_title=calling_ae_title)
        self._ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
        self._ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)  # the Grad-CAM
        self._ae.acse_timeout = self._ae.dimse_timeout = self._ae.network_timeout = timeout_s
        self._association = None

    def describe(self) -> str:
        d = self.destination
        return f"C-STORE to {d.ae_title}@{d.host}:{d.port}"

    def send(self, report: pydicom.Dataset) -> None:
        """Stores one instance: the SR, or the Grad-CAM's Secondary Capture."""
        d = self.destination
        reused = self._association is not None and self._association.is_established
        status = self._associated().send_c_store(report)
        if getattr(status, "Status", None) is None and reused:  # the kept association had been closed
            self.close()
            status = self._associated().send_c_store(report)
        code = getattr(status, "Status", None)
        if code is None:
            self.close()
            raise PeerDown(f"{d.ae_title} gave no C-STORE answer (timeout or aborted association)")
        if code in _CSTORE_OK:
            return
        if 0xA700 <= code <= 0xA7FF:
            raise PeerDown(f"{d.ae_title} is out of resources (C-STORE status 0x{code:04X})")
        raise PeerRefused(f"{d.ae_title} refused the report (C-STORE status 0x{code:04X}"
                          f"{': ' + str(status.ErrorComment) if 'ErrorComment' in status else ''})")

    def close(self) -> None:
        if self._association is not None:
            if self._association.is_established:
                self._association.release()
            self._association = None

    def _associated(self):
        if self._association is None or not self._association.is_established:
            d = self.destination
            association = self._ae.associate(d.host, d.port, ae_title=d.ae_title)
            if not association.is_established:
                raise PeerDown(f"no association with {d.ae_title}@{d.host}:{d.port} "
                               f"({'rejected' if association.is_rejected else 'aborted or unreachable'})")
            self._association = association
        return self._association


class StowSender:
    def __init__(self, destination: StowDestination, timeout_s: float = 30.0):
        self.destination = destination
        self.timeout_s = timeout_s
        self._session = requests.Session()

    def describe(self) -> str:
        return f"STOW-RS to {self.destination.url}"

    def close(self) -> None:
        self._session.close()

    def send(self, report: pydicom.Dataset) -> None:
        url = self.destination.url.rstrip("/") + "/studies"
        body, content_type = _multipart(report)
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        if self.destination.token_file:
            headers["Authorization"] = f"Bearer {_token(self.destination.token_file)}"
        try:
            response = self._session.post(url, data=body, headers=headers, timeout=self.timeout_s,
                                          verify=self.destination.ca_file or True)
        except requests.exceptions.SSLError as error:
            raise PeerRefused(f"TLS with {url} failed ({type(error).__name__}): check --stow-ca-file") from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise PeerDown(f"cannot reach {url} ({type(error).__name__})") from None
        if response.status_code == 200:
            return
        if response.status_code == 202:  # some instances stored, some not (PS3.18 10.5.3): ours was not
            raise PeerRefused(f"{url} did not store the report (HTTP 202: a warning or failure for it)")
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise PeerDown(f"{url} answered HTTP {response.status_code}")
        raise PeerRefused(f"{url} refused the report: HTTP {response.status_code} "
                          f"{'(is the token in --stow-token-file valid?)' if response.status_code in (401, 403) else ''}".rstrip())


def _multipart(report: pydicom.Dataset) -> Tuple[bytes, str]:
    """PS3.18 10.5.1.2: multipart/related, one application/dicom part (the Part 10 file)."""
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue()
            + f"\r\n--{boundary}--\r\n".encode())
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _token(path: str) -> str:
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as error:
        raise PeerRefused(f"--stow-token-file {path}: {error.strerror}") from None
    if not token:
        raise PeerRefused(f"--stow-token-file {path} is empty")
    return token
