from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from recotem.retraining.schedules import schedule_reconcile


class Command(BaseCommand):
    help = "Repair drift between retraining schedules and Celery beat's periodic tasks (both directions)."

    def handle(self, *args: Any, **options: Any) -> str:
        report = schedule_reconcile()
        return " ".join(f"{key}={value}" for key, value in report.items())
