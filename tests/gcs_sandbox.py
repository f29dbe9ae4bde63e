"""A gs:// bucket for the tests: a GCS emulator behind TLS at Google's own host names, in a sandbox.

TensorFlow's built-in gs:// file system (curl) and Beam's GCS I/O (google-cloud-storage, requests)
both talk to https://storage.googleapis.com and https://www.googleapis.com. `run(command)` runs a
command in new mount and network namespaces (`unshare`, as root), where:
- /etc/hosts sends those names and oauth2.googleapis.com to 127.0.0.1 (only loopback exists, so
  nothing can reach the real Google);
- a TLS front at 127.0.0.1:443, with a certificate from a CA made for the run (CURL_CA_BUNDLE for
  TensorFlow, REQUESTS_CA_BUNDLE for the Python clients), forwards to gcp-storage-emulator (PyPI),
  which serves GCS's JSON API, uploads (simple, multipart, resumable), ranged downloads, rewrite and
  batch requests, and keeps the bucket's objects in a folder, so that it outlives each command;
- both clients authenticate as against GCS: TensorFlow with GOOGLE_AUTH_TOKEN_FOR_TESTING, Google's
  Python clients with authorized-user credentials refreshed at the token endpoint the front answers;
  a storage request without the bearer token is refused (401), as GCS refuses anonymous callers of
  a private bucket.
Where the emulator differs from GCS in what these clients send, the front or a patch corrects it:
- TensorFlow's resumable uploads send chunked PUT bodies: the front passes bodies on whole, with
  their length;
- the emulator writes http:// into the addresses it answers (a resumable upload's session, an object's
  mediaLink and selfLink): the front makes them https://, as GCS writes them;
- the emulator fails a zero-length simple upload (TensorFlow's folder markers, which GCS stores),
  and its folder store keeps an object at a path named like the object, so it cannot hold both
  `a/` and `a/b`, which GCS does: `_patch_emulator`.

    python tests/gcs_sandbox.py --storage DIR -- COMMAND...   (what `run` starts inside the namespaces)
"""
import argparse
import datetime
import fcntl
import http.client
import http.server
import json
import logging
import os
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from typing import List, Optional

BUCKET = "cxr-test"
TOKEN = "cxr-test-token"
STORAGE_HOSTS = ("storage.googleapis.com", "www.googleapis.com")
TOKEN_HOST = "oauth2.googleapis.com"


