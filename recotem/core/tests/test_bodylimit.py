"""The ASGI guard refuses oversized bodies before the app reads them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from recotem.bodylimit import limit_request_bodies


def _run(path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """(status, bytes the app read) for one request through the guard."""
    read = [0]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            read[0] += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guarded = limit_request_bodies(app, upload_bytes=10_000_000, other_bytes=1_000_000)
    sent: list[dict[str, Any]] = []
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "headers": headers, "method": "POST"}
    asyncio.run(guarded(scope, receive, send))
    return sent[0]["status"], read[0]


MULTIPART = (b"content-type", b"multipart/form-data; boundary=x")
FORM = (b"content-type", b"application/x-www-form-urlencoded")


def test_it_refuses_a_declared_oversized_form_without_reading_it() -> None:
    status, read = _run("/login/", [FORM, (b"content-length", b"400000000")], [b"x"])
    assert (status, read) == (413, 0)


def test_it_cuts_off_a_streamed_body_at_the_limit() -> None:
    status, read = _run("/login/", [FORM], [b"x" * 500_000] * 10)
    assert status == 413 and read <= 1_000_000 + 64 * 1024


@pytest.mark.parametrize("path", ["/api/v1/training_data/", "/projects/3/data/upload/data/"])
def test_it_lets_uploads_be_as_large_as_the_upload_limit(path: str) -> None:
    assert _run(path, [MULTIPART], [b"x" * 1_000_000] * 5) == (200, 5_000_000)
    assert _run(path, [MULTIPART, (b"content-length", b"20000000")], [b""])[0] == 413


def test_it_gives_uploads_elsewhere_only_the_form_limit() -> None:
    assert _run("/login/", [MULTIPART], [b"x" * 1_000_000] * 5)[0] == 413
    assert _run("/login/", [FORM], [b"a=b"]) == (200, 3)


def test_it_refuses_a_malformed_content_length() -> None:
    assert _run("/login/", [FORM, (b"content-length", b"lots")], [b""])[0] == 400
