"""Feedback events and A/B experiments between two slots of a project.

Events name the slot, model and experiment arm that served them by plain ids (decoded from the
prediction's signed ``request_id``): an event is a record that outlives slots, models and
experiments, so it must not pin them or vanish with them.
"""

from __future__ import annotations

from django.db import models


class Event(models.Model):
    """What a user did with what was shown: impression, click, purchase or a custom type."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    event_type = models.CharField(max_length=32)
    user_id = models.CharField(max_length=256)
    item_id = models.CharField(max_length=256)
    timestamp = models.DateTimeField()
    value = models.FloatField(null=True, blank=True)
    # The client's idempotency key: a retried batch stores each event once.
    event_id = models.CharField(max_length=256, null=True, blank=True)
    # Attribution, from the request_id of the prediction that showed the item (null: none given).
    slot_id = models.BigIntegerField(null=True, blank=True)
    model_id = models.BigIntegerField(null=True, blank=True)
    experiment_id = models.BigIntegerField(null=True, blank=True)
    arm = models.CharField(max_length=16, blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "event_id"],
                condition=models.Q(event_id__isnull=False),
                name="event_id_unique_per_project",
            )
        ]
        indexes = [
            models.Index(fields=["project", "timestamp"], name="event_project_time"),
            models.Index(
                fields=["experiment_id", "arm", "event_type"], name="event_experiment_arm"
            ),
        ]


class Experiment(models.Model):
    """Control slot against variant slot, judged per user on one event type."""

    class Status(models.TextChoices):
        DRAFT = "DRAFT"
        RUNNING = "RUNNING"
        STOPPED = "STOPPED"

    class Decision(models.TextChoices):
        CONTINUE = "continue"
        VARIANT_BETTER = "variant_better"
        CONTROL_BETTER = "control_better"
        NO_DIFFERENCE = "no_difference"

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="experiments"
    )
    name = models.CharField(max_length=128)
    control_slot = models.ForeignKey(
        "deployment.DeploymentSlot", on_delete=models.CASCADE, related_name="+"
    )
    variant_slot = models.ForeignKey(
        "deployment.DeploymentSlot", on_delete=models.CASCADE, related_name="+"
    )
    metric = models.CharField(max_length=32, default="click")
    alpha = models.FloatField(default=0.05)
    min_effect = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    started_at = models.DateTimeField(null=True, blank=True)
    # The slots' weights when the experiment started: the split the sample-ratio check expects
    # (the live weights change on promote, and the check must still describe the experiment).
    control_weight = models.PositiveSmallIntegerField(null=True, blank=True)
    variant_weight = models.PositiveSmallIntegerField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # The decision when it stopped (promote / canary end), and which slot was promoted.
    decision = models.CharField(max_length=16, choices=Decision.choices, blank=True, default="")
    promoted_slot_id = models.BigIntegerField(null=True, blank=True)
    # A canary deploy is an experiment started by a retraining run (plain id: retraining is a
    # higher layer) that a periodic task decides when the window ends.
    retraining_run_id = models.BigIntegerField(null=True, blank=True, unique=True)
    canary_ends_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.name
