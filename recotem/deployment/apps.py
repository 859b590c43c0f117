from __future__ import annotations

from django.apps import AppConfig


class DeploymentConfig(AppConfig):
    name = "recotem.deployment"
    label = "deployment"
