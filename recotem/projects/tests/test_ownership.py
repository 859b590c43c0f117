"""Two users, no cross-access: a foreign id in a URL is a 404, in a body a 400."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from recotem.accounts.keys import generate_key, hash_key
from recotem.accounts.models import ApiKey
from recotem.projects.models import Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_data(alice_client: APIClient, project: Project, small_csv: Path) -> dict[str, int]:
    td = alice_client.post(
        "/api/v1/training_data/",
        {"project": project.id, "file": SimpleUploadedFile("d.csv", small_csv.read_bytes())},
        format="multipart",
    ).json()
    meta = alice_client.post(
        "/api/v1/item_meta_data/",
        {"project": project.id, "file": SimpleUploadedFile("i.csv", b"item_id,t\n1,a\n")},
        format="multipart",
    ).json()
    return {"project": project.id, "training_data": td["id"], "item_meta_data": meta["id"]}


@pytest.mark.parametrize("resource", ["project", "training_data", "item_meta_data"])
def test_it_hides_other_users_objects(
    bob_client: APIClient, alice_data: dict[str, int], resource: str
) -> None:
    object_id = alice_data[resource]
    assert bob_client.get(f"/api/v1/{resource}/").json()["count"] == 0
    assert bob_client.get(f"/api/v1/{resource}/{object_id}/").status_code == 404
    assert bob_client.patch(f"/api/v1/{resource}/{object_id}/", {"name": "x"}).status_code in (
        404,
        405,
    )
    assert bob_client.delete(f"/api/v1/{resource}/{object_id}/").status_code == 404
    if resource != "project":
        assert bob_client.get(f"/api/v1/{resource}/{object_id}/download/").status_code == 404
        assert bob_client.get(f"/api/v1/{resource}/{object_id}/preview/").status_code == 404
        # A foreign project in a filter is answered exactly like a missing one.
        foreign = bob_client.get(f"/api/v1/{resource}/?project={alice_data['project']}")
        missing = bob_client.get(f"/api/v1/{resource}/?project=999999")
        assert foreign.status_code == missing.status_code == 400
        assert foreign.json() == missing.json()
        assert "project" in foreign.json()


@pytest.mark.parametrize("resource", ["training_data", "item_meta_data"])
def test_it_refuses_uploads_into_another_users_project(
    bob_client: APIClient, alice_data: dict[str, int], resource: str
) -> None:
    response = bob_client.post(
        f"/api/v1/{resource}/",
        {
            "project": alice_data["project"],
            "file": SimpleUploadedFile("d.csv", b"user_id,item_id\n1,2\n"),
        },
        format="multipart",
    )
    assert response.status_code == 400
    assert "does not exist" in response.json()["project"][0]


def _key_client(project: Project, scopes: list[str]) -> APIClient:
    raw = generate_key()
    ApiKey.objects.create(
        project=project, name="k", prefix=raw[:10], key_hash=hash_key(raw), scopes=scopes
    )
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw)
    return client


def test_it_limits_api_keys_to_their_project_and_scopes(alice, alice_data: dict[str, int]) -> None:
    other = Project.objects.create(owner=alice, name="other", user_column="u", item_column="i")
    reader = _key_client(other, ["read"])
    assert [p["id"] for p in reader.get("/api/v1/project/").json()["results"]] == [other.id]
    assert reader.get(f"/api/v1/training_data/{alice_data['training_data']}/").status_code == 404
    assert (
        reader.post(
            "/api/v1/project/", {"name": "n", "user_column": "u", "item_column": "i"}
        ).status_code
        == 403
    )
    writer = _key_client(other, ["read", "write"])
    created = writer.post("/api/v1/project/", {"name": "n", "user_column": "u", "item_column": "i"})
    assert created.status_code == 400  # keys are bound to one project
    predict_only = _key_client(other, ["predict"])
    assert predict_only.get("/api/v1/project/").status_code == 403


def test_it_rejects_unknown_revoked_and_expired_keys(
    alice_data: dict[str, int], project: Project
) -> None:
    from django.utils import timezone

    client = APIClient()
    client.credentials(HTTP_X_API_KEY="rctm_not-a-real-key")
    assert client.get("/api/v1/project/").status_code == 401
    raw = generate_key()
    key = ApiKey.objects.create(
        project=project, name="k", prefix=raw[:10], key_hash=hash_key(raw), scopes=["read"]
    )
    client.credentials(HTTP_X_API_KEY=raw)
    assert client.get("/api/v1/project/").status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None
    key.expires_at = timezone.now()
    key.save()
    assert client.get("/api/v1/project/").status_code == 401
    key.expires_at = None
    key.revoked_at = timezone.now()
    key.save()
    assert client.get("/api/v1/project/").status_code == 401
