"""Request limits and the middleware that enforces the body size before anything is parsed.

The whole body is read into memory (never to disk) up to `max_request_bytes`; a longer body,
or a Content-Length above it, is answered 413 without reading further, and a body that has not
arrived within `upload_timeout_s` is answered 408.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass

#: Declared part types accepted as images; octet-stream is what curl and many clients send.
IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 32 * 1024 * 1024
    max_files: int = 64
    max_pixels: int = 25_000_000  # per image, read from the header before decoding
    timeout_s: float = 30.0  # per request, decoding + inference + Grad-CAM
    # for the whole body to arrive: a client sending slowly (or stalling) would otherwise hold
    # a connection, and its buffered bytes, for as long as it likes
    upload_timeout_s: float = 30.0

    def describe(self) -> dict:
        return asdict(self)


def is_image_type(content_type: str | None) -> bool:
    ctype = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    return any(ctype.startswith(t) for t in IMAGE_TYPES)


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # the body was not read to its end (413, 408): close, or the client's bytes keep it open
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """ASGI middleware: buffer request bodies up to `limit` bytes, 413 above it; 408 for a body
    that has not arrived within `timeout` seconds."""

    def __init__(self, app, limit: int, timeout: float = 30.0):
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_big = (
            f"request body is larger than the {self.limit} byte limit; send fewer or smaller files"
        )
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_json(send, 413, too_big)
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except asyncio.TimeoutError:
            slow = f"the request body did not arrive within {self.timeout:g} s; send it faster"
            return await _send_json(send, 408, slow + " or fewer files per request")
        if body is None:  # the client left
            return None
        if len(body) > self.limit:
            return await _send_json(send, 413, too_big)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # the client's disconnect, if it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None:
        """The whole body; None if the client disconnected; stops one chunk past the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.limit or not message.get("more_body", False):
                return b"".join(chunks)
