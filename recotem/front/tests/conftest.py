from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from recotem.projects.models import Project, TrainingData
from recotem.projects.services import training_data_create


@pytest.fixture
def web(alice: Any) -> Client:
    """A browser-like client signed in as alice through the login form (session + CSRF)."""
    client = Client()
    response = client.post("/login/", {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 302, response.content
    return client


@pytest.fixture
def data(project: Project, small_csv: Path) -> TrainingData:
    upload = SimpleUploadedFile("small.csv", small_csv.read_bytes(), content_type="text/csv")
    return training_data_create(project=project, upload=upload)


@pytest.fixture
def trained(project: Project, data: TrainingData):  # type: ignore[no-untyped-def]
    """A COMPLETED TopPop model, trained synchronously by the training service."""
    from recotem.training.models import ModelConfiguration
    from recotem.training.services import trained_model_create, trained_model_train

    config = ModelConfiguration.objects.create(
        project=project, name="toppop", recommender_class_name="TopPopRecommender"
    )
    model = trained_model_create(configuration=config, data=data, enqueue=False)
    model = trained_model_train(trained_model_id=model.pk)
    assert model.status == "COMPLETED", model.error
    return model
