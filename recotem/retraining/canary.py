"""Canary deploys: a model that passed the gate first serves a share of the target slot's users.

A schedule with ``deploy_mode="canary"`` deploys in two steps:

1. **Start** (`canary_start`, inside the run's finish transaction, after the compare-and-set on
   the target slot): the model goes to the slot ``<target>-canary`` (created, or reused from an
   earlier canary) and the target slot gives up ``canary_percent`` of its weight to it, so the
   two together keep the target's share of the project's traffic and every other slot keeps
   its own. Sticky assignment is by weights, so the canary serves about ``canary_percent`` of the
   target's users, each always the same. An experiment control = target, variant = canary,
   judged on the schedule's ``canary_metric``, linked to the run (``retraining_run_id``), ends
   at ``now + canary_minutes``. The run completes here.
2. **Decide** (`canaries_decide`, a periodic task): for each running canary whose window
   ended, ``experiment_results`` decides. Unless it says ``control_better`` the canary is
   promoted — the target slot serves the canary's model at the weight both had together,
   the canary slot is switched off, slot history written by the deployment services; on
   ``control_better`` it is rolled back — the canary slot is switched off and the target gets
   its weight back — and the schedule's failure notification goes out. The decision is
   recorded on the experiment (``decision``, status STOPPED); the finished run row is never
   written again, and the run API derives its ``canary`` field from the experiment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q

from recotem.core.exceptions import ApplicationError
from recotem.core.jobs import db_now
from recotem.deployment.models import DeploymentSlot
from recotem.deployment.services import slot_create, slot_set_model, slot_update
from recotem.experiments.models import Experiment
from recotem.experiments.services import (
    experiment_create,
    experiment_start,
    experiment_stop,
)
from recotem.retraining.models import RetrainingRun, RetrainingSchedule
from recotem.retraining.notify import notify_canary_rolled_back
from recotem.training.models import TrainedModel

logger = logging.getLogger(__name__)

CANARY_SUFFIX = "-canary"
_NAME_MAX = 128  # DeploymentSlot.name


class CanaryRefused(Exception):
    """The canary cannot start (one is still running on the target); the gate report says why."""


@dataclass(frozen=True)
class CanaryStarted:
    slot: DeploymentSlot
    experiment: Experiment


def canary_slot_name(target: DeploymentSlot) -> str:
    return target.name[: _NAME_MAX - len(CANARY_SUFFIX)] + CANARY_SUFFIX


def canary_weights(target_weight: int, percent: int) -> tuple[int, int]:
    """(target, canary) weights that keep the target's total: the canary gets ``percent`` of it,
    rounded, at least 1 (a canary of weight 0 would serve nobody and decide nothing)."""
    canary = max(1, round(target_weight * percent / 100))
    return target_weight - canary, canary


def canary_conflict(slot: DeploymentSlot) -> str | None:
    """Why the model of ``slot`` must not change now: it is the target or the canary slot of a
    running canary. None when it may. One query.

    A change would make the experiment judge the candidate against another control (or a
    canary slot that no longer serves the candidate), and the decision at the window's end
    would then overwrite the change. So until the canary ends (its window, or a user's promote
    or stop): a user's change or rollback is a 409 (``deployment.services`` asks this through
    the check ``RetrainingConfig.ready`` registers), another run's deploy completes rejected
    saying why, and a second canary does not start.
    """
    running = (
        Experiment.objects.filter(
            Q(control_slot_id=slot.pk) | Q(variant_slot_id=slot.pk),
            status=Experiment.Status.RUNNING,
            retraining_run_id__isnull=False,
        )
        .order_by("-id")
        .first()
    )
    if running is None:
        return None
    role = "target" if running.control_slot_id == slot.pk else "canary slot"
    until = f" until {running.canary_ends_at:%Y-%m-%d %H:%M} UTC" if running.canary_ends_at else ""
    return (
        f"Slot '{slot.name}' is the {role} of a canary that is still running (experiment "
        f"#{running.pk}, retraining run #{running.retraining_run_id}{until}); its model cannot "
        f"change before the canary ends. Promote or stop experiment #{running.pk} first."
    )


def canary_slot_ids(schedule: RetrainingSchedule) -> list[int]:
    """The variant slots of the project's running canaries."""
    return list(
        Experiment.objects.filter(
            project_id=schedule.project_id,
            status=Experiment.Status.RUNNING,
            retraining_run_id__isnull=False,
        ).values_list("variant_slot_id", flat=True)
    )


