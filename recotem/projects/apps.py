from __future__ import annotations

from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    name = "recotem.projects"
    label = "projects"

    def ready(self) -> None:
        from recotem.projects import signals  # noqa: F401  (connects the receivers)
