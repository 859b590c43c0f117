"""Reads for the inference app: which slots are arms of a running experiment."""

from __future__ import annotations

from dataclasses import dataclass

from recotem.experiments.models import Experiment


@dataclass(frozen=True, slots=True)
class SlotArm:
    experiment_id: int
    arm: str  # "control" or "variant"


def running_arms() -> dict[int, SlotArm]:
    """``{slot id: SlotArm}`` for every slot that is an arm of a RUNNING experiment. One query.

    ``experiment_start`` refuses a slot that is already an arm elsewhere, so each slot appears
    at most once.
    """
    arms: dict[int, SlotArm] = {}
    rows = Experiment.objects.filter(status=Experiment.Status.RUNNING).values_list(
        "id", "control_slot_id", "variant_slot_id"
    )
    for experiment_id, control, variant in rows:
        arms[control] = SlotArm(experiment_id, "control")
        arms[variant] = SlotArm(experiment_id, "variant")
    return arms


def arm_for_slot(slot_id: int) -> SlotArm | None:
    """The running experiment and arm ``slot_id`` belongs to, if any."""
    return running_arms().get(slot_id)


def running_experiment_for(control_slot_id: int, variant_slot_id: int) -> Experiment | None:
    """The RUNNING experiment between exactly these two slots, if any."""
    return Experiment.objects.filter(
        status=Experiment.Status.RUNNING,
        control_slot_id=control_slot_id,
        variant_slot_id=variant_slot_id,
    ).first()