@transaction.atomic  # a savepoint: a refused canary leaves no slot changed
def canary_start(
    *,
    run: RetrainingRun,
    schedule: RetrainingSchedule,
    target: DeploymentSlot,
    trained: TrainedModel,
) -> CanaryStarted:
    """Put ``trained`` on the target's canary slot and start the experiment (steps above).

    Call inside the run's finish transaction with ``target`` locked (select_for_update), so a
    run that was ended deploys nothing. Raises CanaryRefused (and changes nothing) while a canary
    of the target runs or when the experiment cannot start.
    """
    conflict = canary_conflict(target)
    if conflict is not None:
        raise CanaryRefused(f"{conflict} Not starting another canary.")
    if target.weight < 1:
        raise CanaryRefused(f"Slot '{target.name}' has weight 0: a canary would serve nobody.")
    changed_by = f"canary of run #{run.pk}"
    target_weight, weight = canary_weights(target.weight, schedule.canary_percent)
    name = canary_slot_name(target)
    try:
        slot = (
            DeploymentSlot.objects.select_for_update()
            .filter(project_id=target.project_id, name=name)
            .first()
        )
        if slot is None:
            slot = slot_create(
                project=schedule.project,
                name=name,
                trained_model=trained,
                weight=weight,
                changed_by=changed_by,
            )
        else:
            slot = slot_set_model(slot=slot, trained_model=trained, changed_by=changed_by)
            slot = slot_update(slot=slot, data={"weight": weight, "is_active": True})
        slot_update(slot=target, data={"weight": target_weight})
        experiment = experiment_create(
            project=schedule.project,
            name=f"Canary of retraining run #{run.pk}"[:128],
            control_slot=target,
            variant_slot=slot,
            metric=schedule.canary_metric,
            retraining_run_id=run.pk,
            canary_ends_at=db_now() + timedelta(minutes=schedule.canary_minutes),
        )
        experiment = experiment_start(experiment)
    except ApplicationError as exc:  # e.g. the target is an arm of a user's running experiment
        raise CanaryRefused(f"The canary could not start: {exc.message}") from None
    return CanaryStarted(slot=slot, experiment=experiment)


def canaries_decide(*, now: datetime | None = None) -> dict[str, int]:
    """Decide every running canary whose window has ended; returns counts per outcome."""
    now = now or db_now()
    report = {"promoted": 0, "rolled_back": 0}
    due = Experiment.objects.filter(
        status=Experiment.Status.RUNNING,
        retraining_run_id__isnull=False,
        canary_ends_at__lte=now,
    ).values_list("pk", flat=True)
    for experiment_id in list(due):
        try:
            outcome = canary_decide(experiment_id=experiment_id)
        except Exception:  # one broken canary must not keep the others from their decision
            logger.exception("could not decide canary experiment %s", experiment_id)
            continue
        if outcome is not None:
            report[outcome] += 1
    return report


def canary_decide(*, experiment_id: int) -> str | None:
    """Promote or roll back one ended canary; None when it was decided already (or is gone).

    One transaction with the experiment row locked, and the stop is experiments' RUNNING →
    STOPPED transition: two deciders (two reapers, a user pressing Stop) never both change the
    slots.
    """
    with transaction.atomic():
        experiment = (
            Experiment.objects.select_for_update()
            .select_related("control_slot", "variant_slot")
            .filter(pk=experiment_id, status=Experiment.Status.RUNNING)
            .first()
        )
        if experiment is None:
            return None
        # Stopping records the decision on the experiment (experiments' own transition).
        experiment = experiment_stop(experiment)
        decision = experiment.decision
        target = DeploymentSlot.objects.select_for_update().get(pk=experiment.control_slot.pk)
        canary = DeploymentSlot.objects.select_for_update().get(pk=experiment.variant_slot.pk)
        run_id = experiment.retraining_run_id
        run = RetrainingRun.objects.filter(pk=run_id).first() if run_id is not None else None
        changed_by = f"canary of run #{experiment.retraining_run_id}"
        together = target.weight + (canary.weight if canary.is_active else 0)
        # Promote only what the run deployed: a canary slot a user pointed elsewhere is not ours.
        intact = canary.is_active and (
            run is None or canary.trained_model_id == run.trained_model_id
        )
        promote = decision != Experiment.Decision.CONTROL_BETTER and intact
        if promote:
            slot_set_model(slot=target, trained_model=canary.trained_model, changed_by=changed_by)
        slot_update(slot=target, data={"weight": min(together, 100)})
        slot_update(slot=canary, data={"is_active": False, "weight": 0})
        if promote:
            Experiment.objects.filter(pk=experiment.pk).update(promoted_slot_id=target.pk)
    if not promote:
        notify_canary_rolled_back(
            experiment=experiment,
            run=run,
            reason=(
                "the experiment says control_better"
                if decision == Experiment.Decision.CONTROL_BETTER
                else "the canary slot no longer serves the run's model"
            ),
        )
    return "promoted" if promote else "rolled_back"


def canary_of_runs(run_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The read-only ``canary`` of runs, by run id: experiment id, status, decision, when the
    window ends and whether the canary was promoted (None while it runs). One query."""
    rows = Experiment.objects.filter(retraining_run_id__in=run_ids).values_list(
        "retraining_run_id", "pk", "status", "decision", "canary_ends_at", "promoted_slot_id"
    )
    return {
        run_id: {
            "experiment": pk,
            "status": status,
            "decision": decision or None,
            "ends_at": ends_at,
            "promoted": None if status != Experiment.Status.STOPPED else promoted is not None,
        }
        for run_id, pk, status, decision, ends_at, promoted in rows
        if run_id is not None
    }
