from __future__ import annotations

from django.db import models


class RetrainingSchedule(models.Model):
    project = models.OneToOneField(
        "projects.Project", on_delete=models.CASCADE, related_name="retraining_schedule"
    )
    is_enabled = models.BooleanField(default=True)
    cron_expression = models.CharField(max_length=128)
    timezone = models.CharField(max_length=64, default="UTC")
    training_data = models.ForeignKey(
        "projects.TrainingData", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Empty means the project's latest training data at run time.",
    )
    model_configuration = models.ForeignKey(
        "tuning.ModelConfiguration", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    retune = models.BooleanField(default=False)
    split_config = models.ForeignKey(
        "tuning.SplitConfig", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    evaluation_config = models.ForeignKey(
        "tuning.EvaluationConfig", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    n_trials = models.IntegerField(default=40)
    timeout_overall = models.IntegerField(null=True, blank=True)
    tried_algorithms = models.JSONField(default=list, blank=True)
    auto_deploy = models.BooleanField(default=False)
    deploy_slot = models.ForeignKey(
        "deployment.DeploymentSlot", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    gate_tolerance = models.FloatField(default=0.02)
    max_retries = models.IntegerField(default=3)
    retry_backoff_seconds = models.IntegerField(default=60)
    time_limit_seconds = models.IntegerField(default=3600)
    notify_on_failure = models.BooleanField(default=False)
    webhook_url = models.URLField(max_length=2048, blank=True, default="")
    webhook_secret = models.CharField(
        max_length=64, blank=True, default="",
        help_text="HMAC-SHA256 key of the Recotem-Signature header; generated on creation.",
    )
    # The fire time an overdue notice was last sent for, so each missed fire is notified once.
    overdue_notified_for = models.DateTimeField(null=True, blank=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_run_status = models.CharField(max_length=16, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Retraining of {self.project}"


class RunStatus(models.TextChoices):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


ACTIVE_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING)


class RetrainingRun(models.Model):
    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        MANUAL = "manual"
        RETRY = "retry"

    class Gate(models.TextChoices):
        NOT_REQUESTED = "not_requested"
        DEPLOYED = "deployed"
        REJECTED = "rejected"

    schedule = models.ForeignKey(RetrainingSchedule, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    force = models.BooleanField(default=False)
    attempt = models.IntegerField(default=1)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    data_fingerprint = models.CharField(max_length=80, blank=True, default="")
    data_rows = models.BigIntegerField(null=True, blank=True)
    training_data = models.ForeignKey(
        "projects.TrainingData", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    tuning_job = models.ForeignKey(
        "tuning.ParameterTuningJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    trained_model = models.ForeignKey(
        "training.TrainedModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    deployed_slot = models.ForeignKey(
        "deployment.DeploymentSlot", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    metrics = models.JSONField(default=dict, blank=True)
    incumbent_metrics = models.JSONField(default=dict, blank=True)
    gate_decision = models.CharField(max_length=16, choices=Gate.choices, blank=True, default="")
    skip_reason = models.TextField(blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    retryable = models.BooleanField(default=True)
    notification = models.JSONField(default=dict, blank=True)
    celery_task_id = models.CharField(max_length=255, blank=True, default="")
    worker = models.CharField(max_length=255, blank=True, default="", help_text="host:pid that ran it.")
    # A retry waits until this time; the reaper re-sends PENDING runs whose message was lost.
    not_before = models.DateTimeField(null=True, blank=True)
    # When the reaper last re-sent this PENDING run's message: at most one re-send per interval.
    resent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["schedule", "-id"]), models.Index(fields=["status"])]
        constraints = [
            # The database, not the worker, guarantees at most one active run per schedule.
            models.UniqueConstraint(
                fields=["schedule"],
                condition=models.Q(status__in=["PENDING", "RUNNING"]),
                name="one_active_run_per_schedule",
            )
        ]

    def __str__(self) -> str:
        return f"Run #{self.pk} ({self.status})"
