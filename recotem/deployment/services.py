"""Writes for deployment slots. Every change bumps the routing version in the same transaction,
so every inference process (polling it about once a second) serves the change within seconds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F

from recotem.core.exceptions import ApplicationError
from recotem.core.jobs import JobStatus
from recotem.core.ownership import check_same_project
from recotem.deployment.models import DeploymentSlot, RoutingVersion, SlotHistory
from recotem.training.models import TrainedModel

# Rooms above deployment that may refuse a change of a slot's model (a running canary of
# retraining): each returns the reason to refuse, or None. Registered from AppConfig.ready.
ModelChangeCheck = Callable[[DeploymentSlot], str | None]
_MODEL_CHANGE_CHECKS: list[ModelChangeCheck] = []


def register_model_change_check(check: ModelChangeCheck) -> None:
    """Let a higher room refuse changes of a slot's model (called from its ``AppConfig.ready``)."""
    if check not in _MODEL_CHANGE_CHECKS:
        _MODEL_CHANGE_CHECKS.append(check)


def slot_model_change_refusal(slot: DeploymentSlot) -> str | None:
    """Why the model of ``slot`` must not change now (the first registered check that says
    so), or None. The services below raise it as a 409; a retraining run reports it."""
    for check in _MODEL_CHANGE_CHECKS:
        if (reason := check(slot)) is not None:
            return reason
    return None


def _refuse_model_change(slot: DeploymentSlot) -> None:
    if (reason := slot_model_change_refusal(slot)) is not None:
        raise ApplicationError(reason, field="detail", status=409)


def bump_routing_version() -> None:
    """Tell inference processes to reload routing and keys. One UPDATE (an INSERT the first time)."""
    if RoutingVersion.objects.filter(pk=1).update(version=F("version") + 1) == 0:
        try:
            with transaction.atomic():
                RoutingVersion.objects.create(pk=1, version=1)
        except IntegrityError:  # created concurrently: bump that row instead
            RoutingVersion.objects.filter(pk=1).update(version=F("version") + 1)


def _check_model(*, project_id: int, trained_model: TrainedModel) -> None:
    check_same_project(project_id, trained_model=trained_model)
    if trained_model.status != JobStatus.COMPLETED or not trained_model.file:
        raise ApplicationError(
            "Only a completed trained model can be deployed.", field="trained_model"
        )


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
    slot = DeploymentSlot(
        project=project, name=name, trained_model=trained_model, weight=weight, is_active=is_active
    )
    slot.save()
    SlotHistory.objects.create(
        slot=slot, trained_model_id=trained_model.pk, previous_model_id=None, changed_by=changed_by
    )
    return slot  # post_save bumps the routing version


@transaction.atomic
def slot_set_model(
    *, slot: DeploymentSlot, trained_model: TrainedModel, changed_by: str
) -> DeploymentSlot:
    """Point `slot` at `trained_model`, keeping its weight; records history. No-op if unchanged.

    Refused (409) while a registered check objects, e.g. a canary of the slot is running."""
    slot = DeploymentSlot.objects.select_for_update().get(pk=slot.pk)
    _check_model(project_id=slot.project_id, trained_model=trained_model)
    if slot.trained_model_id == trained_model.id:
        return slot
    _refuse_model_change(slot)
    previous_id = slot.trained_model_id
    slot.trained_model = trained_model
    slot.save(update_fields=["trained_model", "updated_at"])
    SlotHistory.objects.create(
        slot=slot,
        trained_model_id=trained_model.pk,
        previous_model_id=previous_id,
        changed_by=changed_by,
    )
    return slot


@transaction.atomic
def slot_update(
    *, slot: DeploymentSlot, data: dict[str, Any], changed_by: str = "user"
) -> DeploymentSlot:
    """Change name / weight / is_active / trained_model of a slot (the API's PATCH/PUT)."""
    if "trained_model" in data and data["trained_model"] is not None:
        slot = slot_set_model(slot=slot, trained_model=data["trained_model"], changed_by=changed_by)
    fields = []
    if "name" in data and data["name"] != slot.name:
        if (
            DeploymentSlot.objects.filter(project_id=slot.project_id, name=data["name"])
            .exclude(pk=slot.pk)
            .exists()
        ):
            raise ApplicationError(
                "A slot with this name already exists in the project.", field="name"
            )
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
    Refused (409) like `slot_set_model` while a registered check objects.
    """
    slot = DeploymentSlot.objects.select_for_update().get(pk=slot.pk)
    _refuse_model_change(slot)
    last = (
        SlotHistory.objects.filter(slot=slot, trained_model_id=slot.trained_model_id)
        .exclude(previous_model_id=None)
        .order_by("-id")
        .first()
    )
    if last is None or last.previous_model_id is None:
        raise ApplicationError("This slot has no previous model to roll back to.")
    previous = TrainedModel.objects.filter(pk=last.previous_model_id).first()
    if previous is None or previous.status != JobStatus.COMPLETED or not previous.file:
        raise ApplicationError("The previous model is no longer available.")
    return slot_set_model(slot=slot, trained_model=previous, changed_by="rollback")


@transaction.atomic
def slot_delete(*, slot: DeploymentSlot) -> None:
    slot.delete()  # post_delete bumps the routing version


@transaction.atomic
def slots_promote(
    *, winner: DeploymentSlot, loser: DeploymentSlot, changed_by: str
) -> DeploymentSlot:
    """All traffic to ``winner`` (weight 100, active), ``loser`` deactivated; both recorded.

    The end of an experiment or canary. Each slot gets a history entry naming ``changed_by``
    (its model is unchanged, so the entry has no previous model and a rollback skips it).
    Saving the slots bumps the routing version, so inference moves everyone within seconds.
    """
    if winner.project_id != loser.project_id or winner.pk == loser.pk:
        raise ApplicationError("Promote needs two different slots of one project.", field="slot")
    winner = DeploymentSlot.objects.select_for_update().get(pk=winner.pk)
    loser = DeploymentSlot.objects.select_for_update().get(pk=loser.pk)
    winner.weight, winner.is_active = 100, True
    winner.save(update_fields=["weight", "is_active", "updated_at"])
    loser.is_active = False
    loser.save(update_fields=["is_active", "updated_at"])
    for slot, what in ((winner, "promoted"), (loser, "deactivated")):
        SlotHistory.objects.create(
            slot=slot,
            trained_model_id=slot.trained_model_id,
            previous_model_id=None,
            changed_by=f"{changed_by}: {what}"[:64],
        )
    return winner
