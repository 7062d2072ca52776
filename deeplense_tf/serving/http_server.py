"""HTTP plumbing for the REST API: a threaded stdlib HTTP/1.1 server in front of `RestApi`.

Reads request bodies (Content-Length or chunked) within the body limit, answers
protocol errors as TF Serving-style JSON, keeps connections alive, and sends each
answer in one write.
"""

from __future__ import annotations

import logging
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from deeplense_tf import __version__
from deeplense_tf.serving.rest_api import RestApi, error_body

log = logging.getLogger("deeplense_tf.serving")

DEFAULT_MAX_REQUEST_BYTES = 32 * 2**20  # 32 MiB: ~400 64x64 images as JSON
_DRAIN_LIMIT = 64 * 2**20  # an oversized body is read (and dropped) up to this, then cut off


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection per thread
    server_version = f"deeplense-serving/{__version__}"
    sys_version = ""
    timeout = 120.0  # seconds an idle keep-alive connection is kept
    # Small answers must not wait for the client's delayed ACK (Nagle): ~40 ms each otherwise.
    disable_nagle_algorithm = True

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
            body, refusal = self._read_body(self.server.max_request_bytes)
        except (TimeoutError, ConnectionError, ValueError):
            self.close_connection = True
            return
        if refusal is not None:
            self._reply(*refusal, close=True)
            return
        status, payload = self.server.api.handle(method, urlsplit(self.path).path, body)
        self._reply(status, payload)

    def _read_body(self, limit: int):
        """(body, None), or (None, (status, payload)) when the body is refused."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b"", None
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            return None, (400, error_body(f"Invalid Content-Length header: {length_text!r}"))
        if length > limit:
            self._drain(length)
            return None, (413, _too_large(length, limit))
        body = self.rfile.read(length)
        if len(body) < length:
            raise ConnectionError("client closed the connection mid-body")
        return body, None

    def _read_chunked(self, limit: int):
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks), None
            total += size
            if total > limit:
                return None, (413, _too_large(total, limit))
            chunks.append(self.rfile.read(size))
            self.rfile.readline(16)

    def _drain(self, length: int) -> None:
        # Reading the refused body lets the client finish sending and see our 413
        # instead of a reset; past _DRAIN_LIMIT we just hang up.
        remaining = min(length, _DRAIN_LIMIT)
        self.connection.settimeout(5.0)
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
        except (TimeoutError, OSError):
            pass

    def _reply(self, status: int, payload: bytes, close: bool = False) -> None:
        phrase = self.responses.get(status, ("",))[0]
        lines = [f"{self.protocol_version} {status} {phrase}",
                 f"Server: {self.version_string()}", f"Date: {self.date_time_string()}",
                 "Content-Type: application/json", f"Content-Length: {len(payload)}"]
        if close:
            lines.append("Connection: close")
            self.close_connection = True
        self.log_request(status, len(payload))
        try:
            # Status line, headers and body in one send: split sends of a small answer
            # stall on the client's delayed ACK.
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        """Protocol-level errors (bad request line, huge headers) as JSON, not HTML."""
        short = self.responses.get(code, ("Error",))[0]
        self._reply(code, error_body(message or short), close=True)

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)


def _too_large(length: int, limit: int) -> bytes:
    return error_body(f"Request body of {length} bytes exceeds the limit of {limit} bytes "
                      "(--max-request-bytes)")


class RestHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog; the default 5 drops bursts of connections

    def __init__(self, address, api: RestApi, max_request_bytes: int):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api = api
        self.max_request_bytes = int(max_request_bytes)
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


