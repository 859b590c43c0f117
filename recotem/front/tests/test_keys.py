from __future__ import annotations

from django.test import Client

from recotem.accounts.keys import hash_key
from recotem.accounts.models import ApiKey
from recotem.projects.models import Project


def test_it_shows_a_new_key_once(web: Client, project: Project) -> None:
    response = web.post(f"/projects/{project.pk}/keys/", {"name": "shop", "scopes": ["predict"]})
    body = response.content.decode()
    key = ApiKey.objects.get(project=project)
    raw = body.split('<code id="raw-key">')[1].split("</code>")[0]
    assert hash_key(raw) == key.key_hash
    assert 'data-copy="raw-key"' in body
    assert raw not in web.get(f"/projects/{project.pk}/keys/").content.decode()


def test_it_requires_a_scope(web: Client, project: Project) -> None:
    response = web.post(f"/projects/{project.pk}/keys/", {"name": "shop"})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert not ApiKey.objects.exists()


def test_it_revokes_a_key(web: Client, project: Project) -> None:
    web.post(f"/projects/{project.pk}/keys/", {"name": "shop", "scopes": ["predict"]})
    key = ApiKey.objects.get()
    assert web.post(f"/projects/{project.pk}/keys/{key.pk}/revoke/").status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert "badge-revoked" in web.get(f"/projects/{project.pk}/keys/").content.decode()
