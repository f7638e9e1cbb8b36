"""A scriptable HTTP server on 127.0.0.1 for download tests (real sockets, no mocks).

Each path gets a body and a script: one behaviour per request, the last one repeating. E.g.
``server.serve("/f.npz", data, [STATUS_503, OK])`` answers 503 once, then the bytes.
Requests are counted per path (query strings ignored). Range requests (``bytes=N-``) are
answered with 206 and the bytes from N, as Zenodo does (416 when N is past the end), unless
``honour_ranges`` is off; each request's start is recorded in ``range_starts`` (0 without
Range). Every answer carries a strong ETag of the path's current body, and a Range whose
``If-Range`` names another one gets the whole body (200), as RFC 9110 says; the If-Range sent
(or None) is recorded in ``if_ranges``. The behaviours then apply to the bytes being sent.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import socket
import struct
import threading
from collections import Counter, defaultdict
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

OK = "ok"  # the full body
STATUS_503 = "503"  # 503 Service Unavailable
TRUNCATE = "truncate"  # full Content-Length, half the body, then a clean close
WRONG = "wrong"  # other bytes of the same length
RESET = "reset"  # half the body, then a TCP reset (RST)
STALL = "stall"  # headers and half the body, then silence for `stall_seconds`
BAD_RANGE = "badrange"  # a Range request answered 206 with the whole file (Content-Range 0-)
GZIP = "gzip"  # gzip-encoded whatever Accept-Encoding says; a Range counts encoded bytes
BEHAVIOURS = (OK, STATUS_503, TRUNCATE, WRONG, RESET, STALL, BAD_RANGE, GZIP)
_RANGE = re.compile(r"bytes=(\d+)-$")


class _Handler(BaseHTTPRequestHandler):
    server: TestHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = urlsplit(self.path).path
        behaviour, body = self.server.next_behaviour(path)
        if behaviour is None:
            self.send_error(404)
            return
        if behaviour == STATUS_503:
            self.send_error(503)
            return
        match = _RANGE.match(self.headers.get("Range", ""))
        start = int(match.group(1)) if match and self.server.honour_ranges else 0
        etag = f'"{hashlib.md5(body).hexdigest()[:16]}"'
        if_range = self.headers.get("If-Range")
        self.server.if_ranges[path].append(if_range)
        if if_range is not None and if_range != etag:  # changed since: the whole body
            start = 0
        self.server.range_starts[path].append(start)
        self.server.accept_encodings[path].append(self.headers.get("Accept-Encoding"))
        if behaviour == GZIP:  # as a server with pre-compressed files (gzip_static) may
            body = gzip.compress(body, mtime=0)
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if behaviour == WRONG:
            body = bytes(b ^ 0xFF for b in body)
        if start and behaviour == BAD_RANGE:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
        elif start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        if behaviour == GZIP:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("ETag", etag)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if behaviour in (OK, WRONG, BAD_RANGE, GZIP):
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        if behaviour == STALL:
            # Wakes early when the server stops, so teardown never waits for the full stall.
            self.server.stopping.wait(self.server.stall_seconds)
        elif behaviour == RESET:
            # Linger 0 makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep test output clean


class TestHTTPServer(ThreadingHTTPServer):
    """Threaded server on an ephemeral port; use as a context manager."""

    daemon_threads = True
    __test__ = False  # not a pytest test class

    def __init__(self, stall_seconds: float = 30.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stall_seconds = stall_seconds
        self.stopping = threading.Event()
        self.counts: Counter[str] = Counter()
        self.honour_ranges = True
        self.range_starts: defaultdict[str, list[int]] = defaultdict(list)
        self.accept_encodings: defaultdict[str, list[str | None]] = defaultdict(list)
        self.if_ranges: defaultdict[str, list[str | None]] = defaultdict(list)
        self._routes: dict[str, tuple[bytes, list[str]]] = {}
        self._lock = threading.Lock()
        # A short poll interval keeps shutdown (and so each test's teardown) fast.
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def serve(self, path: str, body: bytes, script: Sequence[str] = (OK,)) -> str:
        """Register ``path``; returns its full URL."""
        unknown = set(script) - set(BEHAVIOURS)
        if unknown or not script:
            raise ValueError(f"bad script {script!r}")
        with self._lock:
            self._routes[path] = (body, list(script))
        return self.url(path)

    def next_behaviour(self, path: str) -> tuple[str | None, bytes]:
        with self._lock:
            self.counts[path] += 1
            if path not in self._routes:
                return None, b""
            body, script = self._routes[path]
            return (script.pop(0) if len(script) > 1 else script[0]), body

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # resets and client timeouts are intended here

    def __enter__(self) -> TestHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def closed_port_url(path: str = "/") -> str:
    """A URL on 127.0.0.1 where nothing listens (port bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
