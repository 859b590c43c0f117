from __future__ import annotations

from django.apps import AppConfig


class RetrainingConfig(AppConfig):
    name = "recotem.retraining"
    label = "retraining"
