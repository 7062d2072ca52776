"""HTTP plumbing for the REST API: a threaded stdlib HTTP/1.1 server in front of `RestApi`.

Reads request bodies (Content-Length or chunked) within the body limit, answers
protocol errors as TF Serving-style JSON, keeps connections alive, and sends each
answer in one write.

Limits (docs/security.md, "Server"), each a `deeplense serve` flag:

- ``--max-request-bytes``: a body (declared, or summed over chunks) beyond it gets 413;
  chunk-size lines must be plain hexadecimal, so ``-1`` or ``0x10`` get 400, and two
  different Content-Length values, or Content-Length with Transfer-Encoding, get 400.
- ``--read-timeout-seconds``: a connection has that long to deliver each complete request
  (request line, headers and body), counted from when the server starts waiting for it;
  a deadline, not a per-read timeout, so a client sending one byte a second is cut off
  too (408 if it had started a request, a plain close if it was idle).
- ``--max-connections``: connections served at once (one thread each). At the cap, a new
  connection takes the place of the one that has waited longest for its request, if that
  wait is older than `_EVICTION_AGE_S`; otherwise it gets 503. Slow or idle clients
  therefore cannot keep others out for longer than that.
"""

from __future__ import annotations

import io
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from deeplense_tf import __version__
from deeplense_tf.serving.rest_api import RestApi, error_body

log = logging.getLogger("deeplense_tf.serving")

DEFAULT_MAX_REQUEST_BYTES = 32 * 2**20  # 32 MiB: ~400 64x64 images as JSON
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 128
_DRAIN_LIMIT = 64 * 2**20  # an oversized body is read (and dropped) up to this, then cut off
_SOCKET_BUFFER_BYTES = 4 * 2**20
_EVICTION_AGE_S = 0.5  # a connection waiting this long for its request may be evicted at the cap
_MAX_CHUNK_LINE = 1024  # bytes of a chunk-size line, extensions included
_MAX_TRAILER_LINES = 64
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")  # 15 hex digits: beyond any body limit, below 2**63
_DIGITS = re.compile(r"[0-9]{1,19}")


class _BadRequest(Exception):
    """The request cannot be read as HTTP: answered with `status` and closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Connection:
    """One client connection's state, shared by its handler thread and the accept loop."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.waiting_since: float | None = time.monotonic()  # None while a request is being answered
        self.deadline = float("inf")
        self.started = False  # has a byte of the current request arrived?
        self.timed_out = False
        self.evicted = False

    def wait_for_request(self, timeout_s: float) -> None:
        now = time.monotonic()
        self.waiting_since, self.deadline = now, now + timeout_s
        self.started = self.timed_out = False

    def answering(self) -> None:
        self.waiting_since, self.deadline = None, float("inf")

    def evict(self) -> None:
        self.evicted = True
        try:
            # Wakes the handler's blocking recv at once; its thread then ends.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _DeadlineReader(io.RawIOBase):
    """The socket's input, every read bounded by the connection's deadline (not per read)."""

    def __init__(self, conn: _Connection):
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._conn.deadline - time.monotonic()
        if remaining <= 0:
            self._conn.timed_out = True
            raise TimeoutError("read deadline passed")
        self._conn.sock.settimeout(min(remaining, 3600.0))
        try:
            n = self._conn.sock.recv_into(buffer)
        except TimeoutError:
            self._conn.timed_out = True
            raise
        if n:
            self._conn.started = True
        return n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection per thread
    server_version = f"deeplense-serving/{__version__}"
    sys_version = ""
    # Small answers must not wait for the client's delayed ACK (Nagle): ~40 ms each otherwise.
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        self.conn = self.server.connection_of(self.request)
        self.rfile.close()  # the plain file setup() made: ours bounds every read by a deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self.conn), 1 << 16)

    def handle_one_request(self):
        self.conn.wait_for_request(self.server.read_timeout_s)
        # The base class answers a TimeoutError by closing the connection.
        super().handle_one_request()
        if self.conn.timed_out and self.conn.started and not self.conn.evicted:
            # Cut off mid-request: say so; an idle keep-alive connection just closes.
            self._reply(408, error_body(
                f"Request not received within {self.server.read_timeout_s:g} s "
                "(--read-timeout-seconds)"), close=True)

    def do_GET(self):  # noqa: N802 - BaseHTTPRequestHandler's naming
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self):  # noqa: N802
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        try:
            body = self._read_body(self.server.max_request_bytes)
        except _BadRequest as err:
            self._reply(err.status, error_body(err.message), close=True)
            return
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        self.conn.answering()
        status, content_type, payload = self.server.api.respond(
            method, urlsplit(self.path).path, body)
        self._reply(status, payload, content_type=content_type)

    def _read_body(self, limit: int) -> bytes:
        """The request body; `_BadRequest` when it is refused (its answer closes the connection)."""
        codings = [c.strip().lower() for value in self.headers.get_all("Transfer-Encoding", [])
                   for c in value.split(",") if c.strip()]
        lengths = self.headers.get_all("Content-Length", [])
        if codings:
            if codings != ["chunked"]:
                raise _BadRequest(501, f"Transfer-Encoding {', '.join(codings)} is not supported "
                                       "(only chunked)")
            if lengths:
                # RFC 9112 6.3: a sender must not send both; a proxy and this server could
                # disagree on where the body ends (request smuggling).
                raise _BadRequest(400, "Content-Length and Transfer-Encoding: chunked together")
            return self._read_chunked(limit)
        if not lengths:
            return b""
        values = {v.strip() for value in lengths for v in value.split(",")}
        if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
            raise _BadRequest(400, f"Invalid Content-Length header: {', '.join(lengths)!r} "
                                   "(one non-negative decimal length expected)")
        length = int(values.pop())
        if length > limit:
            self._drain(length)
            raise _BadRequest(413, _too_large(length, limit))
        body = self.rfile.read(length)
        if len(body) < length:
            raise ConnectionError("client closed the connection mid-body")
        return body

    def _read_chunked(self, limit: int) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(_MAX_CHUNK_LINE + 1)
            if not line.endswith(b"\n"):
                if len(line) > _MAX_CHUNK_LINE:
                    raise _BadRequest(400, f"Invalid chunk size line: longer than "
                                           f"{_MAX_CHUNK_LINE} bytes")
                raise ConnectionError("client closed the connection mid-body")
            size_text = line.split(b";", 1)[0].strip(b" \t\r\n")
            if not _HEX.fullmatch(size_text):
                raise _BadRequest(400, f"Invalid chunk size line: {line[:64]!r} "
                                       "(hexadecimal digits expected)")
            size = int(size_text, 16)
            if size == 0:
                for _ in range(_MAX_TRAILER_LINES):
                    trailer = self.rfile.readline(_MAX_CHUNK_LINE + 1)
                    if trailer in (b"\r\n", b"\n", b""):
                        return b"".join(chunks)
                raise _BadRequest(400, f"Chunked body has more than {_MAX_TRAILER_LINES} "
                                       "trailer lines")
            total += size
            if total > limit:
                raise _BadRequest(413, _too_large(total, limit))
            data = self.rfile.read(size)
            if len(data) < size:
                raise ConnectionError("client closed the connection mid-body")
            chunks.append(data)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BadRequest(400, "Invalid chunked body: chunk data not followed by CRLF")

    def _drain(self, length: int) -> None:
        # Reading the refused body lets the client finish sending and see our 413
        # instead of a reset; past _DRAIN_LIMIT (or 5 s) we just hang up.
        remaining = min(length, _DRAIN_LIMIT)
        self.conn.deadline = min(self.conn.deadline, time.monotonic() + 5.0)
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
        except (TimeoutError, OSError):
            pass

    def _reply(self, status: int, payload: bytes, close: bool = False,
               content_type: str = "application/json") -> None:
        phrase = self.responses.get(status, ("",))[0]
        lines = [f"{self.protocol_version} {status} {phrase}",
                 f"Server: {self.version_string()}", f"Date: {self.date_time_string()}",
                 f"Content-Type: {content_type}", f"Content-Length: {len(payload)}"]
        if close:
            lines.append("Connection: close")
            self.close_connection = True
        self.log_request(status, len(payload))
        try:
            # Status line, headers and body in one send: split sends of a small answer
            # stall on the client's delayed ACK. A client that stops reading is bounded
            # by the same timeout as one that stops sending.
            self.conn.sock.settimeout(self.server.read_timeout_s)
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        except OSError:
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        """Protocol-level errors (bad request line, huge headers) as JSON, not HTML."""
        short = self.responses.get(code, ("Error",))[0]
        self._reply(code, error_body(message or short), close=True)

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        # log_request calls this for every answer: format only when someone reads it.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)


