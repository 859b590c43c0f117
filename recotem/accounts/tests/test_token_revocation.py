"""A password change by any path makes every older token of the user fail at once."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

pytestmark = pytest.mark.django_db

NEW = "a-brand-new-password-9"


def _tokens() -> dict[str, str]:
    response = APIClient().post(
        "/api/v1/auth/login/", {"username": "alice", "password": "alice-password-1"}
    )
    assert response.status_code == 200
    return response.json()


def _works(tokens: dict[str, str]) -> tuple[bool, bool]:
    """(access token accepted, refresh token accepted)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    access = client.get("/api/v1/project/").status_code == 200
    refresh = (
        APIClient().post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]}).status_code
        == 200
    )
    return access, refresh


def _via_api(alice: User) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {_tokens()['access']}")
    response = client.post(
        "/api/v1/auth/password/", {"old_password": "alice-password-1", "new_password": NEW}
    )
    assert response.status_code == 200, response.content
    assert "no-store" in response["Cache-Control"]
    assert _works(response.json()) == (True, True)  # the new pair works


def _via_ui(alice: User) -> None:
    web = Client()
    web.post("/login/", {"username": "alice", "password": "alice-password-1"})
    response = web.post(
        "/account/password/",
        {"old_password": "alice-password-1", "new_password1": NEW, "new_password2": NEW},
    )
    assert response.status_code == 302, response.content
    assert web.get("/").status_code == 200  # this session stays signed in


def _via_admin(alice: User) -> None:
    User.objects.create_superuser("root", password="root-password-1")
    admin = Client()
    admin.force_login(User.objects.get(username="root"))
    response = admin.post(
        f"/admin/auth/user/{alice.pk}/password/", {"password1": NEW, "password2": NEW}
    )
    assert response.status_code == 302, response.content


def _via_changepassword(alice: User, monkeypatch: Any) -> None:
    monkeypatch.setattr("getpass.getpass", lambda *_, **__: NEW)
    call_command("changepassword", "alice", stdout=io.StringIO())


def _via_set_password(alice: User) -> None:
    user = User.objects.get(pk=alice.pk)
    user.set_password(NEW)
    user.save()


def _via_raw_update(alice: User) -> None:
    from django.contrib.auth.hashers import make_password

    User.objects.filter(pk=alice.pk).update(password=make_password(NEW))  # no signals at all


@pytest.mark.parametrize(
    "change",
    [_via_api, _via_ui, _via_admin, _via_changepassword, _via_set_password, _via_raw_update],
)
def test_it_revokes_every_older_token_when_the_password_changes(
    alice: User, change: Callable[..., None], monkeypatch: Any
) -> None:
    old = _tokens()
    assert _works(old) == (True, True)
    other = _tokens()
    if change is _via_changepassword:
        change(alice, monkeypatch)
    else:
        change(alice)
    assert _works(old) == (False, False)
    assert _works(other)[0] is False


def test_it_blacklists_the_refresh_tokens_of_a_changed_password(alice: User) -> None:
    _tokens(), _tokens()
    _via_set_password(alice)
    outstanding = OutstandingToken.objects.filter(user=alice)
    assert outstanding.count() == 2
    assert BlacklistedToken.objects.filter(token__in=outstanding).count() == 2


def test_it_leaves_tokens_alone_when_other_fields_change(alice: User) -> None:
    tokens = _tokens()
    user = User.objects.get(pk=alice.pk)
    user.email = "alice@example.com"
    user.save()
    assert _works(tokens) == (True, True)


def test_it_refuses_a_wrong_old_password_with_a_field_error(alice: User) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {_tokens()['access']}")
    response = client.post("/api/v1/auth/password/", {"old_password": "nope", "new_password": NEW})
    assert response.status_code == 400 and "old_password" in response.json()
    short = client.post(
        "/api/v1/auth/password/", {"old_password": "alice-password-1", "new_password": "x"}
    )
    assert short.status_code == 400 and "new_password" in short.json()


def test_it_answers_401_for_a_refresh_token_of_a_deleted_user(alice: User) -> None:
    tokens = _tokens()
    User.objects.filter(pk=alice.pk).delete()
    response = APIClient().post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]})
    assert response.status_code == 401
