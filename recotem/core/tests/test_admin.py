from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import Client


@pytest.mark.django_db
def test_it_lists_every_recotem_model_in_the_admin() -> None:
    ours = [m for m in apps.get_models() if m.__module__.startswith("recotem.")]
    assert ours
    missing = [m.__name__ for m in ours if m not in admin.site._registry]
    assert missing == []
    staff = User.objects.create_superuser("root", password="root-password-1")
    client = Client()
    client.force_login(staff)
    for model in ours:
        url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        assert client.get(url).status_code == 200, url
