"""After SECRET_KEY changes, RECOTEM_SECRET_KEY_FALLBACKS keeps sessions and API keys working."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from recotem.accounts.keys import hash_key
from recotem.accounts.models import ApiKey
from recotem.accounts.services import api_key_create
from recotem.projects.models import Project

pytestmark = pytest.mark.django_db

NEW_SECRET = "the-rotated-secret-key-" + "r" * 40


def test_it_keeps_a_web_session_signed_in_across_a_rotation(alice: User, settings: Any) -> None:
    web = Client()
    web.post("/login/", {"username": "alice", "password": "alice-password-1"})
    assert web.get("/").status_code == 200
    old = settings.SECRET_KEY
    settings.SECRET_KEY = NEW_SECRET
    settings.SECRET_KEY_FALLBACKS = [old]
    assert web.get("/").status_code == 200
    settings.SECRET_KEY_FALLBACKS = []
    fresh = Client()
    fresh.cookies = web.cookies
    # Django upgraded the session's hash while the fallback was there: still signed in.
    assert fresh.get("/").status_code == 200


def test_it_signs_a_session_out_when_the_old_key_is_simply_dropped(
    alice: User, settings: Any
) -> None:
    web = Client()
    web.post("/login/", {"username": "alice", "password": "alice-password-1"})
    settings.SECRET_KEY = NEW_SECRET
    settings.SECRET_KEY_FALLBACKS = []
    assert web.get("/").status_code == 302  # what the fallback prevents


def test_it_keeps_api_keys_working_and_rehashes_them(project: Project, settings: Any) -> None:
    key, raw = api_key_create(project=project, name="k", scopes=["read"])
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw)
    old = settings.SECRET_KEY
    settings.SECRET_KEY = NEW_SECRET
    settings.SECRET_KEY_FALLBACKS = []
    assert client.get("/api/v1/project/").status_code == 401  # without the fallback
    settings.SECRET_KEY_FALLBACKS = [old]
    assert client.get("/api/v1/project/").status_code == 200
    assert ApiKey.objects.get(pk=key.pk).key_hash == hash_key(raw)  # now under the new key
    settings.SECRET_KEY_FALLBACKS = []
    assert client.get("/api/v1/project/").status_code == 200
