from __future__ import annotations

from django.db import models

from recotem.tuning.models import JobStatus


def _artifact_path(instance: TrainedModel, filename: str) -> str:
    return f"projects/{instance.project_id}/models/{filename}"


class TrainedModel(models.Model):
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="trained_models")
    configuration = models.ForeignKey(
        "tuning.ModelConfiguration", on_delete=models.RESTRICT, related_name="trained_models"
    )
    data_loc = models.ForeignKey("projects.TrainingData", on_delete=models.RESTRICT, related_name="trained_models")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING)
    file = models.FileField(upload_to=_artifact_path, max_length=512, blank=True)
    filesize = models.BigIntegerField(null=True, blank=True)
    test_metrics = models.JSONField(default=dict, blank=True)
    irspack_version = models.CharField(max_length=32, blank=True, default="")
    training_time = models.FloatField(null=True, blank=True, help_text="Seconds.")
    data_fingerprint = models.CharField(max_length=80, blank=True, default="")
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Touched every few seconds while RUNNING; the reaper fails a model whose worker died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Model #{self.pk} ({self.configuration})"


class TaskLog(models.Model):
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="task_logs")
    task = models.CharField(max_length=255, db_index=True, help_text="Celery task id.")
    tuning_job = models.ForeignKey(
        "tuning.ParameterTuningJob", null=True, blank=True, on_delete=models.CASCADE, related_name="logs"
    )
    trained_model = models.ForeignKey(
        TrainedModel, null=True, blank=True, on_delete=models.CASCADE, related_name="logs"
    )
    level = models.CharField(max_length=16, default="INFO")
    contents = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
