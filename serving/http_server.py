"""The development server's HTTP/1.1 layer, which slow, stalled or greedy clients cannot hold.

asyncio reads every connection, with a deadline for a request's headers (and for the next request
on a kept-alive connection) and one for its body, a cap on header and body sizes and on open
connections. Only a complete request reaches the bounded pool of workers that run the model, so a
hundred stalled connections cost a hundred idle coroutines, not the workers. One audit line (JSON,
logger cxr.audit) per request; protocol errors are answered with a status and a one-line reason, and
logged. With TLS files (serving/tls.py) it speaks HTTPS, and mutual TLS with a client CA.
"""
import asyncio
import dataclasses
import errno
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Optional, Tuple

from cxr.serving.rest_json import error_body
from cxr.serving.tls import ReloadingContext, TlsFiles, caller

log = logging.getLogger("cxr.serve")
audit = logging.getLogger("cxr.audit")

# handler(method, path, body) -> (HTTP status, JSON body) or (status, JSON body, the body it passed on,
# e.g. with DICOM files converted); runs on a worker thread.
Handler = Callable[[str, str, bytes], Tuple]
# answered(method, path, body, status, answer): on the event loop once the answer is sent; must be quick.
Answered = Callable[[str, str, bytes, int, bytes], None]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 408: "Request Timeout", 411: "Length Required",
            413: "Content Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    max_body_bytes: int
    header_timeout_s: float = 10.0  # a request's headers; also how long an idle kept-alive connection stays
    body_timeout_s: float = 60.0  # a request's body, from the end of its headers
    max_header_bytes: int = 64 * 1024
    workers: int = 4  # requests run at once: each may decode a request's images
    max_connections: int = 512
    # Request bodies held at once, read or being read, over all connections (one always fits): 512
    # connections of 32 MiB bodies would otherwise be 16 GiB. Past it a request is answered 503.
    max_buffered_bytes: int = 256 << 20


async def _linger(reader: asyncio.StreamReader, unread: int) -> None:
    """Reads and discards up to `unread` bytes, a chunk at a time, for at most LINGER_S (LINGER_READ_S a read)."""
    deadline = time.monotonic() + LINGER_S
    while unread > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            chunk = await asyncio.wait_for(reader.read(min(unread, LINGER_CHUNK)), min(left, LINGER_READ_S))
        except (asyncio.TimeoutError, ConnectionError):
            return
        if not chunk:
            return
        unread -= len(chunk)


class _Refused(Exception):
    """A request answered with `status` before it reaches the handler; the connection then closes."""

    def __init__(self, status: int, message: str, unread: int = 0):
        super().__init__(message)
        self.status, self.message = status, message
        self.unread = unread  # body bytes the client is still sending: read and discarded before closing


# A refused body is read and thrown away (in chunks, for at most LINGER_S in all and LINGER_READ_S a read)
# after the answer is written, as nginx's lingering close does (its lingering_time and lingering_timeout
# defaults): a client still sending would otherwise get a reset (a broken pipe) instead of the answer, and
# could not tell "busy, try again" (503) from a server gone. Measured: with 5 s in all, 16 of 24 refused
# clients sending 32 MiB at once still saw a broken pipe (bench/proxy_memory.py); with 30 s, none.
LINGER_S = 30.0
LINGER_READ_S = 5.0
LINGER_CHUNK = 64 << 10


@dataclasses.dataclass
class _Request:
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes = b""
    keep_alive: bool = True


