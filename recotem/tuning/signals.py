"""A deleted ParameterTuningJob (by a service, the admin or a cascade) takes its task-log lines along."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete
from django.dispatch import receiver

from recotem.core.jobs import task_logs_delete
from recotem.tuning.models import ParameterTuningJob


@receiver(post_delete, sender=ParameterTuningJob, dispatch_uid="tuning-task-logs")
def _delete_task_logs(sender: type, instance: ParameterTuningJob, **_: Any) -> None:
    task_logs_delete(tuning_job_id=instance.pk)
