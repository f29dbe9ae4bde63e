"""scripts/pin_images.py against a registry that answers as Docker Hub does: the manifest HEAD refused with 401
and a bearer challenge until an anonymous pull token for that repository is sent, 404 MANIFEST_UNKNOWN for a
tag it lacks, and the digest in Docker-Content-Digest (distribution/distribution registry/handlers/
manifests.go; docker/cli's and containerd's resolver send the index and manifest media types in Accept)."""
import http.server
import importlib.util
import json
import os
import shutil
import threading
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("pin_images", os.path.join(ROOT, "scripts", "pin_images.py"))
pin_images = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pin_images)

DIGESTS = {("tensorflow/serving", "2.16.1"): "sha256:" + "a" * 64,
           ("tensorflow/serving", "2.16.1-gpu"): "sha256:" + "b" * 64,
           ("library/python", "3.10-slim-bookworm"): "sha256:" + "c" * 64}


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    def _manifest(self):
        path = urllib.parse.urlsplit(self.path).path
        repository, _, tag = path[len("/v2/"):].rpartition("/manifests/")
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer token-for-{repository}":
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://127.0.0.1:{self.server.server_port}/token",'
                                                 f'service="registry.docker.io",scope="repository:{repository}:pull"')
            self.end_headers()
            return
        if "application/vnd.oci.image.index.v1+json" not in self.headers.get("Accept", ""):
            self.send_response(404)  # a schema 1 client: nothing it can pull
            self.end_headers()
            return
        digest = DIGESTS.get((repository, tag))
        self.send_response(200 if digest else 404)
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        self._manifest()

    def do_GET(self):  # noqa: N802
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path == "/token":
            query = dict(urllib.parse.parse_qsl(parsed.query))
            repository = query["scope"].split(":")[1]
            body = json.dumps({"token": f"token-for-{repository}"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._manifest()

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {pin_images.DOCKER_HUB: f"http://127.0.0.1:{server.server_port}"}
    server.shutdown()


def test_references_take_docker_s_defaults():
    assert pin_images.split_reference("python:3.10-slim-bookworm") == (
        "registry-1.docker.io", "library/python", "3.10-slim-bookworm", None)
    assert pin_images.split_reference("tensorflow/serving:2.16.1@sha256:" + "a" * 64)[1:] == (
        "tensorflow/serving", "2.16.1", "sha256:" + "a" * 64)
    assert pin_images.split_reference("registry.example.com:5000/team/cxr-pipeline")[:3] == (
        "registry.example.com:5000", "team/cxr-pipeline", "latest")


def test_the_shipped_files_are_pinned_by_digest_keeping_their_tags(registry, tmp_path):
    copies = []
    for relative in pin_images.FILES:
        copy = tmp_path / relative.replace("/", "_")
        shutil.copy(os.path.join(ROOT, relative), copy)
        copies.append(str(copy))
    assert pin_images.main(["--check", *copies]) == 1
    assert pin_images.main(["--registry-url", f"{pin_images.DOCKER_HUB}={registry[pin_images.DOCKER_HUB]}",
                            *copies]) == 0
    pinned = {ref for path in copies for _, ref in pin_images.images(path)}
    assert {"tensorflow/serving:2.16.1@sha256:" + "a" * 64, "tensorflow/serving:2.16.1-gpu@sha256:" + "b" * 64,
            "python:3.10-slim-bookworm@sha256:" + "c" * 64} <= pinned
    # the one image left is the pipeline image the user builds and pushes (make image), named as a placeholder
    assert [line.rsplit(": ", 1)[1] for line in pin_images.unpinned(copies)] == ["cxr-pipeline:latest"]
    with open(copies[0], encoding="utf-8") as f:
        assert "image: tensorflow/serving:2.16.1@sha256:" + "a" * 64 + "\n" in f.read()


def test_a_tag_the_registry_lacks_is_named_and_nothing_is_written(registry, tmp_path):
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text("containers:\n  - name: x\n    image: tensorflow/serving:9.9.9\n")
    with pytest.raises(pin_images.PinError, match=r"tensorflow/serving:9.9.9: the registry has no tag '9.9.9'"):
        pin_images.pin_file(str(manifest), registry)
    assert manifest.read_text().endswith("image: tensorflow/serving:9.9.9\n")
