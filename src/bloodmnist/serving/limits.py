"""Request limits and the middleware that enforces the body size before anything is parsed.

The whole body is read into memory (never to disk) up to `max_request_bytes`; a longer body,
or a Content-Length above it, is answered 413 without reading further.
"""

from __future__ import annotations

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

    def describe(self) -> dict:
        return asdict(self)


def is_image_type(content_type: str | None) -> bool:
    ctype = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    return any(ctype.startswith(t) for t in IMAGE_TYPES)


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """ASGI middleware: buffer request bodies up to `limit` bytes, 413 above it."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

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
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_json(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # the client's disconnect, if it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)
