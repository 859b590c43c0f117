"""ASGI entry point: the Django app, with the inference app mounted at /inference/."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recotem.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()


def _build() -> object:
    try:
        from recotem.inference.app import build_app
    except ImportError:  # the inference app is optional while it is being built
        return django_application
    inference = build_app()

    async def application(scope: dict, receive: object, send: object) -> None:
        path = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and (path == "/inference" or path.startswith("/inference/")):
            await inference(scope, receive, send)  # type: ignore[operator]
        elif scope["type"] == "lifespan":
            await inference(scope, receive, send)  # type: ignore[operator]
        else:
            await django_application(scope, receive, send)

    return application


application = _build()
