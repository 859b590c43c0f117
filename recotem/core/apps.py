from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "recotem.core"
    label = "core"

    def ready(self) -> None:
        # Binds @shared_task to our app in every process that loads Django (web, tests, cli).
        from recotem.celery import app  # noqa: F401
        from recotem.core import signals, storagecheck  # noqa: F401
