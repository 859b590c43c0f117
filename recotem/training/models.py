from __future__ import annotations

from django.db import models

from recotem.core.jobs import JobStatus


class ModelConfiguration(models.Model):
    """An algorithm and its parameters: what a model is trained with.

    Tuning jobs produce configurations (``tuning_job_id`` remembers which one, as a plain id so
    this lower layer does not point up at tuning); people write them by hand too.
    """

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="model_configurations"
    )
    name = models.CharField(max_length=256)
    recommender_class_name = models.CharField(max_length=128)
    parameters_json = models.JSONField(default=dict)
    tuning_job_id = models.BigIntegerField(
        null=True, blank=True, help_text="The tuning job that produced this configuration."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"], name="model_configuration_name_unique"
            )
        ]

    def __str__(self) -> str:
        return self.name


def _artifact_path(instance: TrainedModel, filename: str) -> str:
    return f"projects/{instance.project_id}/models/{filename}"


class TrainedModel(models.Model):
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="trained_models"
    )
    configuration = models.ForeignKey(
        ModelConfiguration, on_delete=models.RESTRICT, related_name="trained_models"
    )
    data_loc = models.ForeignKey(
        "projects.TrainingData", on_delete=models.RESTRICT, related_name="trained_models"
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING)
    # What the model was actually trained with, copied from the configuration when training
    # starts: a configuration edited later keeps its id, so only these say what this model is.
    class_name = models.CharField(max_length=128, blank=True, default="")
    parameters = models.JSONField(default=dict, blank=True)
    file = models.FileField(upload_to=_artifact_path, max_length=512, blank=True)
    filesize = models.BigIntegerField(null=True, blank=True)
    # Keys carry their cutoff ("ndcg@10"): scores at different cutoffs are never compared.
    test_metrics = models.JSONField(default=dict, blank=True)
    irspack_version = models.CharField(max_length=32, blank=True, default="")
    training_time = models.FloatField(null=True, blank=True, help_text="Seconds.")
    # Seconds per phase (read, matrix, fit, save, split, evaluate: recotem.ml.timing).
    timings = models.JSONField(default=dict, blank=True, editable=False)
    data_fingerprint = models.CharField(max_length=80, blank=True, default="")
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Touched every few seconds while RUNNING; the reaper fails a model whose worker died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The outbox: True while the training message still has to be handed to the broker.
    send_pending = models.BooleanField(default=False)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Model #{self.pk} ({self.configuration})"
