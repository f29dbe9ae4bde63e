"""The node's disk queue: a received image is acknowledged only once it is here, it stays until it is
answered (or refused), and the queue survives a restart.

    <root>/pending/<receipt time ns>-<key>.dcm   the received file, as the sender sent it (mode 0600)
    <root>/pending/<receipt time ns>-<key>.json  who sent it (calling AE title, address): no identifier
    <root>/answered.txt                          '<time> <key>' per line: the images answered, for duplicates
    <root>/incoming/                             files being written; emptied at start (never acknowledged)

The key is the SHA-256 of the SOP Instance UID (`uid_key`): the file names, the audit and the logs name an
image by it, never by the UID itself. Bounded by a number of files and of bytes: `put` answers FULL past
either, which the node sends back as DICOM's out-of-resources status. The folders are the owner's only
(0700), the files 0600: they hold patient images.
"""
import dataclasses
import hashlib
import json
import os
import threading
import time
from typing import Dict, List, Optional

QUEUED, DUPLICATE, FULL = "queued", "duplicate", "full"
_KEY_HEX = 32


def uid_key(sop_instance_uid: str) -> str:
    """The name the node gives an image: a hash of its SOP Instance UID (the UID itself is never written)."""
    return hashlib.sha256(sop_instance_uid.strip().encode("ascii", "replace")).hexdigest()[:_KEY_HEX]


@dataclasses.dataclass(frozen=True)
class Item:
    key: str
    path: str  # the received file
    size: int
    sender: Dict[str, str]  # calling_ae, address
    received_ns: int = 0  # when it was written to the queue (time.time_ns())

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


class DiskQueue:
    def __init__(self, root: str, max_items: int, max_bytes: int, retention_s: float,
                 clock=time.time):
        self.root, self.max_items, self.max_bytes, self.retention_s, self._clock = \
            root, max_items, max_bytes, retention_s, clock
        self._pending_dir = os.path.join(root, "pending")
        self._incoming_dir = os.path.join(root, "incoming")
        self._answered_path = os.path.join(root, "answered.txt")
        for folder in (root, self._pending_dir, self._incoming_dir):
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
        for name in os.listdir(self._incoming_dir):  # a write a kill interrupted: never acknowledged
            os.unlink(os.path.join(self._incoming_dir, name))
        self._lock = threading.Condition()
        self._pending: Dict[str, Item] = {}
        for name in sorted(os.listdir(self._pending_dir)):
            if name.endswith(".dcm"):
                item = self._load(name)
                self._pending[item.key] = item
            elif name.endswith(".json") and not os.path.exists(os.path.join(self._pending_dir, name[:-5] + ".dcm")):
                os.unlink(os.path.join(self._pending_dir, name))  # its image was answered, then the kill
        self._answered = self._load_answered()
        self._bytes = sum(item.size for item in self._pending.values())
        self._reserved_bytes = 0
        self._reserved = set()
        self._taken = set()

    # -- the receiving side ------------------------------------------------------------------------
    def put(self, key: str, data: bytes, sender: Dict[str, str]) -> str:
        """QUEUED once the file is on disk (fsync'd); DUPLICATE if this image is waiting or was answered;
        FULL if it would pass the queue's bounds."""
        with self._lock:
            if key in self._pending or key in self._answered or key in self._reserved:
                return DUPLICATE
            if (len(self._pending) + len(self._reserved) >= self.max_items
                    or self._bytes + self._reserved_bytes + len(data) > self.max_bytes):
                return FULL
            self._reserved.add(key)
            self._reserved_bytes += len(data)
        try:
            received_ns = time.time_ns()
            stem = f"{received_ns:020d}-{key}"
            _write_private(os.path.join(self._pending_dir, stem + ".json"), json.dumps(sender).encode())
            incoming = os.path.join(self._incoming_dir, stem + ".dcm")
            _write_private(incoming, data)
            path = os.path.join(self._pending_dir, stem + ".dcm")
            os.rename(incoming, path)
            _fsync_dir(self._pending_dir)
        finally:
            with self._lock:
                self._reserved.discard(key)
                self._reserved_bytes -= len(data)
        with self._lock:
            self._pending[key] = Item(key, path, len(data), dict(sender), received_ns)
            self._bytes += len(data)
            self._lock.notify_all()
        return QUEUED

    # -- the answering side ------------------------------------------------------------------------
    def take(self, timeout_s: float) -> Optional[Item]:
        """The oldest waiting image not being answered, or None after timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                for key, item in self._pending.items():  # insertion order: receipt order
                    if key not in self._taken:
                        self._taken.add(key)
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)

    def release(self, item: Item) -> None:
        """Not answered this time (a peer is down): waiting again, first in line."""
        with self._lock:
            self._taken.discard(item.key)
            self._lock.notify_all()

    def answered(self, item: Item) -> None:
        """Answered: remembered (for duplicates), then its files deleted."""
        with open(self._answered_path, "a") as f:
            f.write(f"{self._clock():.3f} {item.key}\n")
            f.flush()
            os.fsync(f.fileno())
        with self._lock:
            self._answered[item.key] = self._clock()
        self._remove(item)

    def dropped(self, item: Item) -> None:
        """Refused or failed for good (the audit says why): its files deleted, not remembered."""
        self._remove(item)

    def pending(self) -> List[Item]:
        with self._lock:
            return list(self._pending.values())

    def answered_count(self) -> int:
        with self._lock:
            return len(self._answered)

    # -- inside ------------------------------------------------------------------------------------
    def _remove(self, item: Item) -> None:
        for path in (item.path, item.path[:-4] + ".json"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        with self._lock:
            if self._pending.pop(item.key, None) is not None:
                self._bytes -= item.size
            self._taken.discard(item.key)

    def _load(self, name: str) -> Item:
        path = os.path.join(self._pending_dir, name)
        stamp, key = name[:-4].split("-", 1)
        try:
            with open(path[:-4] + ".json") as f:
                sender = json.load(f)
        except (OSError, ValueError):
            sender = {"calling_ae": "", "address": ""}
        return Item(key, path, os.path.getsize(path), sender, int(stamp))

    def _load_answered(self) -> Dict[str, float]:
        """The answered keys within the retention; the file rewritten without the older ones."""
        answered: Dict[str, float] = {}
        if os.path.exists(self._answered_path):
            oldest = self._clock() - self.retention_s
            with open(self._answered_path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and _is_float(parts[0]) and float(parts[0]) >= oldest:
                        answered[parts[1]] = float(parts[0])
        rewritten = "".join(f"{stamp:.3f} {key}\n" for key, stamp in answered.items()).encode()
        _write_private(self._answered_path + ".new", rewritten)
        os.replace(self._answered_path + ".new", self._answered_path)
        return answered


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
