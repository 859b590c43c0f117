"""Deleting a project (cascade) must also stop beat firing its schedule."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import pre_delete
from django.dispatch import receiver

from recotem.retraining.models import RetrainingSchedule


@receiver(pre_delete, sender=RetrainingSchedule)
def _remove_periodic_task(sender: type, instance: RetrainingSchedule, **_: Any) -> None:
    # Runs for cascades too (Django collects and signals each schedule of a deleted project),
    # inside the same transaction as the delete.
    from recotem.retraining.services import _remove_beat_rows

    _remove_beat_rows(instance.pk)
