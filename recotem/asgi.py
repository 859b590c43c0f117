"""ASGI entry point: the Django app, with the inference app mounted at /inference/."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recotem.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()


async def _plain_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Django speaks no lifespan protocol; acknowledge start-up and shutdown for it."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _build() -> Any:
    try:
        from recotem.inference.app import build_app
    except ImportError:  # without the inference app, serve Django alone
        inference = None
    else:
        inference = build_app()

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await (inference or _plain_lifespan)(scope, receive, send)
            return
        path = scope.get("path", "")
        if inference is not None and (path == "/inference" or path.startswith("/inference/")):
            await inference(scope, receive, send)
        else:
            await django_application(scope, receive, send)

    return application


application = _build()
