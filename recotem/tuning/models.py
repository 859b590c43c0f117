from __future__ import annotations

from typing import Any

from django.db import models

from recotem.core.jobs import JobStatus
from recotem.training.models import ModelConfiguration

SPLIT_SETTINGS = (
    "scheme",
    "heldout_ratio",
    "n_heldout",
    "test_user_ratio",
    "n_test_users",
    "final_test_ratio",
    "n_final_test_users",
    "random_seed",
)


class SplitConfig(models.Model):
    class Scheme(models.TextChoices):
        RG = "RG", "Random per-user holdout"
        TG = "TG", "Global time split"
        TU = "TU", "Per-user latest interactions"

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="split_configs"
    )
    name = models.CharField(max_length=256, blank=True, default="")
    scheme = models.CharField(max_length=2, choices=Scheme.choices, default=Scheme.RG)
    heldout_ratio = models.FloatField(default=0.1)
    n_heldout = models.IntegerField(null=True, blank=True)
    # Names kept from the older Recotem: "test users" are the users whose held-out items score
    # the search (validation users); the final-test users are kept out of tuning altogether.
    # The mapping to the engine is `recotem.ml.split.split_spec_from_config`.
    test_user_ratio = models.FloatField(default=1.0)
    n_test_users = models.IntegerField(null=True, blank=True)
    final_test_ratio = models.FloatField(default=0.1)
    n_final_test_users = models.IntegerField(null=True, blank=True)
    random_seed = models.IntegerField(default=42)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.name or f"{self.scheme} split #{self.pk}"

    @property
    def settings(self) -> dict[str, Any]:
        """The fields `split_spec_from_config` takes."""
        return {name: getattr(self, name) for name in SPLIT_SETTINGS}


class EvaluationConfig(models.Model):
    class Metric(models.TextChoices):
        NDCG = "ndcg"
        MAP = "map"
        RECALL = "recall"
        HIT = "hit"

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="evaluation_configs"
    )
    name = models.CharField(max_length=256, blank=True, default="")
    cutoff = models.IntegerField(default=10)
    target_metric = models.CharField(max_length=8, choices=Metric.choices, default=Metric.NDCG)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.name or f"{self.target_metric}@{self.cutoff}"


class ParameterTuningJob(models.Model):
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="tuning_jobs"
    )
    # Nullable: retention may delete an old data-source snapshot a finished job was tuned on;
    # the job stays as a record.
    data = models.ForeignKey(
        "projects.TrainingData",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tuning_jobs",
    )
    split = models.ForeignKey(SplitConfig, on_delete=models.RESTRICT, related_name="tuning_jobs")
    evaluation = models.ForeignKey(
        EvaluationConfig, on_delete=models.RESTRICT, related_name="tuning_jobs"
    )
    n_trials = models.IntegerField(default=40)
    n_tasks_parallel = models.IntegerField(default=1)
    timeout_overall = models.IntegerField(null=True, blank=True, help_text="Seconds.")
    timeout_singlestep = models.IntegerField(null=True, blank=True, help_text="Seconds.")
    random_seed = models.IntegerField(default=42)
    tried_algorithms = models.JSONField(default=list)
    train_after_tuning = models.BooleanField(default=True)
    warm_start_config = models.ForeignKey(
        ModelConfiguration, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING)
    best_config = models.ForeignKey(
        ModelConfiguration, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    best_score = models.FloatField(null=True, blank=True)
    test_metrics = models.JSONField(default=dict, blank=True)
    # Kept only when asked (a retraining run that gates its result): the best configuration's
    # per-user test scores (ml.gate.HeldOutScores bytes), which the gate takes instead of
    # fitting it again; the run clears them once its gate has decided.
    keep_test_scores = models.BooleanField(default=False, editable=False)
    test_scores = models.BinaryField(null=True, blank=True, editable=False)
    # Seconds per phase, summed over the job's tasks (read, split, fit = trials, evaluate, refit).
    timings = models.JSONField(default=dict, blank=True, editable=False)
    tuned_model = models.ForeignKey(
        "training.TrainedModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    trials_done = models.IntegerField(default=0)
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Touched every few seconds while a task works on the RUNNING job; the reaper fails a job
    # whose workers died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Claimed (False -> True, checked by rowcount) by the one finishing step allowed to create the
    # best configuration and model: a duplicated chord callback finds it taken and does nothing.
    finishing = models.BooleanField(default=False)
    # The outbox: True while the job's message still has to be handed to the broker.
    send_pending = models.BooleanField(default=False)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Tuning job #{self.pk}"


class TuningTrial(models.Model):
    job = models.ForeignKey(ParameterTuningJob, on_delete=models.CASCADE, related_name="trials")
    number = models.IntegerField()
    algorithm = models.CharField(max_length=128)
    params = models.JSONField(default=dict)
    score = models.FloatField(null=True, blank=True)
    duration = models.FloatField(null=True, blank=True, help_text="Seconds.")
    state = models.CharField(max_length=16)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "number"]
        constraints = [
            models.UniqueConstraint(fields=["job", "number"], name="tuning_trial_unique")
        ]
