from __future__ import annotations

from django.apps import AppConfig


class RetrainingConfig(AppConfig):
    name = "recotem.retraining"
    label = "retraining"

    def ready(self) -> None:
        from recotem.core import health
        from recotem.deployment.services import register_model_change_check
        from recotem.retraining import signals
        from recotem.retraining.canary import canary_conflict

        health.register("retraining", signals.health)
        # A slot's model cannot change under a running canary (API, UI, admin, other runs).
        register_model_change_check(canary_conflict)