def _too_large(length: int, limit: int) -> str:
    return (f"Request body of {length} bytes exceeds the limit of {limit} bytes "
            "(--max-request-bytes)")


class RestHTTPServer(ThreadingHTTPServer):
    """`RestApi` over HTTP/1.1, one thread per connection, at most `max_connections` of them."""

    daemon_threads = True
    request_queue_size = 256  # listen backlog; the default 5 drops bursts of connections

    def __init__(self, address, api: RestApi, max_request_bytes: int, *,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api = api
        self.max_request_bytes = int(max_request_bytes)
        self.read_timeout_s = float(read_timeout_s)
        self.max_connections = int(max_connections)
        self._connections: dict[socket.socket, _Connection] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    @property
    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def connection_of(self, sock: socket.socket) -> _Connection:
        with self._connections_lock:
            return self._connections.get(sock) or _Connection(sock)

    def process_request(self, request, client_address):
        with self._connections_lock:
            if len(self._connections) >= self.max_connections:
                victim = self._eviction_candidate()
                if victim is None:
                    self._refuse(request)
                    return
                del self._connections[victim.sock]
                victim.evict()
            self._connections[request] = _Connection(request)
        try:
            # A batch of images is megabytes of JSON; a receive buffer that holds a whole
            # request saves the dozens of sender / receiver wake-ups a default 128 KiB one
            # costs (each a scheduling delay on a busy machine).
            request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER_BYTES)
        except OSError:
            pass
        super().process_request(request, client_address)

    def _eviction_candidate(self) -> _Connection | None:
        now = time.monotonic()
        waiting = [c for c in self._connections.values()
                   if c.waiting_since is not None and now - c.waiting_since >= _EVICTION_AGE_S]
        return min(waiting, key=lambda c: c.waiting_since) if waiting else None

    def _refuse(self, request) -> None:
        payload = error_body(f"Too many connections: {self.max_connections} are open and all "
                             "busy (--max-connections); retry shortly")
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
        try:
            # From the accept loop: never block it on a client that does not read.
            request.setblocking(False)
            request.send(head.encode("latin-1") + payload)
        except OSError:
            pass
        self.shutdown_request(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)

    def handle_error(self, request, client_address):
        log.debug("connection from %s ended with an error", client_address, exc_info=True)
