"""The DICOM node's settings: its own AE, the disk queue's bounds, the model server it asks and where its
answers go. Plain Python (no pynetdicom, no pydicom), so the command line builds and checks them cheaply."""
import dataclasses
import re
from typing import Optional, Tuple

from cxr import contract
from cxr.dicom.rules import DicomRules

# PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash or control character;
# leading and trailing spaces are not significant (and an all-space title is not one).
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
DEFAULT_PORT = 11112  # DICOM's registered port for non-privileged use (IANA "dicom", PS3.8 G.2)


def checked_ae_title(value: str, key: str) -> str:
    if not isinstance(value, str) or not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"{key} must be a DICOM AE title (1-16 printable characters, no backslash), got {value!r}")
    return value.strip()


@dataclasses.dataclass(frozen=True)
class CStoreDestination:
    """A DICOM peer the reports are sent to by C-STORE (the PACS, as registered there)."""
    ae_title: str
    host: str
    port: int

    def __post_init__(self):
        object.__setattr__(self, "ae_title", checked_ae_title(self.ae_title, "store_to's AE title"))
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"store_to's port must be 1-65535, got {self.port!r}")
        if not self.host:
            raise ValueError("store_to's host must not be empty")

    @classmethod
    def parse(cls, text: str) -> "CStoreDestination":
        """AE@HOST:PORT, e.g. ORTHANC@pacs.example.org:4242."""
        match = re.match(r"^([^@]+)@(.+):(\d+)$", text or "")
        if not match:
            raise ValueError(f"--store-to must be AE_TITLE@HOST:PORT (e.g. ORTHANC@pacs.example.org:4242), got {text!r}")
        return cls(match.group(1), match.group(2), int(match.group(3)))


@dataclasses.dataclass(frozen=True)
class StowDestination:
    """A DICOMweb server the reports are sent to by STOW-RS (POST <url>/studies)."""
    url: str
    token_file: Optional[str] = None  # a bearer token, read at each send (so that it can be rotated)
    ca_file: Optional[str] = None  # an https:// server: the CA its certificate must chain to

    def __post_init__(self):
        if not re.match(r"^https?://", self.url or ""):
            raise ValueError(f"stow_url must start with http:// or https://, got {self.url!r}")


@dataclasses.dataclass(frozen=True)
class ModelServer:
    """The serving front the node asks, with the client's TLS settings (cxr predict's)."""
    url: str = f"http://localhost:{contract.DEFAULT_REST_PORT}"
    model: str = contract.MODEL_NAME
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    timeout_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class NodeSettings:
    queue_dir: str
    destination: object  # CStoreDestination or StowDestination
    model_server: ModelServer = ModelServer()
    ae_title: str = "CXRNODE"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    dicom_rules: DicomRules = DicomRules()
    max_queue_items: int = 1000
    max_queue_bytes: int = 4 << 30  # 4 GiB of received files waiting for an answer
    max_associations: int = 4  # each holds at most one received image in memory
    workers: int = 2  # images answered at once (each its own association to the destination)
    grad_cam: bool = False  # also send the Grad-CAM overlay as a Secondary Capture in the same study
    answered_retention_days: float = 30.0  # how long a SOP Instance UID answered is remembered (duplicates)
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    audit_log: Optional[str] = None  # default <queue_dir>/audit.jsonl

    def __post_init__(self):
        object.__setattr__(self, "ae_title", checked_ae_title(self.ae_title, "ae_title"))
        if not isinstance(self.destination, (CStoreDestination, StowDestination)):
            raise ValueError("the node needs a destination for its reports: --store-to AE@HOST:PORT or --stow-url URL")
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ValueError(f"port must be 0-65535, got {self.port!r}")
        for key in ("max_queue_items", "max_queue_bytes", "max_associations", "workers"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive number, got {getattr(self, key)!r}")
        for key in ("answered_retention_days", "retry_min_s", "retry_max_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)!r}")
        if self.retry_max_s < self.retry_min_s:
            raise ValueError(f"retry_max_s ({self.retry_max_s}) must be at least retry_min_s ({self.retry_min_s})")

    @property
    def audit_path(self) -> str:
        import os
        return self.audit_log or os.path.join(self.queue_dir, "audit.jsonl")

    def retry_delays(self) -> Tuple[float, ...]:
        """The waits between attempts while a peer is down: doubling from retry_min_s to retry_max_s."""
        delays, delay = [], self.retry_min_s
        while delay < self.retry_max_s:
            delays.append(delay)
            delay *= 2
        return tuple(delays) + (self.retry_max_s,)
