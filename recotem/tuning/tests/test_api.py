from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from rest_framework.test import APIClient

from recotem.projects.models import Project, TrainingData
from recotem.training.models import ModelConfiguration
from recotem.tuning.models import EvaluationConfig, ParameterTuningJob, SplitConfig

pytestmark = pytest.mark.django_db


def make_data(project: Project, csv: Path) -> TrainingData:
    data = TrainingData(
        project=project,
        original_name=csv.name,
        filesize=csv.stat().st_size,
        row_count=0,
        n_users=0,
        n_items=0,
        fingerprint="",
    )
    data.file.save(csv.name, ContentFile(csv.read_bytes()), save=False)
    data.save()
    return data


@pytest.fixture
def bob_project(bob: Any) -> Project:
    return Project.objects.create(
        owner=bob, name="bobs", user_column="user_id", item_column="item_id"
    )


def test_it_creates_split_and_evaluation_configs(alice_client: APIClient, project: Project) -> None:
    r = alice_client.post(
        "/api/v1/split_config/", {"project": project.id, "scheme": "TU", "heldout_ratio": 0.2}
    )
    assert r.status_code == 201, r.content
    # The older Recotem's defaults: validate on every user not kept for the final test (10 %).
    assert r.json()["scheme"] == "TU" and r.json()["test_user_ratio"] == 1.0
    assert r.json()["final_test_ratio"] == 0.1 and r.json()["n_final_test_users"] is None
    r = alice_client.post(
        "/api/v1/evaluation_config/", {"project": project.id, "cutoff": 20, "target_metric": "map"}
    )
    assert r.status_code == 201, r.content
    assert alice_client.get(f"/api/v1/evaluation_config/?project={project.id}").json()["count"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"heldout_ratio": 1.0}, "heldout_ratio"),
        ({"heldout_ratio": -0.5}, "heldout_ratio"),
        ({"test_user_ratio": 0}, "test_user_ratio"),
        ({"scheme": "XX"}, "scheme"),
        ({"n_heldout": 0}, "n_heldout"),
    ],
)
def test_it_rejects_bad_split_configs_with_field_messages(
    alice_client: APIClient, project: Project, body: dict[str, Any], field: str
) -> None:
    r = alice_client.post("/api/v1/split_config/", {"project": project.id, **body})
    assert r.status_code == 400
    assert field in r.json()


def test_it_rejects_time_schemes_for_projects_without_time(
    alice_client: APIClient, project: Project
) -> None:
    project.time_column = ""
    project.save()
    r = alice_client.post("/api/v1/split_config/", {"project": project.id, "scheme": "TG"})
    assert r.status_code == 400
    assert "time column" in r.json()["scheme"][0]


def test_it_rejects_bad_evaluation_configs(alice_client: APIClient, project: Project) -> None:
    r = alice_client.post(
        "/api/v1/evaluation_config/", {"project": project.id, "cutoff": 0, "target_metric": "auc"}
    )
    assert r.status_code == 400
    assert set(r.json()) == {"cutoff", "target_metric"}


