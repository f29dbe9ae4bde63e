"""`cxr serve`'s settings, under TF Serving's flag names, and its request log's. Plain Python: the
command line takes its defaults from here without importing TensorFlow."""
import dataclasses
from typing import Mapping, Optional, Tuple

from cxr import contract
from cxr.dicom.rules import DEFAULT_MODALITIES, DEFAULT_VIEW_POSITIONS, DicomRules
from cxr.serving.http_server import HttpLimits
from cxr.serving.tls import TlsFiles

_LOOPBACK = ("127.0.0.1", "localhost", "::1")

UNLABELLED = ""  # the rate key of requests that named no version label


@dataclasses.dataclass(frozen=True)
class RequestLogSettings:
    root: str  # a folder or bucket path: <root>/<model>/<YYYY-MM-DD>/<HH>/requests-*.tfrecord
    # The share of answered :predict requests kept, by the version label they asked for ("" none).
    sample_rate: float = 0.1
    label_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
    max_file_bytes: int = 64 << 20  # a file is closed past this size, and at the turn of each hour
    max_queued: int = 256  # records waiting to be written; past this, samples are dropped and counted
    max_queued_bytes: int = 256 << 20  # and the request bodies they hold, together (one body always fits)
    max_age_hours: float = 24 * 30
    max_total_bytes: int = 20 << 30

    def __post_init__(self):
        for label, rate in {UNLABELLED: self.sample_rate, **self.label_rates}.items():
            if not 0 <= rate <= 1:
                raise ValueError(f"request log sample rate{f' of label {label!r}' if label else ''} must lie in "
                                 f"0..1, got {rate}")
        if self.max_file_bytes < 1 or self.max_queued < 1 or self.max_queued_bytes < 1:
            raise ValueError("request log file size, queue length and queue bytes must be positive")

    def rate(self, label: Optional[str]) -> float:
        return self.label_rates.get(label or UNLABELLED, self.sample_rate)


@dataclasses.dataclass(frozen=True)
class RequestLogFlags:
    """The request log's flags, shared by `cxr serve` and `cxr log-proxy`; no log unless a root is given."""
    request_log_root: Optional[str] = None
    request_log_sample_rate: float = 0.1
    request_log_label_rates: Tuple[str, ...] = ()  # label=rate, e.g. canary=1.0
    request_log_max_age_hours: float = 24 * 30
    request_log_max_total_bytes: int = 20 << 30

    def request_log(self) -> Optional[RequestLogSettings]:
        if not self.request_log_root:
            return None
        rates = {}
        for entry in self.request_log_label_rates:
            label, sep, rate = entry.partition("=")
            try:
                rates[label] = float(rate)
            except ValueError:
                sep = ""
            if not sep or not label:
                raise ValueError(f"--request_log_label_rate {entry!r} must look like label=rate, e.g. canary=1.0")
        return RequestLogSettings(root=self.request_log_root, sample_rate=self.request_log_sample_rate,
                                  label_rates=rates, max_age_hours=self.request_log_max_age_hours,
                                  max_total_bytes=self.request_log_max_total_bytes)


@dataclasses.dataclass(frozen=True)
class FrontFlags:
    """What the fronts (`cxr serve`, `cxr log-proxy`) take before anything is decoded or forwarded: how many
    images a request may carry, and what a DICOM sent in one must be (serving/dicom_front.py); where they
    listen, and the HTTP limits of serving/http_server.py."""
    host: str = "127.0.0.1"
    # A request's JSON carries its images in base64 (4/3 of the files): 16 NIH PNGs are ~15 MB.
    max_body_bytes: int = 32 * 1024 * 1024
    read_timeout_seconds: float = 10.0  # a request's headers; an idle connection is closed after it
    body_timeout_seconds: float = 60.0
    workers: int = 4  # requests handled at once
    # Once answering, the front writes its URL (http://host:port) to this file, so that whoever started it on
    # port 0 learns the port it got (not TF Serving's).
    address_file: Optional[str] = None
    max_images_per_request: int = contract.MAX_IMAGES_PER_REQUEST
    # TLS (serving/tls.py): the server's certificate and key, and the CA of the client certificates let in
    # (mutual TLS). Without them the front speaks plain HTTP, which it does only on the loopback address,
    # or behind a service mesh that terminates mutual TLS for it (Istio, Linkerd): plaintext_behind_mesh.
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    tls_client_ca_file: Optional[str] = None
    tls_reload_seconds: float = 60.0
    plaintext_behind_mesh: bool = False
    # On SIGTERM: stop taking connections, let the requests under way finish for at most this long, then stop
    # (within Kubernetes' default 30 s grace period; serving/k8s/deployment.yaml).
    drain_seconds: float = 20.0
    dicom_modalities: Tuple[str, ...] = DEFAULT_MODALITIES
    dicom_view_positions: Tuple[str, ...] = DEFAULT_VIEW_POSITIONS
    dicom_allow_missing_view_position: bool = False

    def __post_init__(self):
        if self.max_images_per_request < 1:
            raise ValueError(f"--max_images_per_request must be at least 1, got {self.max_images_per_request}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("--tls_cert_file and --tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("--tls_client_ca_file (mutual TLS) needs --tls_cert_file and --tls_key_file")
        if not self.tls_cert_file and not self.plaintext_behind_mesh and self.host not in _LOOPBACK:
            raise ValueError(f"--host {self.host} without TLS would take plain HTTP from the network: give "
                             f"--tls_cert_file and --tls_key_file (and --tls_client_ca_file for mutual TLS), or "
                             f"--plaintext_behind_mesh where a service mesh terminates mutual TLS for the pod")

    def tls(self) -> Optional[TlsFiles]:
        if not self.tls_cert_file:
            return None
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file, self.tls_reload_seconds)

    def dicom_rules(self) -> DicomRules:
        return DicomRules(modalities=self.dicom_modalities, view_positions=self.dicom_view_positions,
                          allow_missing_view_position=self.dicom_allow_missing_view_position)

    def http_limits(self) -> HttpLimits:
        return HttpLimits(max_body_bytes=self.max_body_bytes, header_timeout_s=self.read_timeout_seconds,
                          body_timeout_s=self.body_timeout_seconds, workers=self.workers)


@dataclasses.dataclass(frozen=True)
class ServerSettings(RequestLogFlags, FrontFlags):
    model_base_path: Optional[str] = None
    model_name: str = contract.MODEL_NAME
    model_config_file: Optional[str] = None
    rest_api_port: int = contract.DEFAULT_REST_PORT  # 0 picks a free port
    file_system_poll_wait_seconds: float = 1.0
    enable_model_warmup: bool = True
    # workers: requests computed at once (TF Serving: --rest_api_num_threads)


@dataclasses.dataclass(frozen=True)
class ProxySettings(RequestLogFlags, FrontFlags):
    """`cxr log-proxy`: TF Serving's REST API passed through to `upstream`, a sample of it logged."""
    upstream: str = f"http://localhost:{contract.DEFAULT_REST_PORT}"
    port: int = 8511  # 0 picks a free port
    upstream_timeout_seconds: float = 120.0
    # Requests forwarded at once: a forwarded request waits on TF Serving, not on this process's cores.
    workers: int = 8
