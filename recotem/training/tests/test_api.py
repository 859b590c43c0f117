from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from recotem.core.models import TaskLog
from recotem.projects.models import Project, TrainingData
from recotem.projects.services import training_data_create
from recotem.training import services
from recotem.training.models import ModelConfiguration, TrainedModel

pytestmark = pytest.mark.django_db


def upload(project: Project, csv: Path) -> TrainingData:
    return training_data_create(
        project=project, upload=SimpleUploadedFile(csv.name, csv.read_bytes())
    )


def toppop(project: Project, name: str = "pop") -> ModelConfiguration:
    return ModelConfiguration.objects.create(
        project=project, name=name, recommender_class_name="TopPopRecommender"
    )


@pytest.fixture
def bob_project(bob: Any) -> Project:
    return Project.objects.create(
        owner=bob, name="bobs", user_column="user_id", item_column="item_id"
    )


def test_it_creates_a_pending_model_from_configuration_and_data(
    alice_client: APIClient, project: Project, small_csv: Path
) -> None:
    config, data = toppop(project), upload(project, small_csv)
    r = alice_client.post(
        "/api/v1/trained_model/", {"configuration": config.id, "data_loc": data.id}
    )
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == "PENDING" and body["project"] == project.id
    assert body["recommender_class_name"] == "TopPopRecommender"
    assert TrainedModel.objects.get(pk=body["id"]).data_loc_id == data.id


def test_it_refuses_foreign_ids_in_the_body_and_in_the_url(
    alice_client: APIClient,
    bob_client: APIClient,
    project: Project,
    bob_project: Project,
    small_csv: Path,
) -> None:
    config, data = toppop(project), upload(project, small_csv)
    bob_config, bob_data = toppop(bob_project), upload(bob_project, small_csv)
    url = "/api/v1/trained_model/"
    r = alice_client.post(url, {"configuration": bob_config.id, "data_loc": data.id})
    assert r.status_code == 400 and "configuration" in r.json()
    r = alice_client.post(url, {"configuration": config.id, "data_loc": bob_data.id})
    assert r.status_code == 400 and "data_loc" in r.json()
    other = Project.objects.create(
        owner=project.owner, name="other", user_column="user_id", item_column="item_id"
    )
    r = alice_client.post(url, {"configuration": toppop(other).id, "data_loc": data.id})
    assert r.status_code == 400 and "same project" in str(r.json())
    assert TrainedModel.objects.count() == 0

    model = services.trained_model_create(configuration=config, data=data, enqueue=False)
    services.trained_model_train(trained_model_id=model.pk)
    for suffix in ("", "download/", "sample_recommendation/?user_id=1"):
        assert bob_client.get(f"{url}{model.pk}/{suffix}").status_code == 404
    assert bob_client.delete(f"{url}{model.pk}/").status_code == 404
    assert bob_client.get(url).json()["count"] == 0
    assert bob_client.get("/api/v1/task_log/").json()["count"] == 0
    assert bob_client.get(f"/api/v1/model_configuration/{config.id}/").status_code == 404


def test_it_filters_task_logs_by_task_and_model(
    alice_client: APIClient, project: Project, small_csv: Path
) -> None:
    data = upload(project, small_csv)
    first = services.trained_model_create(
        configuration=toppop(project, "a"), data=data, enqueue=False
    )
    second = services.trained_model_create(
        configuration=toppop(project, "b"), data=data, enqueue=False
    )
    services.trained_model_train(trained_model_id=first.pk)
    services.trained_model_train(trained_model_id=second.pk)
    TaskLog.objects.filter(trained_model_id=first.pk).update(task="task-one")
    logs = alice_client.get("/api/v1/task_log/?task=task-one").json()
    assert logs["count"] >= 2 and {row["trained_model"] for row in logs["results"]} == {first.pk}
    assert alice_client.get(f"/api/v1/task_log/?trained_model={second.pk}").json()["count"] >= 2
    assert alice_client.post("/api/v1/task_log/", {"project": project.id}).status_code == 405


def test_it_deletes_a_model_and_its_artifact(
    alice_client: APIClient, project: Project, small_csv: Path
) -> None:
    model = services.trained_model_create(
        configuration=toppop(project), data=upload(project, small_csv), enqueue=False
    )
    model = services.trained_model_train(trained_model_id=model.pk)
    path = Path(model.file.path)
    assert path.exists()
    assert alice_client.delete(f"/api/v1/trained_model/{model.pk}/").status_code == 204
    assert not path.exists() and not TrainedModel.objects.filter(pk=model.pk).exists()