def unavailable() -> Optional[str]:
    """Why the sandbox cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "the GCS sandbox needs root for its mount and network namespaces (unshare)"
    probe = subprocess.run(["unshare", "--mount", "--net", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare --mount --net failed: {probe.stderr.strip()}"


def run(command: List[str], storage_dir: str, python: str = sys.executable, **kwargs) -> subprocess.CompletedProcess:
    """`command` inside the sandbox, the bucket BUCKET kept in storage_dir; `python` must have the emulator."""
    os.makedirs(storage_dir, exist_ok=True)
    return subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", python, os.path.abspath(__file__),
                           "--storage", storage_dir, "--", *command], **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gcs-sandbox-") as folder:
        _redirect_google_hosts(folder)
        _loopback_up()
        ca_file = _certificates(folder)
        emulator, front = _serve(args.storage, folder)
        try:
            return subprocess.run(args.command, env={**os.environ, **_client_environment(folder, ca_file)}).returncode
        finally:
            front.shutdown()
            emulator.stop()


def _redirect_google_hosts(folder: str) -> None:
    hosts = os.path.join(folder, "hosts")
    with open(hosts, "w", encoding="utf-8") as f:
        f.write(f"127.0.0.1 localhost {' '.join(STORAGE_HOSTS)} {TOKEN_HOST}\n::1 localhost\n")
    subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True)


def _loopback_up() -> None:
    """A new network namespace has only `lo`, down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, struct.pack("16sH", b"lo", 0))[:18])[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def _certificates(folder: str) -> str:
    """A CA and the front's certificate for Google's names; returns the CA's file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = dict(not_valid_before=now - datetime.timedelta(hours=1), not_valid_after=now + datetime.timedelta(days=2))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cxr tests' GCS sandbox CA")])
    ca = (x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **validity)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names = [*STORAGE_HOSTS, TOKEN_HOST]
    certificate = (x509.CertificateBuilder(
        subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]), issuer_name=ca_name,
        public_key=key.public_key(), serial_number=x509.random_serial_number(), **validity)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
        .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = {"ca.pem": ca.public_bytes(pem), "front.pem": certificate.public_bytes(pem) + key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}
    for name, content in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    return os.path.join(folder, "ca.pem")


def _client_environment(folder: str, ca_file: str) -> dict:
    credentials = os.path.join(folder, "credentials.json")
    with open(credentials, "w", encoding="utf-8") as f:
        json.dump({"type": "authorized_user", "client_id": "cxr-tests", "client_secret": "cxr-tests",
                   "refresh_token": "cxr-tests"}, f)
    return {"CURL_CA_BUNDLE": ca_file, "REQUESTS_CA_BUNDLE": ca_file, "SSL_CERT_FILE": ca_file,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": TOKEN, "NO_GCE_CHECK": "true",
            "GOOGLE_APPLICATION_CREDENTIALS": credentials, "GOOGLE_CLOUD_PROJECT": "cxr-tests"}


def _serve(storage_dir: str, folder: str):
    """The emulator and the TLS front, started."""
    from gcp_storage_emulator.server import create_server
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    _patch_emulator()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator = create_server("127.0.0.1", port, data_dir=storage_dir, default_bucket=BUCKET)
    emulator.start()
    _Front.backend = ("127.0.0.1", port)
    front = _ThreadingServer(("127.0.0.1", 443), _Front)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(folder, "front.pem"))
    front.socket = context.wrap_socket(front.socket, server_side=True)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    return emulator, front


def _patch_emulator() -> None:
    from gcp_storage_emulator import server
    from gcp_storage_emulator.storage import Storage

    read_data = server._read_data

    def _read_data(request_handler, query):  # an empty body is read as none, and the upload fails on len(None)
        data = read_data(request_handler, query)
        return b"" if data is None and query.get("uploadType") == ["media"] else data

    server._read_data = _read_data
    for method in ("_object_path", "_soft_delete_content_path"):  # one flat file per object, whatever its name
        original = getattr(Storage, method)
        setattr(Storage, method, lambda self, bucket, name, *rest, _original=original: _original(
            self, bucket, urllib.parse.quote(name, safe=""), *rest))


def _https(data: bytes) -> bytes:
    for host in STORAGE_HOSTS:
        data = data.replace(f"http://{host}".encode(), f"https://{host}".encode())
    return data


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class _Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend = ("127.0.0.1", 0)

    def _handle(self) -> None:
        body = self._body()
        host = self.headers.get("Host", "").split(":")[0]
        if host == TOKEN_HOST:
            return self._answer(200, json.dumps({"access_token": TOKEN, "expires_in": 3600,
                                                 "token_type": "Bearer"}).encode(), "application/json")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._answer(401, json.dumps({"error": {"code": 401, "message": (
                "Anonymous caller does not have storage.objects access to the Google Cloud Storage object.")}}
            ).encode(), "application/json")
        headers = {key: value for key, value in self.headers.items()
                   if key.lower() not in ("transfer-encoding", "content-length", "connection")}
        connection = http.client.HTTPConnection(*self.backend, timeout=300)
        connection.request(self.command, self.path, body=body, headers={**headers, "Content-Length": str(len(body))})
        answer = connection.getresponse()
        data = _https(answer.read())
        connection.close()
        self.send_response_only(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() in ("transfer-encoding", "content-length", "connection", "server", "date"):
                continue
            self.send_header(key, _https(value.encode()).decode() if key.lower() == "location" else value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
