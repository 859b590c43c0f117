from __future__ import annotations

from django.apps import AppConfig


class DeploymentConfig(AppConfig):
    name = "recotem.deployment"
    label = "deployment"

    def ready(self) -> None:
        from recotem.deployment import signals  # noqa: F401  (connects the receivers)
