"""Phase timings on trained models and tuning jobs (issue 13, item 4): real fits on small data."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from recotem.core.models import TaskLog
from recotem.projects.models import Project
from recotem.projects.services import training_data_create
from recotem.training import services
from recotem.training.models import ModelConfiguration
from recotem.tuning import services as tuning_services
from recotem.tuning.models import EvaluationConfig, ParameterTuningJob, SplitConfig

pytestmark = pytest.mark.django_db


def test_it_records_where_a_training_spent_its_time(
    project: Project, small_csv: Path, alice_client: APIClient
) -> None:
    data = training_data_create(
        project=project, upload=SimpleUploadedFile(small_csv.name, small_csv.read_bytes())
    )
    cfg = ModelConfiguration.objects.create(
        project=project, name="ials", recommender_class_name="IALSRecommender", parameters_json={}
    )
    model = services.trained_model_create(configuration=cfg, data=data, enqueue=False)
    model = services.trained_model_train(trained_model_id=model.pk)
    assert model.status == "COMPLETED", model.error
    timings = model.timings
    assert set(timings) == {"read", "matrix", "fit", "save", "split", "evaluate"}
    assert all(isinstance(v, float) and v >= 0 for v in timings.values())
    assert model.test_metrics  # evaluated after the model was stored, before the call returned
    # Read-only in the API, and in the task log.
    body = alice_client.get(f"/api/v1/trained_model/{model.pk}/").json()
    assert body["timings"] == timings
    alice_client.patch(f"/api/v1/trained_model/{model.pk}/", {"timings": {"fit": 0}}, format="json")
    model.refresh_from_db()
    assert model.timings == timings
    line = TaskLog.objects.filter(trained_model_id=model.pk, contents__contains="Timings:").get()
    assert "fit " in line.contents and "evaluate " in line.contents


def test_it_sums_a_tuning_jobs_timings_over_its_tasks(
    project: Project, small_csv: Path, alice_client: APIClient
) -> None:
    data = training_data_create(
        project=project, upload=SimpleUploadedFile(small_csv.name, small_csv.read_bytes())
    )
    job = tuning_services.tuning_job_create(
        project=project,
        data=data,
        split=SplitConfig.objects.create(project=project, name="s"),
        evaluation=EvaluationConfig.objects.create(project=project, name="e", cutoff=5),
        n_trials=2,
        tried_algorithms=["TopPop"],
        enqueue=False,
    )
    job = tuning_services.tuning_job_run(job_id=job.pk)
    assert job.status == "COMPLETED", job.error
    # start + trials + finish each read and split; trials fit; finish evaluates and refits.
    assert set(job.timings) == {"read", "split", "fit", "evaluate", "refit"}
    assert job.tuned_model is not None and job.tuned_model.timings["fit"] >= 0
    body = alice_client.get(f"/api/v1/parameter_tuning_job/{job.pk}/").json()
    assert body["timings"] == ParameterTuningJob.objects.get(pk=job.pk).timings
    assert TaskLog.objects.filter(tuning_job_id=job.pk, contents__contains="Timings").exists()
