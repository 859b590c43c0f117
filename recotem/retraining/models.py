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
        "projects.TrainingData",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Empty means the project's latest training data at run time.",
    )
    model_configuration = models.ForeignKey(
        "training.ModelConfiguration",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    retune = models.BooleanField(default=False)
    split_config = models.ForeignKey(
        "tuning.SplitConfig", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    evaluation_config = models.ForeignKey(
        "tuning.EvaluationConfig",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    n_trials = models.IntegerField(default=40)
    timeout_overall = models.IntegerField(null=True, blank=True)
    tried_algorithms = models.JSONField(default=list, blank=True)
    auto_deploy = models.BooleanField(default=False)
    deploy_slot = models.ForeignKey(
        "deployment.DeploymentSlot",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    gate_tolerance = models.FloatField(
        default=0.02,
        help_text="Reject only a candidate confidently worse than the incumbent by more than "
        "this share of the incumbent's score.",
    )
    max_data_shrink = models.FloatField(
        default=0.5,
        help_text="Refuse to deploy when the data has more than this share fewer rows than at "
        "the last completed run (unless the run is forced).",
    )

    class DeployMode(models.TextChoices):
        REPLACE = "replace"
        CANARY = "canary"

    # replace: a model that passed the gate replaces the target slot's model at once. canary: it
    # first serves canary_percent of the target slot's users (a "<target>-canary" slot) as an
    # experiment against the incumbent, decided when canary_minutes have passed.
    deploy_mode = models.CharField(
        max_length=8, choices=DeployMode.choices, default=DeployMode.REPLACE
    )
    canary_percent = models.PositiveSmallIntegerField(default=10)
    canary_minutes = models.PositiveIntegerField(default=60)
    # The event type the canary's experiment counts as a conversion (experiments' metric rule).
    canary_metric = models.CharField(max_length=32, default="click")
    max_retries = models.IntegerField(default=3)
    retry_backoff_seconds = models.IntegerField(default=60)
    time_limit_seconds = models.IntegerField(default=3600)
    notify_on_failure = models.BooleanField(default=False)
    webhook_url = models.URLField(max_length=2048, blank=True, default="")
    webhook_secret = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="HMAC-SHA256 key of the Recotem-Signature header; generated on creation.",
    )
    # Beat fires only for cron instants after this: set whenever the cron, the timezone or the
    # enabled flag changes, so an edit never makes beat fire an instant the preview did not show.
    fires_from = models.DateTimeField(null=True, blank=True)
    # The fire time an overdue notice was last sent for, so each missed fire is notified once.
    overdue_notified_for = models.DateTimeField(null=True, blank=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
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
    CANCELLED = "CANCELLED"


ACTIVE_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING)
FINAL_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.SKIPPED, RunStatus.CANCELLED)


class RetrainingRun(models.Model):
    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        MANUAL = "manual"
        RETRY = "retry"

    class Gate(models.TextChoices):
        NOT_REQUESTED = "not_requested"
        DEPLOYED = "deployed"
        REJECTED = "rejected"
        CANARY = "canary"  # passed; serving a share of the target's users (retraining.canary)

    schedule = models.ForeignKey(RetrainingSchedule, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    force = models.BooleanField(default=False)
    attempt = models.IntegerField(default=1)
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    queued_at = models.DateTimeField(auto_now_add=True)
    # The cron instant a scheduled run is for: (schedule, fire_at) is unique, so a second fire of
    # the same instant (beat restarted after a crash, a second beat) creates no second run.
    fire_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    data_fingerprint = models.CharField(max_length=80, blank=True, default="")
    data_rows = models.BigIntegerField(null=True, blank=True)
    training_data = models.ForeignKey(
        "projects.TrainingData", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    tuning_job = models.ForeignKey(
        "tuning.ParameterTuningJob",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    trained_model = models.ForeignKey(
        "training.TrainedModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    deployed_slot = models.ForeignKey(
        "deployment.DeploymentSlot",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    metrics = models.JSONField(default=dict, blank=True)
    incumbent_metrics = models.JSONField(default=dict, blank=True)
    gate_decision = models.CharField(max_length=16, choices=Gate.choices, blank=True, default="")
    gate_report = models.JSONField(default=dict, blank=True)
    # Seconds per phase (read, tune, train, gate, deploy) and the trained model's own timings.
    timings = models.JSONField(default=dict, blank=True)
    # What the run is doing now (read, tune, train, gate, deploy); empty once it ended.
    stage = models.CharField(max_length=16, blank=True, default="")
    # The attempt token of the worker that started the run: every write of that worker checks it,
    # so a worker the reaper gave up on (a zombie) can never write again.
    lease = models.CharField(max_length=32, blank=True, default="")
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # The outbox: True while the run's message still has to be handed to the broker.
    send_pending = models.BooleanField(default=False)
    sent_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.TextField(blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    retryable = models.BooleanField(default=True)
    notification = models.JSONField(default=dict, blank=True)
    celery_task_id = models.CharField(max_length=255, blank=True, default="")
    worker = models.CharField(
        max_length=255, blank=True, default="", help_text="host:pid that ran it."
    )
    # A retry waits until this time; the reaper re-sends PENDING runs whose message was lost.
    not_before = models.DateTimeField(null=True, blank=True)
    # When the reaper last re-sent this PENDING run's message: at most one re-send per interval.
    resent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["schedule", "-id"]),
            models.Index(fields=["status"]),
            models.Index(
                fields=["send_pending"], condition=models.Q(send_pending=True), name="run_outbox"
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["schedule", "fire_at"], name="one_run_per_fire_instant"
            ),
            # The database, not the worker, guarantees at most one active run per schedule.
            models.UniqueConstraint(
                fields=["schedule"],
                condition=models.Q(status__in=["PENDING", "RUNNING"]),
                name="one_active_run_per_schedule",
            ),
        ]

    def __str__(self) -> str:
        return f"Run #{self.pk} ({self.status})"
