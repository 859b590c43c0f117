from __future__ import annotations

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "recotem.training"
    label = "training"

    def ready(self) -> None:
        from recotem.training import outbox, signals  # noqa: F401  (registers / connects)
