from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "recotem.accounts"
    label = "accounts"

    def ready(self) -> None:
        from recotem.accounts import (
            schema,  # noqa: F401  (registers the X-API-Key scheme)
            signals,
        )

        signals.connect()
