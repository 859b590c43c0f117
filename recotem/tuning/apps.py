from __future__ import annotations

from django.apps import AppConfig


class TuningConfig(AppConfig):
    name = "recotem.tuning"
    label = "tuning"
