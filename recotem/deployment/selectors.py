"""Reads of deployment state."""

from __future__ import annotations

from recotem.deployment.models import DeploymentSlot, SlotHistory


def protected_model_ids(project_id: int, *, rollback_depth: int) -> set[int]:
    """Models that retention must keep: what each slot serves and the ``rollback_depth`` models
    each slot served before it (what a rollback, repeated, can return to). Older history rows
    stay as a record without pinning their models."""
    protected: set[int] = set()
    for slot_id, serving in DeploymentSlot.objects.filter(project_id=project_id).values_list(
        "id", "trained_model_id"
    ):
        kept = [serving]
        rows = SlotHistory.objects.filter(slot_id=slot_id).order_by("-id")
        for current, previous in rows.values_list("trained_model_id", "previous_model_id"):
            for model_id in (current, previous):
                if model_id is not None and model_id not in kept:
                    kept.append(model_id)
            if len(kept) > rollback_depth:
                break
        protected.update(kept[: rollback_depth + 1])
    return protected
