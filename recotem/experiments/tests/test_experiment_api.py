"""`/api/v1/experiment/`: validation, ownership, the DRAFT -> RUNNING -> STOPPED walk, promote."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from recotem.accounts.services import api_key_create
from recotem.deployment.models import DeploymentSlot, RoutingVersion, SlotHistory
from recotem.deployment.services import slot_create
from recotem.deployment.tests.factories import completed_model
from recotem.experiments.models import Experiment
from recotem.experiments.tests.conftest import add_events
from recotem.projects.models import Project

URL = "/api/v1/experiment/"


def _version() -> int:
    row = RoutingVersion.objects.filter(pk=1).first()
    return row.version if row else 0


def _create(client: APIClient, project: Project, slots: Any, **extra: Any) -> Any:
    control, variant = slots
    body = {
        "project": project.pk,
        "name": "ials vs toppop",
        "control_slot": control.pk,
        "variant_slot": variant.pk,
        **extra,
    }
    return client.post(URL, body, format="json")


def test_it_creates_a_draft_with_defaults(
    alice_client: APIClient, project: Project, slots: Any
) -> None:
    response = _create(alice_client, project, slots)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "DRAFT" and body["metric"] == "click" and body["alpha"] == 0.05
    assert body["min_effect"] is None and body["decision"] == ""


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"alpha": 0}, "alpha"),
        ({"alpha": 1}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"metric": "Bad-Type"}, "metric"),
        ({"metric": "x" * 33}, "metric"),
        ({"metric": "impression"}, "metric"),
        ({"min_effect": 0}, "min_effect"),
        ({"min_effect": 2}, "min_effect"),
        ({"name": ""}, "name"),
    ],
)
def test_it_rejects_bad_fields_naming_them(
    alice_client: APIClient, project: Project, slots: Any, extra: dict[str, Any], field: str
) -> None:
    response = _create(alice_client, project, slots, **extra)
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Experiment.objects.exists()


def test_it_rejects_the_same_slot_twice_and_inactive_slots(
    alice_client: APIClient, project: Project, slots: Any
) -> None:
    control, variant = slots
    same = _create(alice_client, project, (control, control))
    assert same.status_code == 400 and "variant_slot" in same.json()
    DeploymentSlot.objects.filter(pk=variant.pk).update(is_active=False)
    inactive = _create(alice_client, project, slots)
    assert inactive.status_code == 400 and "variant_slot" in inactive.json()


def test_it_rejects_slots_of_other_projects(
    alice_client: APIClient, alice: Any, bob: Any, project: Project, slots: Any
) -> None:
    other = Project.objects.create(owner=alice, name="other", user_column="u", item_column="i")
    foreign_slot = slot_create(project=other, name="x", trained_model=completed_model(other))
    mixed = _create(alice_client, project, (slots[0], foreign_slot))
    assert mixed.status_code == 400 and "variant_slot" in mixed.json()
    bobs = Project.objects.create(owner=bob, name="b", user_column="u", item_column="i")
    bob_slot = slot_create(project=bobs, name="x", trained_model=completed_model(bobs))
    stolen = _create(alice_client, project, (slots[0], bob_slot))
    assert stolen.status_code == 400 and "variant_slot" in stolen.json()


def test_it_answers_another_owners_experiment_with_404(
    alice_client: APIClient, bob_client: APIClient, project: Project, slots: Any
) -> None:
    pk = _create(alice_client, project, slots).json()["id"]
    assert bob_client.get(f"{URL}{pk}/").status_code == 404
    assert bob_client.get(f"{URL}{pk}/results/").status_code == 404
    for verb in ("start", "stop", "promote"):
        assert bob_client.post(f"{URL}{pk}/{verb}/").status_code == 404
    assert bob_client.delete(f"{URL}{pk}/").status_code == 404
    assert bob_client.get(URL).json()["count"] == 0
    assert Experiment.objects.get(pk=pk).status == "DRAFT"


def test_it_walks_draft_running_stopped(
    alice_client: APIClient, project: Project, slots: Any
) -> None:
    pk = _create(alice_client, project, slots).json()["id"]
    before = _version()
    started = alice_client.post(f"{URL}{pk}/start/")
    assert started.status_code == 200, started.content
    body = started.json()
    assert body["status"] == "RUNNING" and body["started_at"]
    assert (body["control_weight"], body["variant_weight"]) == (50, 50)
    assert _version() > before  # inference learns the arms on its next poll
    assert alice_client.post(f"{URL}{pk}/start/").status_code == 409
    assert alice_client.delete(f"{URL}{pk}/").status_code == 409
    stopped = alice_client.post(f"{URL}{pk}/stop/")
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "STOPPED" and stopped.json()["decision"] == "continue"
    assert alice_client.post(f"{URL}{pk}/stop/").status_code == 409
    assert alice_client.post(f"{URL}{pk}/start/").status_code == 409
    assert alice_client.get(URL, {"status": "STOPPED"}).json()["count"] == 1


def test_it_refuses_a_slot_that_is_in_another_running_experiment(
    alice_client: APIClient, project: Project, slots: Any
) -> None:
    first = _create(alice_client, project, slots).json()["id"]
    second = _create(alice_client, project, slots[::-1]).json()["id"]
    assert alice_client.post(f"{URL}{first}/start/").status_code == 200
    refused = alice_client.post(f"{URL}{second}/start/")
    assert refused.status_code == 400 and Experiment.objects.get(pk=second).status == "DRAFT"


def test_it_promotes_the_winner_and_records_slot_history(
    alice_client: APIClient, project: Project, slots: Any
) -> None:
    control, variant = slots
    pk = _create(alice_client, project, slots).json()["id"]
    alice_client.post(f"{URL}{pk}/start/")
    add_events(pk, "control", "impression", range(2000))
    add_events(pk, "control", "click", range(200))
    add_events(pk, "variant", "impression", range(2000, 4000))
    add_events(pk, "variant", "click", range(2000, 2400))
    assert alice_client.get(f"{URL}{pk}/results/").json()["decision"] == "variant_better"
    promoted = alice_client.post(f"{URL}{pk}/promote/")
    assert promoted.status_code == 200, promoted.content
    body = promoted.json()
    assert body["status"] == "STOPPED" and body["decision"] == "variant_better"
    assert body["promoted_slot"] == variant.pk
    variant.refresh_from_db()
    control.refresh_from_db()
    assert variant.weight == 100 and variant.is_active and not control.is_active
    notes = set(SlotHistory.objects.values_list("changed_by", flat=True))
    assert f"experiment #{pk}: promoted" in notes and f"experiment #{pk}: deactivated" in notes


def test_it_promotes_a_named_slot_but_never_guesses_a_winner(
    alice_client: APIClient, project: Project, slots: Any
) -> None:
    control, variant = slots
    pk = _create(alice_client, project, slots).json()["id"]
    assert alice_client.post(f"{URL}{pk}/promote/").status_code == 409  # a draft
    alice_client.post(f"{URL}{pk}/start/")
    undecided = alice_client.post(f"{URL}{pk}/promote/", {}, format="json")
    assert undecided.status_code == 400 and "slot" in undecided.json()
    assert Experiment.objects.get(pk=pk).status == "RUNNING"  # a refused promote changes nothing
    other = alice_client.post(f"{URL}{pk}/promote/", {"slot": 999999}, format="json")
    assert other.status_code == 400 and "slot" in other.json()
    chosen = alice_client.post(f"{URL}{pk}/promote/", {"slot": control.pk}, format="json")
    assert chosen.status_code == 200 and chosen.json()["promoted_slot"] == control.pk
    control.refresh_from_db()
    variant.refresh_from_db()
    assert control.weight == 100 and control.is_active and not variant.is_active


def test_it_needs_read_to_look_and_write_to_act_with_an_api_key(
    alice_client: APIClient, project: Project, slots: Any
) -> None:
    pk = _create(alice_client, project, slots).json()["id"]
    _, read_key = api_key_create(project=project, name="r", scopes=["read"])
    _, write_key = api_key_create(project=project, name="w", scopes=["read", "write"])
    reader = APIClient(HTTP_X_API_KEY=read_key)
    assert reader.get(f"{URL}{pk}/results/").status_code == 200
    assert reader.post(f"{URL}{pk}/start/").status_code == 403
    writer = APIClient(HTTP_X_API_KEY=write_key)
    assert writer.post(f"{URL}{pk}/start/").status_code == 200