def test_it_validates_recommender_class_and_parameters(
    alice_client: APIClient, project: Project
) -> None:
    url = "/api/v1/model_configuration/"
    ok = alice_client.post(
        url,
        {
            "project": project.id,
            "name": "ials",
            "recommender_class_name": "IALS",
            "parameters_json": {"n_components": "32", "alpha0": 0.1},
        },
        format="json",
    )
    assert ok.status_code == 201, ok.content
    assert ok.json()["recommender_class_name"] == "IALSRecommender"
    assert ok.json()["parameters_json"] == {"n_components": 32, "alpha0": 0.1}

    r = alice_client.post(
        url,
        {"project": project.id, "name": "x", "recommender_class_name": "NoSuchRecommender"},
        format="json",
    )
    assert (
        r.status_code == 400
        and "unknown recommender class" in r.json()["recommender_class_name"][0]
    )
    r = alice_client.post(
        url,
        {
            "project": project.id,
            "name": "y",
            "recommender_class_name": "IALSRecommender",
            "parameters_json": {"n_componentz": 3},
        },
        format="json",
    )
    assert r.status_code == 400 and "n_componentz" in r.json()["parameters_json"][0]
    r = alice_client.post(
        url,
        {
            "project": project.id,
            "name": "z",
            "recommender_class_name": "IALSRecommender",
            "parameters_json": {"n_components": "many"},
        },
        format="json",
    )
    assert r.status_code == 400 and "n_components" in r.json()["parameters_json"][0]
    r = alice_client.post(
        url,
        {
            "project": project.id,
            "name": "z",
            "recommender_class_name": "TopPop",
            "parameters_json": [1, 2],
        },
        format="json",
    )
    assert r.status_code == 400 and "parameters_json" in r.json()
    r = alice_client.post(
        url,
        {"project": project.id, "name": "ials", "recommender_class_name": "TopPop"},
        format="json",
    )
    assert r.status_code == 400 and "already" in r.json()["name"][0]
    listing = alice_client.get(f"{url}recommenders/").json()["recommenders"]
    assert "IALSRecommender" in listing and "TopPopRecommender" in listing


def test_it_keeps_configs_private(
    alice_client: APIClient, bob_client: APIClient, project: Project, bob_project: Project
) -> None:
    split = SplitConfig.objects.create(project=project)
    assert bob_client.get(f"/api/v1/split_config/{split.id}/").status_code == 404
    assert bob_client.get("/api/v1/split_config/").json()["count"] == 0
    r = bob_client.post("/api/v1/split_config/", {"project": project.id})
    assert r.status_code == 400 and "project" in r.json()
    assert bob_client.delete(f"/api/v1/split_config/{split.id}/").status_code == 404
    assert SplitConfig.objects.filter(pk=split.pk).exists()


def test_it_starts_a_tuning_job_and_rejects_foreign_and_bad_input(
    alice_client: APIClient, project: Project, bob_project: Project, small_csv: Path
) -> None:
    data = make_data(project, small_csv)
    split = SplitConfig.objects.create(project=project)
    evaluation = EvaluationConfig.objects.create(project=project)
    bob_data = make_data(bob_project, small_csv)
    bob_split = SplitConfig.objects.create(project=bob_project)
    url = "/api/v1/parameter_tuning_job/"
    base = {"data": data.id, "split": split.id, "evaluation": evaluation.id}

    for bad, field in [
        ({"data": bob_data.id}, "data"),
        ({"split": bob_split.id}, "split"),
        ({"n_trials": 0}, "n_trials"),
        ({"n_tasks_parallel": 0}, "n_tasks_parallel"),
        ({"timeout_overall": -1}, "timeout_overall"),
        ({"tried_algorithms": ["IALS", "Nope"]}, "tried_algorithms"),
    ]:
        r = alice_client.post(url, {**base, **bad}, format="json")
        assert r.status_code == 400, (bad, r.content)
        assert field in r.json(), (bad, r.json())
    assert ParameterTuningJob.objects.count() == 0

    r = alice_client.post(
        url, {**base, "n_trials": 5, "tried_algorithms": ["IALS", "TopPop"]}, format="json"
    )
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["project"] == project.id and body["status"] == "PENDING"
    assert body["tried_algorithms"] == ["IALSRecommender", "TopPopRecommender"]
    assert body["progress"] == {"trials_done": 0, "trials_total": 5, "best_score": None}
    default = alice_client.post(url, base, format="json").json()
    assert default["n_trials"] == 40 and default["train_after_tuning"] is True
    assert default["tried_algorithms"] == [
        "IALSRecommender",
        "RP3betaRecommender",
        "CosineKNNRecommender",
        "TopPopRecommender",
    ]
    detail = alice_client.get(f"{url}{body['id']}/").json()
    assert detail["trials"] == []
    assert alice_client.get(f"{url}{body['id']}/trials/").json() == []


