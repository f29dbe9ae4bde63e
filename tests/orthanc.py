"""A real PACS for the tests: Orthanc from Debian's packages (`orthanc`, `orthanc-dicomweb`;
scripts/test-packages.sh installs them, as .ci/run does), started on free ports with a configuration
written per test, its storage in the test's folder.

Orthanc's REST API uploads studies (POST /instances) and sends them to a DICOM modality (POST
/modalities/<id>/store, Orthanc as C-STORE SCU); its DICOMweb plugin answers QIDO-RS and WADO-RS, through
which the tests read back what the node stored, and takes STOW-RS (POST /dicom-web/studies).
"""
import email.parser
import email.policy
import io
import json
import os
import shutil
import socket
import subprocess
import time
from typing import List, Optional

import pydicom
import requests

BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
AE_TITLE = "ORTHANC"


def available() -> Optional[str]:
    """Why Orthanc cannot run here, or None."""
    if not os.path.exists(BINARY):
        return f"{BINARY} missing: Debian's orthanc and orthanc-dicomweb (scripts/test-packages.sh installs them)"
    if not os.path.exists(DICOMWEB_PLUGIN):
        return f"{DICOMWEB_PLUGIN} missing: Debian's orthanc-dicomweb (scripts/test-packages.sh installs it)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: str, dicom_port: Optional[int] = None):
        self.folder = folder
        self.http_port, self.dicom_port = free_port(), dicom_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = self.url + "/dicom-web"
        self._process: Optional[subprocess.Popen] = None

    def start(self) -> "Orthanc":
        os.makedirs(self.folder, exist_ok=True)
        config = {
            "Name": "cxr-tests", "StorageDirectory": os.path.join(self.folder, "db"),
            "IndexDirectory": os.path.join(self.folder, "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": AE_TITLE, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "DicomModalities": {},
            "DicomScuTimeout": 30, "ConcurrentJobs": 2,
        }
        path = os.path.join(self.folder, "orthanc.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self._log = open(os.path.join(self.folder, "orthanc.log"), "wb")
        self._process = subprocess.Popen([BINARY, path], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.url + "/system", timeout=2).raise_for_status()
                return self
            except requests.RequestException:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {self.log_tail()}")
                time.sleep(0.05)

    def stop(self) -> None:
        # Killed: a graceful stop takes Orthanc 3.5 s (its DICOM server's threads), and nothing here needs
        # its storage afterwards.
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(os.path.join(self.folder, "orthanc.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # -- REST --------------------------------------------------------------------------------------
    def add_modality(self, name: str, ae_title: str, port: int, host: str = "127.0.0.1") -> None:
        requests.put(f"{self.url}/modalities/{name}", json={"AET": ae_title, "Host": host, "Port": port},
                     timeout=10).raise_for_status()

    def upload(self, data: bytes) -> str:
        """Orthanc's id of the uploaded instance."""
        response = requests.post(self.url + "/instances", data=data, timeout=30)
        response.raise_for_status()
        return response.json()["ID"]

    def store_to(self, modality: str, instance_ids: List[str]) -> requests.Response:
        """Orthanc sends these instances to the modality by C-STORE (synchronously); its answer, as is."""
        return requests.post(f"{self.url}/modalities/{modality}/store",
                             json={"Resources": instance_ids, "Synchronous": True}, timeout=600)

    # -- DICOMweb ----------------------------------------------------------------------------------
    def instances(self, study_uid: str, modality: Optional[str] = None) -> List[dict]:
        """QIDO-RS: the study's instances (DICOM JSON), of one modality if given."""
        params = {"00080060": modality} if modality else {}
        response = requests.get(f"{self.dicomweb}/studies/{study_uid}/instances", params=params, timeout=30,
                                headers={"Accept": "application/dicom+json"})
        response.raise_for_status()
        return response.json() if response.content else []

    def retrieve(self, study_uid: str, series_uid: str, instance_uid: str) -> pydicom.Dataset:
        """WADO-RS: the instance as stored (multipart/related; type=application/dicom)."""
        response = requests.get(f"{self.dicomweb}/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}",
                                headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
        response.raise_for_status()
        parts = _multipart_parts(response.headers["Content-Type"], response.content)
        assert len(parts) == 1, f"{len(parts)} parts for one instance"
        return pydicom.dcmread(io.BytesIO(parts[0]))

    def reports(self, study_uid: str) -> List[pydicom.Dataset]:
        """Every SR of the study, read back through QIDO-RS then WADO-RS."""
        found = []
        for entry in self.instances(study_uid, modality="SR"):
            series, instance = entry["0020000E"]["Value"][0], entry["00080018"]["Value"][0]
            found.append(self.retrieve(study_uid, series, instance))
        return found


def _multipart_parts(content_type: str, body: bytes) -> List[bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return [part.get_payload(decode=True) for part in message.iter_parts()]
