"""Retraining's hooks into the rest of the system, connected in `RetrainingConfig.ready`."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery.signals import worker_ready
from django.db.models.signals import pre_delete
from django.dispatch import receiver

from recotem.retraining.models import RetrainingSchedule
from recotem.retraining.schedules import beat_rows_remove, schedule_reconcile
from recotem.retraining.selectors import overdue_schedules

logger = logging.getLogger(__name__)


@receiver(pre_delete, sender=RetrainingSchedule)
def _remove_periodic_task(sender: type, instance: RetrainingSchedule, **_: Any) -> None:
    # Deleting a project (cascade) must also stop beat firing its schedule. Runs for cascades
    # too (Django collects and signals each schedule of a deleted project), inside the same
    # transaction as the delete.
    beat_rows_remove(instance.pk)


@worker_ready.connect
def _reconcile_on_worker_start(**_: Any) -> None:
    try:
        logger.info("reconcile on worker start: %s", schedule_reconcile())
    except Exception:
        logger.exception("reconcile on worker start failed")


def health(now: datetime) -> dict[str, Any]:
    """What /api/v1/ping/ says about retraining. Only a count: /ping/ is public."""
    return {"overdue_schedules": len(overdue_schedules(now=now))}
