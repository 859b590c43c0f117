"""ASGI entry point: the Django app, with the inference app mounted at /inference/."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, cast

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recotem.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

from recotem.bodylimit import App, limit_request_bodies  # noqa: E402

django_application = limit_request_bodies(
    cast(App, get_asgi_application()),
    upload_bytes=settings.RECOTEM_MAX_UPLOAD_MB * 2**20,
    other_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
)

# The ASGI signature (scope, receive, send), as the apps here declare it.
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class LazyInference:
    """The /inference/ mount, built on its first request.

    Importing the inference app loads the ML stack (numpy, scipy, irspack, numba: ~150 MB), which
    a web process that never serves a prediction should not carry; `recotem inference` is the
    process meant for serving. The first request pays the import (in a thread, so other requests
    go on) and starts the app's routing poller; shutdown stops it if it was started.
    """

    def __init__(self) -> None:
        self._app: Any = None
        self._lock: asyncio.Lock | None = None

    @property
    def loaded(self) -> bool:
        return self._app is not None

    async def _get(self) -> Any:
        if self._app is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._app is None:
                    app = await asyncio.to_thread(_import_inference)
                    await app.ensure_started()
                    self._app = app
        return self._app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        app = await self._get()
        await app(scope, receive, send)

    async def stop(self) -> None:
        if self._app is not None:
            await self._app.stop()


def _import_inference() -> Any:
    from recotem.inference.app import build_app

    return build_app()


def _build() -> ASGIApp:
    inference = LazyInference()

    async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await inference.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/inference" or path.startswith("/inference/"):
            await inference(scope, receive, send)
        else:
            await django_application(scope, receive, send)

    return application


application = _build()
