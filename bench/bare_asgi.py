"""The bare ASGI endpoint the inference benchmark compares against: it reads and parses the same
JSON body and returns a constant of the same size as a real answer (BARE_RESPONSE_BYTES)."""

from __future__ import annotations

import os
from typing import Any

import orjson

_SIZE = int(os.environ.get("BARE_RESPONSE_BYTES", "700"))
_BODY = orjson.dumps({"items": [], "pad": ""})
_BODY = orjson.dumps({"items": [], "pad": "x" * max(0, _SIZE - len(_BODY))})
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    payload = orjson.loads(body or b"{}")
    status = 200 if isinstance(payload, dict) and "user_id" in payload else 422
    await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
