"""A deleted Project (by a service, the admin or a cascade) takes its task-log lines along."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete
from django.dispatch import receiver

from recotem.core.jobs import task_logs_delete
from recotem.projects.models import Project


@receiver(post_delete, sender=Project, dispatch_uid="projects-task-logs")
def _delete_task_logs(sender: type, instance: Project, **_: Any) -> None:
    task_logs_delete(project_id=instance.pk)
