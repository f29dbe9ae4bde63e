"""TLS for the fronts (`cxr log-proxy`, `cxr serve`): the server's certificate and key, and the CA whose
client certificates are let in (mutual TLS), from files a Kubernetes Secret mounts; re-read when they
change, so a rotated certificate is served without a restart.

A reload loads the new certificate and key into the listening context, for the handshakes that follow
(connections already open keep theirs); a new client CA is added to the ones trusted, and a CA taken
out of the Secret is trusted until the front restarts. A caller is named by its certificate's subject
(common name), which the audit line records.
"""
import dataclasses
import logging
import os
import ssl
import threading
from typing import Optional, Tuple

log = logging.getLogger("cxr.tls")


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    cert_file: str
    key_file: str
    client_ca_file: Optional[str] = None  # mutual TLS: only clients with a certificate this CA signed
    reload_seconds: float = 60.0

    def check(self) -> None:
        """At start-up: each file is there (a Secret not mounted is named, not a traceback)."""
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"--tls_{name} {path}: no such file")


class ReloadingContext:
    """The listening SSLContext, its certificate reloaded when a file changes (checked every reload_seconds)."""

    def __init__(self, files: TlsFiles):
        files.check()
        self.files = files
        self.listening = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.listening.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._stamps()
        self._load(self.listening)
        if files.client_ca_file:
            self.listening.verify_mode = ssl.CERT_REQUIRED
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tls-reload", daemon=True)
        self._thread.start()

    def _load(self, context: ssl.SSLContext) -> None:
        context.load_cert_chain(self.files.cert_file, self.files.key_file)
        if self.files.client_ca_file:
            context.load_verify_locations(cafile=self.files.client_ca_file)

    def _stamps(self) -> Tuple:
        paths = [self.files.cert_file, self.files.key_file] + ([self.files.client_ca_file] if self.files.client_ca_file else [])
        return tuple((os.stat(path).st_mtime_ns, os.stat(path).st_size) if os.path.exists(path) else None
                     for path in paths)

    def reload_if_changed(self) -> bool:
        stamp = self._stamps()
        if stamp == self._stamp:
            return False
        try:
            self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))  # a half-written Secret fails here, harmlessly
            self._load(self.listening)
        except (OSError, ssl.SSLError) as error:
            log.warning("TLS files changed but cannot be loaded yet (%s); still serving the previous ones", error)
            return False
        self._stamp = stamp
        log.info("TLS certificate reloaded from %s", self.files.cert_file)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.files.reload_seconds):
            self.reload_if_changed()

    def close(self) -> None:
        self._stop.set()


def caller(peer_certificate: Optional[dict]) -> str:
    """The caller's name from its verified certificate: the subject's common name, '-' without one."""
    if not peer_certificate:
        return "-"
    for entry in peer_certificate.get("subject", ()):
        for key, value in entry:
            if key == "commonName":
                return value
    return "-"
