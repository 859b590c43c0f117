"""A deleted TrainedModel (by a service, the admin or a cascade) takes its task-log lines along."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete
from django.dispatch import receiver

from recotem.core.jobs import task_logs_delete
from recotem.training.models import TrainedModel


@receiver(post_delete, sender=TrainedModel, dispatch_uid="training-task-logs")
def _delete_task_logs(sender: type, instance: TrainedModel, **_: Any) -> None:
    task_logs_delete(trained_model_id=instance.pk)