class HttpServer:
    """`start()` binds (naming a busy port) and serves on a thread of its own until `stop()`."""

    def __init__(self, handler: Handler, host: str, port: int, limits: HttpLimits, answered: Optional[Answered] = None,
                 tls: Optional[TlsFiles] = None):
        self.handler, self.limits, self.answered = handler, limits, answered
        self.tls = ReloadingContext(tls) if tls is not None else None
        self._socket = _bound_socket(host, port)
        self.server_address = self._socket.getsockname()[:2]
        self._pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="rest-worker")
        self._loop = asyncio.new_event_loop()
        self._open = 0
        self._busy = 0  # requests read and not yet answered
        self._buffered = 0  # bytes of request bodies held (HttpLimits.max_buffered_bytes)
        self._server = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rest-api", daemon=True)

    def start(self) -> "HttpServer":
        self.thread.start()
        self._ready.wait()
        return self

    def stop(self, drain_s: float = 0.0) -> None:
        """Stops; with drain_s, first stops taking connections and lets the requests under way finish, for at
        most that long (Kubernetes sends SIGTERM, then SIGKILL after the pod's grace period)."""
        if drain_s > 0 and self._loop.is_running() and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            deadline = time.monotonic() + drain_s
            while self._busy and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._busy:
                log.warning("stopping with %d requests still under way after %g s", self._busy, drain_s)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self.thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._socket.close()
        if self.tls is not None:
            self.tls.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        tls = {"ssl": self.tls.listening, "ssl_handshake_timeout": self.limits.header_timeout_s} if self.tls else {}
        server = self._server = self._loop.run_until_complete(asyncio.start_server(
            self._connection, sock=self._socket, limit=self.limits.max_header_bytes, **tls))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            connections = asyncio.all_tasks(self._loop)
            for connection in connections:
                connection.cancel()
            self._loop.run_until_complete(asyncio.gather(*connections, return_exceptions=True))
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "{}:{}".format(*writer.get_extra_info("peername")[:2])
        who = caller(writer.get_extra_info("peercert")) if self.tls else "-"
        self._open += 1
        try:
            if self._open > self.limits.max_connections:
                await self._write(writer, peer, "-", 503, error_body(
                    f"server busy: {self.limits.max_connections} connections open"), keep_alive=False, started=None)
                return
            while await self._serve_one(reader, writer, peer, who):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("%s closed the connection", peer)
        except Exception:  # a bug here must not take the server down
            log.exception("%s: error on the connection", peer)
        finally:
            self._open -= 1
            writer.close()

    async def _serve_one(self, reader, writer, peer, who="-") -> bool:
        """Answers one request; whether the connection stays open for another."""
        started = time.monotonic()
        try:
            request = await self._read_request(reader)
        except _Refused as refused:
            log.warning("%s: %s", peer, refused.message)
            body = error_body(refused.message)
            await self._write(writer, peer, "-", refused.status, body, False, started)
            _audit(who, peer, "-", "-", _request_id({}), refused.status, 0, len(body), started)
            await _linger(reader, refused.unread)
            return False
        if request is None:
            return False  # closed between requests, or idle past the header timeout
        self._busy += 1
        request_id = _request_id(request.headers)
        try:
            status, body, handled = await self._loop.run_in_executor(self._pool, self._handle, request)
            keep_alive = request.keep_alive and not (self._server is not None and not self._server.is_serving())
            await self._write(writer, peer, f"{request.method} {request.path}", status, body, keep_alive, started,
                              request_id)
            _audit(who, peer, request.method, request.path, request_id, status, len(request.body), len(body), started)
        finally:
            self._busy -= 1
            self._buffered -= len(request.body)
        if self.answered is not None:
            try:
                self.answered(request.method, request.path, handled, status, body)
            except Exception:  # what follows an answer must not take the connection down
                log.exception("%s %s: after answering", request.method, request.path)
        return keep_alive

    def _handle(self, request: _Request) -> Tuple[int, bytes, bytes]:
        """(status, answer, the request body as handled: `answered` sees the body the handler passed on)."""
        try:
            answer = self.handler(request.method, request.path, request.body)
        except Exception:  # the handler answers its own errors; this is a bug: logged, not shown to the client
            log.exception("%s %s failed", request.method, request.path)
            return 500, error_body("internal error; the server's log has the details"), request.body
        return answer if len(answer) == 3 else (answer[0], answer[1], request.body)

    async def _read_request(self, reader: asyncio.StreamReader) -> Optional[_Request]:
        """The next request, or None once the client has closed or left the connection idle."""
        try:
            first = await asyncio.wait_for(reader.readexactly(1), self.limits.header_timeout_s)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError):
            return None
        try:
            head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.limits.header_timeout_s)
        except asyncio.TimeoutError:
            raise _Refused(408, f"request headers not received within {self.limits.header_timeout_s:g} s") from None
        except asyncio.IncompleteReadError:
            raise _Refused(400, "connection closed in the middle of the request headers") from None
        except asyncio.LimitOverrunError:
            raise _Refused(431, f"request headers over {self.limits.max_header_bytes} bytes") from None
        request = _parse_head(head)
        request.body = await self._read_body(reader, request)
        return request

    async def _read_body(self, reader: asyncio.StreamReader, request: _Request) -> bytes:
        if "transfer-encoding" in request.headers:
            raise _Refused(501, "chunked request bodies are not supported; send a Content-Length")
        length = request.headers.get("content-length")
        if length is None:
            if request.method == "POST":
                raise _Refused(411, "a request body needs a Content-Length header")
            return b""
        if not length.isdigit():
            raise _Refused(400, f"Content-Length {length!r} is not a number of bytes")
        if int(length) > self.limits.max_body_bytes:
            raise _Refused(413, f"request body of {length} bytes is over the server's limit of "
                                f"{self.limits.max_body_bytes} bytes (--max_body_bytes)", unread=int(length))
        size = int(length)
        if self._buffered and self._buffered + size > self.limits.max_buffered_bytes:
            raise _Refused(503, f"server busy: {self._buffered} bytes of request bodies held already "
                                f"(limit {self.limits.max_buffered_bytes}); try again", unread=size)
        self._buffered += size
        try:
            return await asyncio.wait_for(reader.readexactly(size), self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            self._buffered -= size
            raise _Refused(408, f"request body of {length} bytes not received within "
                                f"{self.limits.body_timeout_s:g} s") from None
        except BaseException:
            self._buffered -= size
            raise

    async def _write(self, writer, peer, request_line, status, body, keep_alive, started, request_id=None) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Content-Type: application/json",
                f"Content-Length: {len(body)}"] + ([] if keep_alive else ["Connection: close"])
        if request_id:
            head.append(f"X-Request-Id: {request_id}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        await asyncio.wait_for(writer.drain(), self.limits.body_timeout_s)


_MODEL_PATH = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _request_id(headers: Dict[str, str]) -> str:
    """The caller's X-Request-Id when it is a plain token, else a new one: the audit line and the answer carry it."""
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]


