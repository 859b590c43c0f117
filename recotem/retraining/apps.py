from __future__ import annotations

from django.apps import AppConfig


class RetrainingConfig(AppConfig):
    name = "recotem.retraining"
    label = "retraining"

    def ready(self) -> None:
        from recotem.retraining import signals  # noqa: F401
