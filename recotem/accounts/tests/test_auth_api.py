from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttle() -> None:
    cache.clear()


def test_it_logs_in_with_username_and_password(alice: User) -> None:
    response = APIClient().post("/api/v1/auth/login/", {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access", "refresh", "user"}
    assert body["user"]["username"] == "alice"


def test_it_refuses_a_wrong_password(alice: User) -> None:
    response = APIClient().post("/api/v1/auth/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 401
    assert "non_field_errors" in response.json()


def test_it_names_missing_fields(db: None) -> None:
    response = APIClient().post("/api/v1/auth/login/", {"username": "alice"})
    assert response.status_code == 400
    assert response.json() == {"password": ["This field is required."]}


def test_it_refreshes_tokens_and_accepts_the_new_access_token(alice: User) -> None:
    client = APIClient()
    tokens = client.post("/api/v1/auth/login/", {"username": "alice", "password": "alice-password-1"}).json()
    refreshed = client.post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]})
    assert refreshed.status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    assert client.get("/api/v1/project/").status_code == 200


def test_it_requires_authentication_for_resources(db: None) -> None:
    assert APIClient().get("/api/v1/project/").status_code == 401
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert client.get("/api/v1/project/").status_code == 401


def test_it_rate_limits_login(alice: User) -> None:
    client = APIClient()
    statuses = [
        client.post("/api/v1/auth/login/", {"username": "alice", "password": "wrong"}).status_code
        for _ in range(12)
    ]
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429, 429]


def test_it_lets_the_session_of_a_logged_in_user_use_the_api(alice: User) -> None:
    client = APIClient()
    client.force_login(alice)
    assert client.get("/api/v1/project/").status_code == 200
