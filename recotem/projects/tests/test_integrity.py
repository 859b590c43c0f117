from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from recotem.projects.models import Project, TrainingData
from recotem.training.models import ModelConfiguration, TrainedModel

pytestmark = pytest.mark.django_db


@pytest.fixture
def uploaded(alice_client: APIClient, project: Project, small_csv: Path) -> TrainingData:
    body = alice_client.post(
        "/api/v1/training_data/",
        {"project": project.id, "file": SimpleUploadedFile("d.csv", small_csv.read_bytes())},
        format="multipart",
    ).json()
    return TrainingData.objects.get(pk=body["id"])


def test_it_refuses_to_delete_data_a_model_was_trained_on(
    alice_client: APIClient, uploaded: TrainingData
) -> None:
    config = ModelConfiguration.objects.create(
        project=uploaded.project, name="c", recommender_class_name="TopPopRecommender"
    )
    TrainedModel.objects.create(project=uploaded.project, configuration=config, data_loc=uploaded)
    response = alice_client.delete(f"/api/v1/training_data/{uploaded.id}/")
    assert response.status_code == 409
    assert "still in use" in response.json()["detail"]
    assert TrainingData.objects.filter(pk=uploaded.pk).exists()
    assert Path(uploaded.file.path).exists()


def test_it_keeps_objects_in_their_project(
    alice_client: APIClient, alice, uploaded: TrainingData
) -> None:
    other = Project.objects.create(owner=alice, name="other", user_column="u", item_column="i")
    config = alice_client.post(
        "/api/v1/evaluation_config/",
        {"project": uploaded.project_id, "cutoff": 10, "target_metric": "ndcg"},
    ).json()
    moved = alice_client.patch(f"/api/v1/evaluation_config/{config['id']}/", {"project": other.id})
    assert moved.status_code == 400
    assert moved.json() == {"project": ["An object cannot be moved to another project."]}
    assert (
        alice_client.patch(f"/api/v1/evaluation_config/{config['id']}/", {"cutoff": 5}).status_code
        == 200
    )


def test_it_locks_columns_once_data_is_uploaded(
    alice_client: APIClient, uploaded: TrainingData
) -> None:
    url = f"/api/v1/project/{uploaded.project_id}/"
    response = alice_client.patch(url, {"user_column": "customer"})
    assert response.status_code == 400
    assert "cannot change once training data is uploaded" in response.json()["user_column"][0]
    assert alice_client.patch(url, {"name": "renamed"}).status_code == 200
