"""`recotem manage resign_models` after SECRET_KEY changed: artifacts move to the new key."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from recotem.core.artifacts import signing_keys
from recotem.ml.artifact import ArtifactError, read_key_id
from recotem.projects.models import Project
from recotem.training import services
from recotem.training.models import TrainedModel
from recotem.training.tests.test_services import config, upload

pytestmark = pytest.mark.django_db


def _trained(project: Project, csv: Path) -> TrainedModel:
    model = services.trained_model_create(
        configuration=config(project, "TopPopRecommender"), data=upload(project, csv), enqueue=False
    )
    return services.trained_model_train(trained_model_id=model.pk)


def test_it_resigns_artifacts_so_the_old_key_can_go(
    project: Project, small_csv: Path, settings: Any
) -> None:
    model = _trained(project, small_csv)
    old_name = model.file.name
    old_secret = settings.SECRET_KEY
    settings.SECRET_KEY = "rotated-secret-key-0123456789-abcdefghijklmnop"
    settings.SECRET_KEY_FALLBACKS = [old_secret]
    current, _ = signing_keys()
    out = io.StringIO()
    call_command("resign_models", stdout=out)
    assert "1 artifact(s) re-signed, 0 already current, 0 failed" in out.getvalue()
    model.refresh_from_db()
    assert model.file.name != old_name and not Path(settings.MEDIA_ROOT, old_name).exists()
    with model.file.open("rb") as fh:
        assert read_key_id(fh.read()) == current
    settings.SECRET_KEY_FALLBACKS = []
    services._cache_forget(model.pk)
    assert services.load_trained_model(model).class_name == "TopPopRecommender"
    again = io.StringIO()
    call_command("resign_models", stdout=again)  # idempotent
    assert "0 artifact(s) re-signed, 1 already current" in again.getvalue()


def test_it_reports_artifacts_no_key_verifies(
    project: Project, small_csv: Path, settings: Any
) -> None:
    model = _trained(project, small_csv)
    settings.SECRET_KEY = "a-key-nobody-signed-with-0123456789-abcdefgh"
    settings.SECRET_KEY_FALLBACKS = []
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("resign_models", stdout=io.StringIO(), stderr=err)
    assert f"model #{model.pk}" in err.getvalue() and "unknown key" in err.getvalue()
    services._cache_forget(model.pk)
    with pytest.raises(ArtifactError):
        services.load_trained_model(model)  # left exactly as it was