def test_it_hides_tuning_jobs_of_other_users(
    bob_client: APIClient, project: Project, small_csv: Path
) -> None:
    job = ParameterTuningJob.objects.create(
        project=project,
        data=make_data(project, small_csv),
        split=SplitConfig.objects.create(project=project),
        evaluation=EvaluationConfig.objects.create(project=project),
    )
    assert bob_client.get(f"/api/v1/parameter_tuning_job/{job.id}/").status_code == 404
    assert bob_client.get(f"/api/v1/parameter_tuning_job/{job.id}/trials/").status_code == 404
    assert bob_client.get(f"/api/v1/task_log/?tuning_job={job.id}").json()["count"] == 0


def test_it_refuses_a_warm_start_config_of_another_project(
    alice_client: APIClient, alice: Any, project: Project, small_csv: Path
) -> None:
    other = Project.objects.create(
        owner=alice, name="other", user_column="user_id", item_column="item_id"
    )
    config = ModelConfiguration.objects.create(
        project=other, name="c", recommender_class_name="TopPopRecommender"
    )
    data = make_data(project, small_csv)
    r = alice_client.post(
        "/api/v1/parameter_tuning_job/",
        {
            "data": data.id,
            "split": SplitConfig.objects.create(project=project).id,
            "evaluation": EvaluationConfig.objects.create(project=project).id,
            "warm_start_config": config.id,
        },
        format="json",
    )
    assert r.status_code == 400 and "warm_start_config" in r.json()


ABSURD = (10**20, 1e20, -(10**20), 10**40)


def _numeric_cases(
    project: Project, small_csv: Path
) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(endpoint, a valid body, its numeric fields) for every resource with numbers in it."""
    data = make_data(project, small_csv)
    split = SplitConfig.objects.create(project=project)
    evaluation = EvaluationConfig.objects.create(project=project)
    config = ModelConfiguration.objects.create(
        project=project, name="c", recommender_class_name="TopPopRecommender"
    )
    return [
        (
            "/api/v1/split_config/",
            {"project": project.id},
            ["heldout_ratio", "n_heldout", "test_user_ratio", "n_test_users", "random_seed"],
        ),
        ("/api/v1/evaluation_config/", {"project": project.id}, ["cutoff"]),
        (
            "/api/v1/parameter_tuning_job/",
            {"data": data.id, "split": split.id, "evaluation": evaluation.id, "n_trials": 1},
            [
                "n_trials",
                "n_tasks_parallel",
                "timeout_overall",
                "timeout_singlestep",
                "random_seed",
            ],
        ),
        (
            "/api/v1/retraining_schedule/",
            {
                "project": project.id,
                "cron_expression": "0 2 * * *",
                "model_configuration": config.id,
            },
            [
                "n_trials",
                "timeout_overall",
                "max_retries",
                "retry_backoff_seconds",
                "time_limit_seconds",
                "gate_tolerance",
            ],
        ),
    ]


def test_it_answers_absurd_numbers_with_a_400_naming_the_field(
    alice_client: APIClient, project: Project, small_csv: Path
) -> None:
    from recotem.retraining.models import RetrainingSchedule

    for url, body, fields in _numeric_cases(project, small_csv):
        for field in fields:
            for value in ABSURD:
                r = alice_client.post(url, {**body, field: value}, format="json")
                assert r.status_code == 400, (url, field, value, r.content)
                assert field in r.json(), (url, field, value, r.json())
        # Just outside the documented ranges, too.
        edges = {
            "n_heldout": 0,
            "n_test_users": 0,
            "random_seed": 2**31,
            "heldout_ratio": 1,
            "test_user_ratio": 0,
            "cutoff": 1001,
            "n_trials": 10_001,
            "n_tasks_parallel": 65,
            "timeout_overall": 0,
            "timeout_singlestep": 0,
            "max_retries": 21,
            "retry_backoff_seconds": 3601,
            "time_limit_seconds": 59,
            "gate_tolerance": 1.01,
        }
        for field in fields:
            r = alice_client.post(url, {**body, field: edges[field]}, format="json")
            assert r.status_code == 400 and field in r.json(), (url, field, r.content)
        # The valid body itself is accepted, so the 400s above are about the numbers.
        r = alice_client.post(url, body, format="json")
        assert r.status_code == 201, (url, r.content)
    assert RetrainingSchedule.objects.count() == 1
