from __future__ import annotations

from django.apps import AppConfig


class TuningConfig(AppConfig):
    name = "recotem.tuning"
    label = "tuning"

    def ready(self) -> None:
        from recotem.tuning import outbox, signals  # noqa: F401  (registers / connects)
