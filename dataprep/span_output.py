"""One writer per span, and a span published whole or not at all.

- A lock file per span (`.span-N.lock`, created exclusively) names its holder; a second run on the
  same span refuses, naming it.
- Each run writes into a staging folder of its own; nothing is published until the staged manifest
  accounts for every file.
- Local publishing moves the old span aside, renames the new one in, then deletes the old one: a
  crash leaves the old span or the new one. If it stopped between the two renames, the next run on
  that span first puts the old span back.
- Remote folders (gs://) have no rename: the shards are copied into `span-N/` and `manifest.json`
  is copied last, as the completion marker; the pipeline refuses a span without it
  (components/validation_gate.py). The lock there is advisory (checked, then written).
`--overwrite` is honoured when publishing: a span that appeared meanwhile is not replaced without it.
"""
import contextlib
import datetime
import json
import os
import shutil
import socket
import sys
import uuid
from typing import Iterator

from apache_beam.io.filesystems import FileSystems

from cxr.contract import MANIFEST
from cxr.dataprep.listing import is_local


class SpanOutputError(RuntimeError):
    """The span cannot be written or published."""


@contextlib.contextmanager
def span_lock(out_dir: str, span: int) -> Iterator[str]:
    path = f"{out_dir.rstrip('/')}/.span-{span}.lock"
    holder = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    _take(path, json.dumps(holder))
    try:
        yield path
    finally:
        FileSystems.delete([path])


def _take(path: str, holder: str) -> None:
    if not is_local(path):
        if FileSystems.exists(path):
            raise SpanOutputError(_held(path, _holder(path)))
        with FileSystems.create(path) as f:
            f.write(holder.encode())
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)  # a file in its place raises too
    except OSError as error:
        raise SpanOutputError(f"cannot write in {os.path.dirname(path)}: {error.strerror}") from None
    try:
        _create_exclusively(path, holder)
    except FileExistsError:
        previous = _holder(path)
        if not _gone(previous):
            raise SpanOutputError(_held(path, previous)) from None
        print(f"build-tfrecords: taking over {path} from process {previous['pid']}, which is gone", file=sys.stderr)
        os.remove(path)
        _create_exclusively(path, holder)


def _create_exclusively(path: str, holder: str) -> None:
    with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), "w") as f:
        f.write(holder)


def _holder(path: str) -> dict:
    try:
        with FileSystems.open(path) as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError):
        return {}


def _gone(holder: dict) -> bool:
    """Whether the lock's holder ran on this machine and has ended (killed, crashed)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _held(path: str, holder: dict) -> str:
    who = (f"process {holder['pid']} on {holder['host']} since {holder['started']}" if holder.keys() >= {
        "pid", "host", "started"} else "another run")
    return (f"the span is being written by {who} (lock {path}); wait for it to finish, or remove the lock "
            f"if that process is gone")


def staging_dir(out_dir: str, span: int) -> str:
    """A folder of this run's own, outside the `span-N` pattern ExampleGen reads."""
    name = f".span-{span}.partial-{uuid.uuid4().hex[:8]}"
    path = f"{out_dir.rstrip('/')}/{name}" if is_local(out_dir) else f"{out_dir.rstrip('/')}/.staging/{name}"
    if is_local(path):
        os.makedirs(path)
    return path


def discard(staging: str) -> None:
    if is_local(staging):
        shutil.rmtree(staging, ignore_errors=True)
    elif FileSystems.exists(staging):
        FileSystems.delete([staging])


def restore_interrupted_publish(span_dir: str) -> str:
    """Puts back an old span that a crashed publish left aside; returns what it did, or ''."""
    if not is_local(span_dir) or os.path.exists(span_dir):
        return ""
    parent, name = os.path.split(span_dir)
    aside = sorted(entry for entry in os.listdir(parent) if entry.startswith(f".{name}.old-")) if os.path.isdir(
        parent) else []
    if not aside:
        return ""
    os.rename(os.path.join(parent, aside[-1]), span_dir)
    return f"restored {span_dir} from {aside[-1]}, left aside by a publish that did not finish"


def publish(staging: str, span_dir: str, overwrite: bool) -> None:
    exists = FileSystems.exists(span_dir)
    if exists and not overwrite:
        raise SpanOutputError(f"{span_dir} already exists; pass --overwrite to replace it or --span N for a new span")
    if is_local(span_dir):
        _publish_local(staging, span_dir, exists)
    else:
        _publish_remote(staging, span_dir, exists)


def _publish_local(staging: str, span_dir: str, exists: bool) -> None:
    parent, name = os.path.split(span_dir)
    aside = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
    if exists:
        os.rename(span_dir, aside)
    os.rename(staging, span_dir)
    if exists:
        shutil.rmtree(aside)


def _publish_remote(staging: str, span_dir: str, exists: bool) -> None:
    if exists:
        FileSystems.delete([span_dir])
    staged = [metadata.path for metadata in FileSystems.match([f"{staging}/*"])[0].metadata_list]
    shards = [path for path in staged if os.path.basename(path) != MANIFEST]
    FileSystems.rename(shards, [f"{span_dir}/{os.path.basename(path)}" for path in shards])
    FileSystems.rename([f"{staging}/{MANIFEST}"], [f"{span_dir}/{MANIFEST}"])  # last: the span is complete
    FileSystems.delete([staging])
