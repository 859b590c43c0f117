"""An ASGI guard that refuses oversized request bodies before Django reads them.

Django's ASGI handler reads the whole body (into a temporary file) before any limit of its own
applies, so a 400 MB form POST to /login/ would still be read in full. Here the body is
counted as it arrives: ``Content-Length`` above the limit is answered 413 at once, and a
streamed body is cut off at the limit. Only the upload endpoints accept a body as large as an
upload (RECOTEM_MAX_UPLOAD_MB, multipart only); everything else gets Django's
DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) plus room for multipart framing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Where a file upload is a legitimate body (API and UI upload doors).
UPLOAD_PATHS = re.compile(r"^/api/v1/(training_data|item_meta_data)/$|^/projects/\d+/data/upload/")
_FRAMING = 64 * 1024  # multipart boundaries and part headers around the largest file


class _TooLarge(Exception):
    pass


def body_limit(scope: Scope, *, upload_bytes: int, other_bytes: int) -> int:
    headers = dict(scope.get("headers") or [])
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type == b"multipart/form-data" and UPLOAD_PATHS.match(scope.get("path", "")):
        return upload_bytes + _FRAMING
    return other_bytes + _FRAMING


def limit_request_bodies(app: App, *, upload_bytes: int, other_bytes: int) -> App:
    """Wrap ``app`` (HTTP only) so no request body larger than its limit reaches it."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        limit = body_limit(scope, upload_bytes=upload_bytes, other_bytes=other_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _answer(scope, send, 400, "The Content-Length header is not a number.")
                return
            if length > limit:
                await _answer(scope, send, 413, _too_large(limit))
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _answer(scope, send, 413, _too_large(limit))

    return guarded


def _too_large(limit: int) -> str:
    return (
        f"The request body is larger than {limit / 2**20:.1f} MB, the limit for this address "
        "(uploads: RECOTEM_MAX_UPLOAD_MB; other requests: 2.5 MB)."
    )


async def _answer(scope: Scope, send: Send, status: int, message: str) -> None:
    if scope.get("path", "").startswith("/api/"):
        body = json.dumps({"detail": message}).encode()
        content_type = b"application/json"
    else:
        body = message.encode()
        content_type = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
