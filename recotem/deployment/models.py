from __future__ import annotations

from django.db import models


class DeploymentSlot(models.Model):
    """A named, weighted place a trained model is served from; traffic is split by weight."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="deployment_slots"
    )
    name = models.CharField(max_length=128)
    trained_model = models.ForeignKey(
        "training.TrainedModel", on_delete=models.RESTRICT, related_name="slots"
    )
    weight = models.PositiveSmallIntegerField(default=100)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="deployment_slot_name_unique"),
            models.CheckConstraint(
                condition=models.Q(weight__lte=100), name="deployment_slot_weight_max_100"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class SlotHistory(models.Model):
    """Every model a slot has served, newest last; rollback walks it back.

    Models are named by id, not by foreign key: a history row is a record that outlives the
    artifact (retention keeps only the last RECOTEM_ROLLBACK_DEPTH models of a slot), so an old
    row must not pin its model on disk.
    """

    slot = models.ForeignKey(DeploymentSlot, on_delete=models.CASCADE, related_name="history")
    trained_model_id = models.BigIntegerField()
    previous_model_id = models.BigIntegerField(null=True, blank=True)
    changed_by = models.CharField(
        max_length=64, default="user", help_text="user, rollback, auto-deploy…"
    )
    changed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]


class RoutingVersion(models.Model):
    """One row whose `version` is bumped whenever serving must change (slots, keys).

    Every inference process polls it about once a second and reloads its routing table and key
    cache when it moves; bumping it in the same transaction as the change means a process never
    sees the new version before the new rows.
    """

    version = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(auto_now=True)
