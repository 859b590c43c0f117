from __future__ import annotations

from django.db import models


class ProcessHeartbeat(models.Model):
    """Last time a worker or beat reported in (see recotem.core.health)."""

    kind = models.CharField(max_length=32, unique=True)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.kind} @ {self.seen_at:%Y-%m-%d %H:%M:%S}"


class TaskLog(models.Model):
    """One line of what a background job did, shown to the user under "logs".

    Jobs of every app write here, so this table sits in the lowest layer and names its subjects
    by id rather than by foreign key (a project, and optionally the trained model or tuning job
    the line is about). The apps that own those rows delete their lines with them (their
    post_delete receivers call ``core.jobs.task_logs_delete``).
    """

    project_id = models.BigIntegerField(db_index=True)
    task = models.CharField(max_length=255, db_index=True, help_text="Celery task id.")
    tuning_job_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    trained_model_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    level = models.CharField(max_length=16, default="INFO")
    contents = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.level} {self.contents[:60]}"
