from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from recotem.accounts.services import api_key_create
from recotem.core.jobs import JobStatus
from recotem.deployment.models import DeploymentSlot, RoutingVersion, SlotHistory
from recotem.deployment.services import slot_create, slot_set_model
from recotem.deployment.tests.factories import completed_model
from recotem.projects.models import Project

URL = "/api/v1/deployment_slot/"


def _version() -> int:
    row = RoutingVersion.objects.filter(pk=1).first()
    return row.version if row else 0


@pytest.fixture
def model(project: Project) -> Any:
    return completed_model(project)


def test_it_creates_a_slot_and_records_history(
    alice_client: APIClient, project: Project, model: Any
) -> None:
    before = _version()
    response = alice_client.post(
        URL, {"project": project.id, "name": "main", "trained_model": model.id, "weight": 70}
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["weight"] == 70 and body["is_active"] is True and body["trained_model"] == model.id
    assert SlotHistory.objects.filter(slot_id=body["id"], trained_model_id=model.pk).count() == 1
    assert _version() > before


def test_it_rejects_a_duplicate_name_in_the_project(
    alice_client: APIClient, project: Project, model: Any
) -> None:
    slot_create(project=project, name="main", trained_model=model)
    response = alice_client.post(
        URL, {"project": project.id, "name": "main", "trained_model": model.id}
    )
    assert response.status_code == 400
    assert "name" in response.json()


@pytest.mark.parametrize("weight", [-1, 101, "heavy"])
def test_it_rejects_a_weight_out_of_range(
    alice_client: APIClient, project: Project, model: Any, weight: Any
) -> None:
    response = alice_client.post(
        URL, {"project": project.id, "name": "w", "trained_model": model.id, "weight": weight}
    )
    assert response.status_code == 400
    assert "weight" in response.json()


def test_it_rejects_a_model_that_is_not_completed(
    alice_client: APIClient, project: Project
) -> None:
    pending = completed_model(project, status=JobStatus.PENDING)
    response = alice_client.post(
        URL, {"project": project.id, "name": "p", "trained_model": pending.id}
    )
    assert response.status_code == 400
    assert "trained_model" in response.json()


def test_it_rejects_a_model_of_another_project(
    alice_client: APIClient, project: Project, alice: Any
) -> None:
    other = Project.objects.create(owner=alice, name="books", user_column="u", item_column="i")
    foreign = completed_model(other)
    response = alice_client.post(
        URL, {"project": project.id, "name": "x", "trained_model": foreign.id}
    )
    assert response.status_code == 400
    assert "trained_model" in response.json()


def test_it_refuses_foreign_ids(bob_client: APIClient, project: Project, model: Any) -> None:
    slot = slot_create(project=project, name="main", trained_model=model)
    assert bob_client.get(f"{URL}{slot.id}/").status_code == 404
    assert bob_client.post(f"{URL}{slot.id}/rollback/").status_code == 404
    assert bob_client.get(f"{URL}{slot.id}/history/").status_code == 404
    response = bob_client.post(
        URL, {"project": project.id, "name": "steal", "trained_model": model.id}
    )
    assert response.status_code == 400
    assert set(response.json()) >= {"project"}
    assert bob_client.get(URL).json()["count"] == 0


def test_it_changes_the_model_keeping_the_weight_and_rolls_back(
    alice_client: APIClient, project: Project, model: Any
) -> None:
    slot = slot_create(project=project, name="main", trained_model=model, weight=30)
    newer = completed_model(project)
    before = _version()
    response = alice_client.patch(f"{URL}{slot.id}/", {"trained_model": newer.id})
    assert response.status_code == 200, response.content
    assert response.json()["weight"] == 30 and response.json()["trained_model"] == newer.id
    assert _version() > before

    response = alice_client.post(f"{URL}{slot.id}/rollback/")
    assert response.status_code == 200, response.content
    assert response.json()["trained_model"] == model.id
    history = alice_client.get(f"{URL}{slot.id}/history/").json()["results"]
    assert [(h["trained_model"], h["changed_by"]) for h in history] == [
        (model.id, "rollback"),
        (newer.id, "user"),
        (model.id, "user"),
    ]


def test_it_refuses_a_rollback_without_a_previous_model(
    alice_client: APIClient, project: Project, model: Any
) -> None:
    slot = slot_create(project=project, name="main", trained_model=model)
    response = alice_client.post(f"{URL}{slot.id}/rollback/")
    assert response.status_code == 400
    assert "previous" in str(response.json())


def test_it_bumps_the_routing_version_on_admin_style_saves(project: Project, model: Any) -> None:
    slot = slot_create(project=project, name="main", trained_model=model)
    before = _version()
    slot.weight = 5
    slot.save()  # what the admin does
    assert _version() == before + 1
    slot.delete()
    assert _version() == before + 2


def test_it_records_auto_deploy_changes(project: Project, model: Any) -> None:
    slot = slot_create(project=project, name="main", trained_model=model)
    newer = completed_model(project)
    slot_set_model(slot=slot, trained_model=newer, changed_by="auto-deploy")
    slot.refresh_from_db()
    assert slot.trained_model_id == newer.id
    assert slot.history.first().changed_by == "auto-deploy"
    assert slot.history.first().previous_model_id == model.id


def test_it_lets_keys_read_and_write_slots_of_their_project_only(
    project: Project, model: Any, alice: Any
) -> None:
    slot = slot_create(project=project, name="main", trained_model=model)
    other = Project.objects.create(owner=alice, name="books", user_column="u", item_column="i")
    other_slot = slot_create(project=other, name="main", trained_model=completed_model(other))
    _, read_raw = api_key_create(project=project, name="r", scopes=["read"])
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=read_raw)
    assert client.get(f"{URL}{slot.id}/").status_code == 200
    assert client.get(f"{URL}{other_slot.id}/").status_code == 404
    assert client.patch(f"{URL}{slot.id}/", {"weight": 1}).status_code == 403
    _, write_raw = api_key_create(project=project, name="w", scopes=["write"])
    client.credentials(HTTP_X_API_KEY=write_raw)
    assert client.patch(f"{URL}{slot.id}/", {"weight": 1}).status_code == 200
    assert DeploymentSlot.objects.get(pk=slot.id).weight == 1


def test_it_records_history_for_admin_edits_so_rollback_works(
    project: Project, model: Any, admin_client: Any
) -> None:
    newer = completed_model(project)
    form = {"project": project.pk, "name": "admin-made", "trained_model": model.pk, "weight": 100}
    add = admin_client.post("/admin/deployment/deploymentslot/add/", {**form, "is_active": "on"})
    assert add.status_code == 302, add.content.decode()[:3000]
    slot = DeploymentSlot.objects.get(name="admin-made")
    change = f"/admin/deployment/deploymentslot/{slot.pk}/change/"
    assert (
        admin_client.post(
            change, {**form, "trained_model": newer.pk, "is_active": "on"}
        ).status_code
        == 302
    )
    # No model change: no history entry.
    assert (
        admin_client.post(
            change, {**form, "trained_model": newer.pk, "weight": 10, "is_active": "on"}
        ).status_code
        == 302
    )
    slot.refresh_from_db()
    assert (slot.trained_model_id, slot.weight) == (newer.id, 10)
    assert [
        (h.trained_model_id, h.previous_model_id, h.changed_by) for h in slot.history.order_by("id")
    ] == [
        (model.id, None, "admin"),
        (newer.id, model.id, "admin"),
    ]
    from recotem.deployment.services import slot_rollback

    assert slot_rollback(slot=slot).trained_model_id == model.id
    assert slot.history.count() == 3
