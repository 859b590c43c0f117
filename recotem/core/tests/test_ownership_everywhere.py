"""Two users, every API endpoint, no cross-access.

Endpoints are discovered from the URL configuration, so a new resource or action is covered
as soon as it is routed; a resource without an object in `alice_objects` fails the test.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from recotem.accounts.keys import generate_key, hash_key
from recotem.accounts.models import ApiKey
from recotem.core.models import TaskLog
from recotem.deployment.models import DeploymentSlot
from recotem.experiments.models import Experiment
from recotem.projects.models import DataSource, ItemMetaData, Project, TrainingData
from recotem.retraining.models import RetrainingRun, RetrainingSchedule
from recotem.training.models import ModelConfiguration, TrainedModel
from recotem.tuning.models import EvaluationConfig, ParameterTuningJob, SplitConfig

pytestmark = pytest.mark.django_db


def _routes() -> list[tuple[str, str, dict[str, str]]]:
    """(basename, url name, {method: handler}) for every viewset route under /api/v1/.

    List-level routes are named `<basename>-list`; other routes without a `pk` (collection
    actions such as `recommenders`) hold no user's objects and are named with a `-collection`
    suffix here so the tests treat them like lists.
    """
    found = []

    def walk(patterns: list[Any]) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns)
            elif isinstance(p, URLPattern) and hasattr(p.callback, "actions") and p.name:
                name = (
                    p.name
                    if "pk" in p.pattern.regex.groupindex or p.name.endswith("-list")
                    else f"{p.name}-collection"
                )
                found.append(
                    (p.callback.initkwargs.get("basename", ""), name, dict(p.callback.actions))
                )

    walk(get_resolver().url_patterns)
    return found


@pytest.fixture
def alice_objects(alice, project: Project) -> dict[str, int]:
    td = TrainingData(
        project=project,
        original_name="d.csv",
        filesize=10,
        row_count=1,
        n_users=1,
        n_items=1,
        fingerprint="x",
    )
    td.file.save("d.csv", ContentFile(b"user_id,item_id,timestamp\n1,2,3\n"), save=True)
    meta = ItemMetaData(
        project=project, original_name="i.csv", filesize=5, row_count=1, columns=["item_id"]
    )
    meta.file.save("i.csv", ContentFile(b"item_id\n2\n"), save=True)
    split = SplitConfig.objects.create(project=project)
    evaluation = EvaluationConfig.objects.create(project=project)
    config = ModelConfiguration.objects.create(
        project=project, name="c", recommender_class_name="TopPopRecommender"
    )
    model = TrainedModel.objects.create(
        project=project, configuration=config, data_loc=td, status="COMPLETED"
    )
    job = ParameterTuningJob.objects.create(
        project=project, data=td, split=split, evaluation=evaluation
    )
    slot = DeploymentSlot.objects.create(project=project, name="main", trained_model=model)
    raw = generate_key()
    key = ApiKey.objects.create(
        project=project, name="k", prefix=raw[:10], key_hash=hash_key(raw), scopes=["read"]
    )
    log = TaskLog.objects.create(
        project_id=project.pk, task="t-1", trained_model_id=model.pk, contents="hello"
    )
    schedule = RetrainingSchedule.objects.create(
        project=project, cron_expression="0 2 * * *", model_configuration=config, is_enabled=False
    )
    run = RetrainingRun.objects.create(schedule=schedule, trigger="manual", status="COMPLETED")
    source = DataSource.objects.create(project=project, kind="url", url="https://example.com/d.csv")
    other_slot = DeploymentSlot.objects.create(project=project, name="b", trained_model=model)
    experiment = Experiment.objects.create(
        project=project, name="e", control_slot=slot, variant_slot=other_slot
    )
    return {
        "project": project.id,
        "training_data": td.id,
        "item_meta_data": meta.id,
        "split_config": split.id,
        "evaluation_config": evaluation.id,
        "model_configuration": config.id,
        "trained_model": model.id,
        "parameter_tuning_job": job.id,
        "deployment_slot": slot.id,
        "api_keys": key.id,
        "task_log": log.id,
        "retraining_schedule": schedule.id,
        "retraining_run": run.id,
        "data_source": source.id,
        "experiment": experiment.id,
    }


def test_it_hides_every_object_of_another_user(
    bob_client: APIClient, alice_client: APIClient, alice_objects: dict[str, int]
) -> None:
    checked = 0
    for basename, name, actions in _routes():
        assert basename in alice_objects, (
            f"add an object for the new resource {basename!r} to alice_objects"
        )
        if name.endswith("-collection"):
            continue
        if name.endswith("-list"):
            if "get" in actions:
                body = bob_client.get(f"/api/v1/{basename}/").json()
                assert body["count"] == 0, f"{basename}: bob sees alice's objects"
                assert alice_client.get(f"/api/v1/{basename}/").json()["count"] >= 1, basename
            continue
        from django.urls import reverse

        url = reverse(name, kwargs={"pk": alice_objects[basename]})
        for method in actions:
            response = getattr(bob_client, method)(url, {}, format="json")
            if response.status_code == 405:  # a method nobody may use on this route leaks nothing
                assert getattr(alice_client, method)(url, {}, format="json").status_code == 405, url
                continue
            assert response.status_code == 404, (
                f"bob {method.upper()} {url} → {response.status_code}"
            )
            checked += 1
        assert alice_client.get(url).status_code != 404 or "get" not in actions, (
            f"alice cannot reach {url}"
        )
    assert checked >= 30


def test_it_refuses_foreign_ids_in_request_bodies(
    bob_client: APIClient, alice_objects: dict[str, int]
) -> None:
    related = {
        "project": "project",
        "data": "training_data",
        "data_loc": "training_data",
        "split": "split_config",
        "evaluation": "evaluation_config",
        "configuration": "model_configuration",
        "trained_model": "trained_model",
        "model_configuration": "model_configuration",
        "training_data": "training_data",
        "split_config": "split_config",
        "evaluation_config": "evaluation_config",
        "deploy_slot": "deployment_slot",
        "control_slot": "deployment_slot",
        "variant_slot": "deployment_slot",
        "warm_start_config": "model_configuration",
    }
    body = {field: alice_objects[resource] for field, resource in related.items()}
    for basename, name, actions in _routes():
        if not name.endswith("-list") or "post" not in actions or basename == "project":
            continue
        response = bob_client.post(f"/api/v1/{basename}/", body, format="json")
        if response.status_code == 405:  # read-only resource
            continue
        assert response.status_code == 400, (
            f"{basename}: {response.status_code} {response.content[:200]!r}"
        )
        errors = response.json()
        assert "does not exist" in " ".join(errors.get("project", [])), f"{basename}: {errors}"
