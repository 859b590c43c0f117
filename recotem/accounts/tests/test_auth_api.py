from __future__ import annotations

from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

LOGIN = "/api/v1/auth/login/"


def _login(client: APIClient, password: str = "alice-password-1", **extra: Any) -> Any:
    return client.post(LOGIN, {"username": "alice", "password": password}, **extra)


def test_it_logs_in_with_username_and_password(alice: User) -> None:
    response = _login(APIClient())
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access", "refresh", "user"}
    assert body["user"]["username"] == "alice"
    assert "no-store" in response["Cache-Control"]


def test_it_refuses_a_wrong_password(alice: User) -> None:
    response = _login(APIClient(), "nope")
    assert response.status_code == 401
    assert "non_field_errors" in response.json()


def test_it_names_missing_fields(db: None) -> None:
    response = APIClient().post(LOGIN, {"username": "alice"})
    assert response.status_code == 400
    assert response.json() == {"password": ["This field is required."]}


def test_it_refuses_an_overlong_username_with_400(db: None) -> None:
    response = APIClient().post(LOGIN, {"username": "a" * 151, "password": "x"})
    assert response.status_code == 400 and "username" in response.json()


def test_it_refreshes_tokens_and_accepts_the_new_access_token(alice: User) -> None:
    client = APIClient()
    tokens = _login(client).json()
    refreshed = client.post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]})
    assert refreshed.status_code == 200
    assert set(refreshed.json()) == {"access", "refresh"}
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    assert client.get("/api/v1/project/").status_code == 200


def test_it_rotates_refresh_tokens_so_a_used_one_is_refused(alice: User) -> None:
    client = APIClient()
    first = _login(client).json()["refresh"]
    second = client.post("/api/v1/auth/token/refresh/", {"refresh": first}).json()["refresh"]
    assert second != first
    reused = client.post("/api/v1/auth/token/refresh/", {"refresh": first})
    assert reused.status_code == 401
    assert client.post("/api/v1/auth/token/refresh/", {"refresh": second}).status_code == 200


def test_it_revokes_the_refresh_token_on_logout(alice: User) -> None:
    client = APIClient()
    refresh = _login(client).json()["refresh"]
    assert client.post("/api/v1/auth/logout/", {"refresh": refresh}).status_code == 204
    assert client.post("/api/v1/auth/token/refresh/", {"refresh": refresh}).status_code == 401
    assert client.post("/api/v1/auth/logout/", {"refresh": "junk"}).status_code == 401


def test_it_requires_authentication_for_resources(db: None) -> None:
    assert APIClient().get("/api/v1/project/").status_code == 401
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert client.get("/api/v1/project/").status_code == 401


def test_it_locks_a_username_after_ten_failures_even_for_the_right_password(
    alice: User,
) -> None:
    client = APIClient()
    # A different forwarded address on every try: the lock does not care.
    statuses = [
        _login(client, "wrong", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}").status_code
        for n in range(10)
    ]
    assert statuses == [401] * 9 + [429]
    locked = _login(client, HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert locked.status_code == 429
    assert "Too many failed sign-in attempts" in locked.json()["detail"]
    assert int(locked["Retry-After"]) == 15 * 60
    assert "access" not in locked.json()


def test_it_locks_a_client_address_that_tries_many_usernames(alice: User, bob: User) -> None:
    client = APIClient()
    for n in range(10):
        client.post(LOGIN, {"username": f"nobody-{n}", "password": "x"})
    # bob's own password from the same address is refused while the address is locked.
    response = client.post(LOGIN, {"username": "bob", "password": "bob-password-1"})
    assert response.status_code == 429


def test_it_trusts_forwarded_addresses_only_from_configured_proxies(
    alice: User, bob: User, settings: Any
) -> None:
    settings.RECOTEM_TRUSTED_PROXIES = "1"
    client = APIClient()
    for n in range(10):
        client.post(
            LOGIN,
            {"username": f"nobody-{n}", "password": "x"},
            HTTP_X_FORWARDED_FOR="192.0.2.50",
        )
    # The proxy reported another client: that one is not locked.
    ok = client.post(
        LOGIN, {"username": "bob", "password": "bob-password-1"}, HTTP_X_FORWARDED_FOR="192.0.2.9"
    )
    assert ok.status_code == 200
    assert AccessAttempt.objects.filter(ip_address="192.0.2.50").exists()
    assert not AccessAttempt.objects.filter(ip_address="127.0.0.1").exists()


def test_it_lets_an_admin_clear_a_lock(alice: User) -> None:
    client = APIClient()
    for _ in range(10):
        _login(client, "wrong")
    assert _login(client).status_code == 429
    assert AccessAttempt.objects.filter(username="alice").exists()  # visible in the admin
    call_command("axes_reset_username", "alice", verbosity=0)
    call_command("axes_reset_ip", "127.0.0.1", verbosity=0)
    assert _login(client).status_code == 200


def test_it_shows_the_lock_in_the_admin(alice: User, admin_client: Client) -> None:
    for _ in range(10):
        _login(APIClient(), "wrong")
    page = admin_client.get("/admin/axes/accessattempt/")
    assert page.status_code == 200 and "alice" in page.content.decode()


def test_it_locks_the_ui_and_admin_login_pages_too(alice: User) -> None:
    browser = Client()
    for _ in range(5):
        browser.post("/login/", {"username": "alice", "password": "wrong"})
    for _ in range(5):
        browser.post("/admin/login/", {"username": "alice", "password": "wrong"})
    ui = browser.post("/login/", {"username": "alice", "password": "alice-password-1"})
    assert ui.status_code == 429
    assert "Sign-in temporarily locked" in ui.content.decode()
    admin = browser.post("/admin/login/", {"username": "alice", "password": "alice-password-1"})
    assert admin.status_code == 429
    assert _login(APIClient()).status_code == 429  # one policy for all three doors


def test_it_counts_wrong_old_passwords_on_the_ui_password_page_towards_the_lock(
    alice: User,
) -> None:
    browser = Client()
    browser.force_login(alice)  # a stolen session guessing the current password
    for _ in range(10):
        wrong = browser.post(
            "/account/password/",
            {
                "old_password": "guess",
                "new_password1": "N3w-pass-wd!",
                "new_password2": "N3w-pass-wd!",
            },
        )
    assert wrong.status_code in (200, 429)
    right = browser.post(
        "/account/password/",
        {
            "old_password": "alice-password-1",
            "new_password1": "N3w-pass-wd!",
            "new_password2": "N3w-pass-wd!",
        },
    )
    assert right.status_code == 429
    alice.refresh_from_db()
    assert alice.check_password("alice-password-1")
    assert _login(APIClient()).status_code == 429


def test_it_does_not_let_a_web_session_use_the_api(alice: User) -> None:
    client = APIClient()
    client.force_login(alice)
    assert client.get("/api/v1/project/").status_code == 401
