"""Writes for deployment slots. Every change bumps the routing version in the same transaction,
so every inference process (polling it about once a second) serves the change within seconds."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F

from recotem.core.exceptions import ApplicationError
from recotem.deployment.models import DeploymentSlot, RoutingVersion, SlotHistory
from recotem.training.models import TrainedModel
from recotem.tuning.models import JobStatus


def bump_routing_version() -> None:
    """Tell inference processes to reload routing and keys. One UPDATE (an INSERT the first time)."""
    if RoutingVersion.objects.filter(pk=1).update(version=F("version") + 1) == 0:
        try:
            with transaction.atomic():
                RoutingVersion.objects.create(pk=1, version=1)
        except IntegrityError:  # created concurrently: bump that row instead
            RoutingVersion.objects.filter(pk=1).update(version=F("version") + 1)


def _check_model(*, project_id: int, trained_model: TrainedModel) -> None:
    if trained_model.project_id != project_id:
        raise ApplicationError("Must belong to the same project.", field="trained_model")
    if trained_model.status != JobStatus.COMPLETED or not trained_model.file:
        raise ApplicationError("Only a completed trained model can be deployed.", field="trained_model")


def _check_weight(weight: Any) -> None:
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
        raise ApplicationError("Weight must be an integer from 0 to 100.", field="weight")


@transaction.atomic
def slot_create(
    *,
    project: Any,
    name: str,
    trained_model: TrainedModel,
    weight: int = 100,
    is_active: bool = True,
    changed_by: str = "user",
) -> DeploymentSlot:
    """Create a slot serving `trained_model` and record it as the first history entry."""
    _check_model(project_id=project.id, trained_model=trained_model)
    _check_weight(weight)
    if DeploymentSlot.objects.filter(project=project, name=name).exists():
        raise ApplicationError("A slot with this name already exists in the project.", field="name")
    slot = DeploymentSlot(project=project, name=name, trained_model=trained_model, weight=weight, is_active=is_active)
    slot._history_recorded = True  # type: ignore[attr-defined]  # recorded below, with changed_by
    slot.save()
    SlotHistory.objects.create(slot=slot, trained_model=trained_model, previous_model=None, changed_by=changed_by)
    return slot  # post_save bumps the routing version


@transaction.atomic
def slot_set_model(*, slot: DeploymentSlot, trained_model: TrainedModel, changed_by: str) -> DeploymentSlot:
    """Point `slot` at `trained_model`, keeping its weight; records history. No-op if unchanged."""
    slot = DeploymentSlot.objects.select_for_update().get(pk=slot.pk)
    _check_model(project_id=slot.project_id, trained_model=trained_model)
    if slot.trained_model_id == trained_model.id:
        return slot
    previous_id = slot.trained_model_id
    slot.trained_model = trained_model
    slot._history_recorded = True  # type: ignore[attr-defined]  # recorded below, with changed_by
    slot.save(update_fields=["trained_model", "updated_at"])
    SlotHistory.objects.create(
        slot=slot, trained_model=trained_model, previous_model_id=previous_id, changed_by=changed_by
    )
    return slot


@transaction.atomic
def slot_update(*, slot: DeploymentSlot, data: dict[str, Any], changed_by: str = "user") -> DeploymentSlot:
    """Change name / weight / is_active / trained_model of a slot (the API's PATCH/PUT)."""
    if "trained_model" in data and data["trained_model"] is not None:
        slot = slot_set_model(slot=slot, trained_model=data["trained_model"], changed_by=changed_by)
    fields = []
    if "name" in data and data["name"] != slot.name:
        if DeploymentSlot.objects.filter(project_id=slot.project_id, name=data["name"]).exclude(pk=slot.pk).exists():
            raise ApplicationError("A slot with this name already exists in the project.", field="name")
        slot.name = data["name"]
        fields.append("name")
    if "weight" in data:
        _check_weight(data["weight"])
        slot.weight = data["weight"]
        fields.append("weight")
    if "is_active" in data:
        slot.is_active = bool(data["is_active"])
        fields.append("is_active")
    if fields:
        slot.save(update_fields=[*fields, "updated_at"])
    return slot


@transaction.atomic
def slot_rollback(*, slot: DeploymentSlot) -> DeploymentSlot:
    """Point the slot back at the model it served before its current one.

    The previous model is the `previous_model` of the newest history entry that set the current
    model. Rolling back twice alternates between the two models, like an undo of the last change.
    """
    slot = DeploymentSlot.objects.select_for_update().get(pk=slot.pk)
    last = (
        SlotHistory.objects.filter(slot=slot, trained_model_id=slot.trained_model_id)
        .exclude(previous_model=None)
        .order_by("-id")
        .first()
    )
    if last is None or last.previous_model is None:
        raise ApplicationError("This slot has no previous model to roll back to.")
    previous = last.previous_model
    if previous.status != JobStatus.COMPLETED or not previous.file:
        raise ApplicationError("The previous model is no longer available.")
    return slot_set_model(slot=slot, trained_model=previous, changed_by="rollback")


@transaction.atomic
def slot_delete(*, slot: DeploymentSlot) -> None:
    slot.delete()  # post_delete bumps the routing version
