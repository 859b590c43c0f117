from __future__ import annotations

from typing import Any

from django.test import Client

from recotem.projects.models import Project


def test_it_shows_an_empty_state_without_projects(web: Client) -> None:
    body = web.get("/").content.decode()
    assert "No projects yet." in body
    assert '<label for="id_name">Project name</label>' in body


def test_it_creates_a_project_and_goes_to_data(web: Client, alice: Any) -> None:
    response = web.post(
        "/", {"name": "shop", "user_column": "u", "item_column": "i", "time_column": ""}
    )
    project = Project.objects.get(owner=alice, name="shop")
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.pk}/data/"


def test_it_rejects_duplicate_names_and_equal_columns_inline(web: Client, project: Project) -> None:
    response = web.post("/", {"name": "movies", "user_column": "x", "item_column": "x"})
    body = response.content.decode()
    assert response.status_code == 400
    assert "You already have a project with this name." in body
    assert "Must differ from the user column." in body


def test_it_hides_other_users_projects(web: Client, bob: Any) -> None:
    other = Project.objects.create(owner=bob, name="secret", user_column="u", item_column="i")
    assert "secret" not in web.get("/").content.decode()
    for url in ("", "data/", "tuning/", "models/", "deployment/", "retraining/", "keys/"):
        assert web.get(f"/projects/{other.pk}/{url}").status_code == 404


def test_it_renders_every_project_page_empty(web: Client, project: Project) -> None:
    for url in ("", "data/", "tuning/", "models/", "deployment/", "retraining/", "keys/"):
        response = web.get(f"/projects/{project.pk}/{url}")
        assert response.status_code == 200, url
        assert 'aria-label="Project"' in response.content.decode()
