from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from recotem.projects.models import Project

pytestmark = pytest.mark.django_db


def _create(client: APIClient, name: str = "shop", **extra: str):
    return client.post(
        "/api/v1/project/",
        {"name": name, "user_column": "user_id", "item_column": "item_id", **extra},
    )


def test_it_creates_a_project_owned_by_the_caller(alice_client: APIClient, alice) -> None:
    response = _create(alice_client, time_column="ts")
    assert response.status_code == 201, response.content
    project = Project.objects.get(pk=response.json()["id"])
    assert project.owner == alice
    assert project.time_column == "ts"


def test_it_keeps_names_unique_per_owner_only(
    alice_client: APIClient, bob_client: APIClient
) -> None:
    assert _create(alice_client).status_code == 201
    second = _create(alice_client)
    assert second.status_code == 400
    assert second.json() == {"name": ["You already have a project with this name."]}
    assert _create(bob_client).status_code == 201


def test_it_rejects_equal_user_and_item_columns(alice_client: APIClient) -> None:
    response = alice_client.post(
        "/api/v1/project/", {"name": "x", "user_column": "id", "item_column": "id"}
    )
    assert response.status_code == 400
    assert "item_column" in response.json()


def test_it_paginates_and_filters(alice_client: APIClient) -> None:
    for i in range(3):
        _create(alice_client, name=f"p{i}")
    page = alice_client.get("/api/v1/project/?page_size=2").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert [p["name"] for p in alice_client.get("/api/v1/project/?name=p1").json()["results"]] == [
        "p1"
    ]


def test_it_serves_ping_and_the_openapi_schema(alice_client: APIClient) -> None:
    ping = APIClient().get("/api/v1/ping/")
    assert ping.status_code == 200 and ping.json()["success"] is True
    assert "worker" in ping.json() and "beat" in ping.json()
    schema = alice_client.get("/api/v1/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/training_data/" in schema.content
    assert alice_client.get("/api/v1/docs/").status_code == 200
