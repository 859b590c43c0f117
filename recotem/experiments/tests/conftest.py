from __future__ import annotations

from typing import Any

import pytest

from recotem.deployment.models import DeploymentSlot
from recotem.deployment.services import slot_create
from recotem.deployment.tests.factories import completed_model
from recotem.projects.models import Project


@pytest.fixture
def slots(project: Project) -> tuple[DeploymentSlot, DeploymentSlot]:
    """Two active 50/50 slots of alice's project: control and variant."""
    control = slot_create(
        project=project, name="control", trained_model=completed_model(project), weight=50
    )
    variant = slot_create(
        project=project, name="variant", trained_model=completed_model(project), weight=50
    )
    return control, variant


def add_events(experiment_id: int, arm: str, event_type: str, users: Any, **extra: Any) -> None:
    """Events attributed to an experiment's arm, one per user id in ``users``."""
    from django.utils import timezone

    from recotem.experiments.models import Event, Experiment

    experiment = Experiment.objects.get(pk=experiment_id)
    Event.objects.bulk_create(
        Event(
            project_id=experiment.project_id,
            event_type=event_type,
            user_id=str(user),
            item_id="i1",
            timestamp=timezone.now(),
            experiment_id=experiment_id,
            arm=arm,
            slot_id=(
                experiment.control_slot_id if arm == "control" else experiment.variant_slot_id
            ),
            **extra,
        )
        for user in users
    )
