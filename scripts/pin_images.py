"""Pins every container image the deployment names to its digest: `name:tag` becomes `name:tag@sha256:...`.

A tag can be moved to other bytes at any time; a digest cannot, and Kubernetes and Docker pull the digest
when both are given (the tag stays beside it for the reader). Run it where the registries are reachable,
before deploying, and commit the result; `--check` exits 1 naming each image left unpinned (a deploy gate).

    python scripts/pin_images.py                 # resolve and rewrite in place
    python scripts/pin_images.py --check         # exit 1 if an image is not pinned

The digest is what the registry answers for the tag in `Docker-Content-Digest`, asked the way Docker asks
(the OCI distribution spec, "Pulling manifests": HEAD /v2/<name>/manifests/<reference> with the index and
manifest media types in Accept; a 401 names the token service in WWW-Authenticate, whose anonymous pull
token is then sent as a bearer token). For a multi-platform image that is the index's digest, as
`docker buildx imagetools inspect` prints it.
"""
import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where images are named: Kubernetes manifests (image:) and the Dockerfile's base (ARG PYTHON_IMAGE=).
FILES = ("serving/k8s/deployment.yaml", "serving/gpu/deployment-gpu-patch.yaml", "kubeflow/Dockerfile")
IMAGE_LINE = re.compile(r"^(?P<lead>\s*(?:-\s*)?image:\s*|ARG PYTHON_IMAGE=)(?P<ref>[^\s#]+)(?P<rest>.*)$")
ACCEPT = ", ".join(("application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json"))
DOCKER_HUB = "registry-1.docker.io"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class PinError(Exception):
    pass


def split_reference(ref: str) -> Tuple[str, str, str, Optional[str]]:
    """(registry host, repository, tag, digest or None) of an image reference, Docker's defaults applied."""
    name, _, digest = ref.partition("@")
    first, _, remainder = name.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, name
        if "/" not in path:
            path = "library/" + path
    path, _, tag = path.partition(":")
    return registry, path, tag or "latest", digest or None


def _challenge(header: str) -> Dict[str, str]:
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "bearer":
        raise PinError(f"the registry asks for {scheme} authentication, not a bearer token")
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def resolve(ref: str, registry_urls: Dict[str, str], timeout: float = 30.0) -> str:
    """The digest the registry serves for ref's tag."""
    registry, repository, tag, _ = split_reference(ref)
    base = registry_urls.get(registry, f"https://{registry}")
    url = f"{base}/v2/{repository}/manifests/{tag}"
    headers = {"Accept": ACCEPT}
    for attempt in range(2):
        request = urllib.request.Request(url, method="HEAD", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                digest = response.headers.get("Docker-Content-Digest", "")
                if not DIGEST.match(digest):
                    raise PinError(f"{ref}: the registry answered without a sha256 Docker-Content-Digest ({digest!r})")
                return digest
        except urllib.error.HTTPError as error:
            if error.code == 401 and attempt == 0 and "WWW-Authenticate" in error.headers:
                wanted = _challenge(error.headers["WWW-Authenticate"])
                query = {"service": wanted.get("service", ""), "scope": f"repository:{repository}:pull"}
                token_url = f"{wanted['realm']}?{urllib.parse.urlencode(query)}"
                with urllib.request.urlopen(token_url, timeout=timeout) as answer:
                    body = json.load(answer)
                headers["Authorization"] = f"Bearer {body.get('token') or body['access_token']}"
                continue
            if error.code == 404:
                raise PinError(f"{ref}: the registry has no tag {tag!r} of {repository}") from None
            raise PinError(f"{ref}: the registry answered HTTP {error.code}") from None
    raise PinError(f"{ref}: the registry refused the pull token")


def images(path: str) -> List[Tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        return [(number, match["ref"]) for number, line in enumerate(f)
                if (match := IMAGE_LINE.match(line.rstrip("\n")))]


def pin_file(path: str, registry_urls: Dict[str, str], skip=re.compile(r"^cxr-pipeline:")) -> List[str]:
    """Rewrites the file with every image pinned; returns what changed, 'old -> new'."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    changed = []
    for number, ref in images(path):
        if skip.match(ref):
            continue  # the pipeline image the user builds (make image): pinned by its own registry's digest
        name = ref.split("@")[0]
        pinned = f"{name}@{resolve(name, registry_urls)}"
        if pinned != ref:
            match = IMAGE_LINE.match(lines[number].rstrip("\n"))
            lines[number] = f"{match['lead']}{pinned}{match['rest']}\n"
            changed.append(f"{ref} -> {pinned}")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return changed


def unpinned(paths) -> List[str]:
    return [f"{os.path.relpath(path, ROOT)}:{number + 1}: {ref}" for path in paths
            for number, ref in images(path) if split_reference(ref)[3] is None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say which images are not pinned (exit 1)")
    parser.add_argument("--registry-url", action="append", default=[], metavar="HOST=URL",
                        help="where a registry answers, e.g. a mirror (default https://HOST)")
    parser.add_argument("files", nargs="*", help=f"default: {', '.join(FILES)}")
    args = parser.parse_args(argv)
    paths = [os.path.join(ROOT, f) for f in args.files or FILES]
    if args.check:
        left = unpinned(paths)
        for line in left:
            print(f"not pinned by digest: {line}")
        return 1 if left else 0
    urls = dict(entry.split("=", 1) for entry in args.registry_url)
    try:
        for path in paths:
            for change in pin_file(path, urls):
                print(f"{os.path.relpath(path, ROOT)}: {change}")
    except (PinError, OSError) as error:
        print(f"pin_images: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
