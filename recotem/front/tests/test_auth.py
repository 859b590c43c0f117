from __future__ import annotations

from typing import Any

from django.test import Client


def test_it_redirects_anonymous_users_to_login(db: Any) -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_it_signs_in_and_out(alice: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    page = client.get("/login/")
    assert 'name="csrfmiddlewaretoken"' in page.content.decode()
    token = page.cookies["csrftoken"].value
    response = client.post(
        "/login/",
        {"username": "alice", "password": "alice-password-1", "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    token = client.cookies["csrftoken"].value
    assert client.post("/logout/", {"csrfmiddlewaretoken": token}).status_code == 302
    assert client.get("/").status_code == 302


def test_it_refuses_a_post_without_csrf_token(alice: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post("/login/", {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 403


def test_it_shows_an_error_for_a_wrong_password(alice: Any) -> None:
    response = Client().post("/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "correct username and password" in response.content.decode()
