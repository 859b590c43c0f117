from __future__ import annotations

from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    """Feedback events and online experiments between deployment slots (DESIGN §7)."""

    name = "recotem.experiments"
    label = "experiments"

    def ready(self) -> None:
        from recotem.experiments.sources import events_read
        from recotem.projects.sources import register_reader

        register_reader("events", events_read)
