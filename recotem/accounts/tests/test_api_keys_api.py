from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from recotem.accounts.keys import hash_key
from recotem.accounts.models import ApiKey
from recotem.projects.models import Project

URL = "/api/v1/api_keys/"


def _create(client: APIClient, project: Project, **extra: Any) -> Any:
    return client.post(
        URL, {"project": project.id, "name": "app", "scopes": ["predict"], **extra}, format="json"
    )


def test_it_shows_the_key_once_and_stores_only_its_hash(
    alice_client: APIClient, project: Project
) -> None:
    response = _create(alice_client, project, scopes=["predict", "read", "predict"])
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"].startswith("rctm_") and len(body["key"]) > 40
    assert body["scopes"] == ["read", "predict"]
    row = ApiKey.objects.get(pk=body["id"])
    assert row.key_hash == hash_key(body["key"]) and body["key"] not in str(row.__dict__)
    listed = alice_client.get(URL).json()["results"]
    assert listed[0]["prefix"] == body["key"][:12] and "key" not in listed[0]
    assert "key" not in alice_client.get(f"{URL}{row.id}/").json()


@pytest.mark.parametrize("scopes", [[], ["admin"], ["read", "everything"], "predict"])
def test_it_validates_scopes(alice_client: APIClient, project: Project, scopes: Any) -> None:
    response = _create(alice_client, project, scopes=scopes)
    assert response.status_code == 400
    assert "scopes" in response.json()


def test_it_rejects_an_expiry_in_the_past(alice_client: APIClient, project: Project) -> None:
    response = _create(
        alice_client, project, expires_at=(timezone.now() - timedelta(hours=1)).isoformat()
    )
    assert response.status_code == 400
    assert "expires_at" in response.json()


def test_it_refuses_a_project_of_another_user(bob_client: APIClient, project: Project) -> None:
    response = _create(bob_client, project)
    assert response.status_code == 400
    assert "project" in response.json()


def test_it_hides_keys_of_other_users(
    alice_client: APIClient, bob_client: APIClient, project: Project
) -> None:
    key_id = _create(alice_client, project).json()["id"]
    assert bob_client.get(f"{URL}{key_id}/").status_code == 404
    assert bob_client.post(f"{URL}{key_id}/revoke/").status_code == 404
    assert bob_client.delete(f"{URL}{key_id}/").status_code == 404
    assert ApiKey.objects.get(pk=key_id).revoked_at is None


def test_it_revokes_a_key_which_then_stops_working(
    alice_client: APIClient, project: Project
) -> None:
    body = _create(alice_client, project, scopes=["read"]).json()
    key_client = APIClient()
    key_client.credentials(HTTP_X_API_KEY=body["key"])
    assert key_client.get("/api/v1/project/").status_code == 200
    response = alice_client.post(f"{URL}{body['id']}/revoke/")
    assert (
        response.status_code == 200
        and response.json()["revoked_at"]
        and response.json()["is_active"] is False
    )
    assert key_client.get("/api/v1/project/").status_code == 401


def test_it_revokes_on_delete(alice_client: APIClient, project: Project) -> None:
    key_id = _create(alice_client, project).json()["id"]
    assert alice_client.delete(f"{URL}{key_id}/").status_code == 204
    assert ApiKey.objects.get(pk=key_id).revoked_at is not None


def test_it_refuses_expired_keys(alice_client: APIClient, project: Project) -> None:
    body = _create(alice_client, project, scopes=["read"]).json()
    ApiKey.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    key_client = APIClient()
    key_client.credentials(HTTP_X_API_KEY=body["key"])
    assert key_client.get("/api/v1/project/").status_code == 401


def test_it_does_not_let_keys_manage_keys(alice_client: APIClient, project: Project) -> None:
    body = _create(alice_client, project, scopes=["read", "write", "predict"]).json()
    key_client = APIClient()
    key_client.credentials(HTTP_X_API_KEY=body["key"])
    assert key_client.get(URL).status_code == 403
    assert _create(key_client, project).status_code == 403
    assert key_client.post(f"{URL}{body['id']}/revoke/").status_code == 403
    assert key_client.get("/api/v1/auth/user/").status_code == 403


def test_it_records_last_used_at(alice_client: APIClient, project: Project) -> None:
    body = _create(alice_client, project, scopes=["read"]).json()
    assert body["last_used_at"] is None
    key_client = APIClient()
    key_client.credentials(HTTP_X_API_KEY=body["key"])
    key_client.get("/api/v1/project/")
    assert ApiKey.objects.get(pk=body["id"]).last_used_at is not None


def test_it_requires_authentication(project: Project) -> None:
    assert APIClient().get(URL).status_code == 401