def _audit(who: str, peer: str, method: str, path: str, request_id: str, status: int, request_bytes: int,
           answer_bytes: int, started: float) -> None:
    """One line per request (HIPAA 45 CFR 164.312(b), audit controls): when, who (the client certificate's
    name), from where, which model and version asked for, the request id, the outcome and the sizes. Never
    an image, a body or a query string."""
    found = _MODEL_PATH.match(path.split("?", 1)[0]) if path != "-" else None
    model, version, label = found.groups() if found else ("-", None, None)
    audit.info(json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "caller": who, "peer": peer.rsplit(":", 1)[0],
        "request_id": request_id, "method": method, "model": model,
        "version": version or (f"label:{label}" if label else "latest"), "status": status,
        "request_bytes": request_bytes, "answer_bytes": answer_bytes,
        "ms": round((time.monotonic() - started) * 1000, 1)}, sort_keys=True))


def _parse_head(head: bytes) -> _Request:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(400, f"malformed request line {lines[0][:100]!r}")
    method, path, version = parts
    headers = {}
    for line in filter(None, lines[1:]):
        name, separator, value = line.partition(":")
        if not separator or not name.strip():
            raise _Refused(400, f"malformed header line {line[:100]!r}")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return _Request(method.upper(), path, headers, keep_alive=keep_alive)


def _bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}"
                      + (" (another server holds the port; pick another with --rest_api_port)"
                         if error.errno == errno.EADDRINUSE else "")) from None
    sock.listen(128)
    return sock


def wait_until_stopped(thread: threading.Thread) -> None:
    """Waits on a server's thread until Ctrl-C or SIGTERM (how Kubernetes stops a pod's containers), then
    returns, so that the caller stops cleanly: the request log writes what it holds and closes its file
    (on gs://, a file is uploaded only when it closes)."""
    def terminated(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminated)
    try:
        thread.join()
    except KeyboardInterrupt:
        pass


def write_address(path: str, url: str) -> None:
    """The server's URL in a file, whole or not at all: whoever started it on port 0 polls for the file
    and must never read half a URL."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(url + "\n")
    os.replace(partial, path)
