from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from recotem.lib import cron
from recotem.projects.models import Project
from recotem.projects.services import project_delete
from recotem.retraining.models import RetrainingRun, RetrainingSchedule
from recotem.retraining.schedules import schedule_reconcile
from recotem.retraining.tests.conftest import make_data, make_model
from recotem.training.models import ModelConfiguration

URL = "/api/v1/retraining_schedule/"


def _create(client: Any, project: Project, config: ModelConfiguration, **extra: Any) -> Any:
    body = {
        "project": project.pk,
        "cron_expression": "0 2 * * 0",
        "model_configuration": config.pk,
        **extra,
    }
    return client.post(URL, body, format="json")


def test_it_creates_a_schedule_and_its_beat_rows(
    alice_client: Any, project: Project, config: Any
) -> None:
    response = _create(alice_client, project, config, timezone="Asia/Tokyo")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["cron_description"] == "At 02:00, only on Sunday"
    assert len(body["next_runs"]) == 5
    assert body["next_run_at"] == body["next_runs"][0]
    first = datetime.fromisoformat(body["next_runs"][0])
    assert (
        first.utcoffset().total_seconds() == 9 * 3600 and first.hour == 2 and first.weekday() == 6
    )
    assert (
        body["max_retries"] == 3
        and body["gate_tolerance"] == 0.02
        and body["retry_backoff_seconds"] == 60
    )
    assert len(body["webhook_secret"]) == 64
    task = PeriodicTask.objects.get(name=f"recotem-retrain-{body['id']}")
    assert task.task == "recotem.retraining.tasks.run_retraining"
    assert json.loads(task.kwargs) == {"schedule_id": body["id"]}
    assert task.enabled and task.queue == "retraining"
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("0", "2", "0")
    assert str(task.crontab.timezone) == "Asia/Tokyo"
    assert RetrainingSchedule.objects.get(pk=body["id"]).periodic_task_id == task.pk


def test_it_normalises_sunday_seven_to_zero(
    alice_client: Any, project: Project, config: Any
) -> None:
    response = _create(alice_client, project, config, cron_expression="30 4 * * 7")
    assert response.status_code == 201, response.content
    assert response.json()["cron_expression"] == "30 4 * * 0"
    assert PeriodicTask.objects.get(name__startswith="recotem-retrain-").crontab.day_of_week == "0"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("cron_expression", "99 * * * *", "out of range"),
        ("cron_expression", "0 2 1 * 1", "both restricted"),
        ("cron_expression", "* * * *", "Expected 5 fields"),
        ("timezone", "Mars/Olympus", "Unknown time zone"),
        ("tried_algorithms", ["NoSuchAlgo"], "Unknown algorithm"),
        ("max_retries", -1, "greater than or equal"),
    ],
)
def test_it_rejects_invalid_values(
    alice_client: Any, project: Project, config: Any, field: str, value: Any, needle: str
) -> None:
    response = _create(alice_client, project, config, **{field: value})
    assert response.status_code == 400
    assert needle in json.dumps(response.json()[field])
    assert not PeriodicTask.objects.filter(name__startswith="recotem-retrain-").exists()


def test_it_requires_configs_for_retune_and_a_configuration_otherwise(
    alice_client: Any, project: Project, config: Any, split: Any
) -> None:
    response = alice_client.post(
        URL, {"project": project.pk, "cron_expression": "0 2 * * *"}, format="json"
    )
    assert response.status_code == 400 and "model_configuration" in response.json()
    response = alice_client.post(
        URL,
        {
            "project": project.pk,
            "cron_expression": "0 2 * * *",
            "retune": True,
            "split_config": split.pk,
        },
        format="json",
    )
    assert response.status_code == 400 and set(response.json()) == {"evaluation_config"}


def test_it_refuses_references_to_other_users_objects(
    alice_client: Any, bob: Any, project: Project, config: Any
) -> None:
    bobs = Project.objects.create(owner=bob, name="b", user_column="u", item_column="i")
    bobs_config = ModelConfiguration.objects.create(
        project=bobs, name="x", recommender_class_name="TopPopRecommender"
    )
    response = _create(alice_client, project, bobs_config)
    assert response.status_code == 400 and "model_configuration" in response.json()
    response = _create(alice_client, bobs, config)
    assert response.status_code == 400 and "project" in response.json()


def test_it_refuses_objects_of_another_project_of_the_same_owner(
    alice_client: Any, alice: Any, project: Project, config: Any
) -> None:
    other = Project.objects.create(owner=alice, name="other", user_column="u", item_column="i")
    response = _create(alice_client, other, config)
    assert response.status_code == 400
    assert response.json()["model_configuration"] == ["Must belong to the same project."]


def test_it_allows_one_schedule_per_project(
    alice_client: Any, project: Project, config: Any
) -> None:
    assert _create(alice_client, project, config).status_code == 201
    response = _create(alice_client, project, config)
    assert response.status_code == 400 and "already has" in response.json()["project"][0]


def test_it_refuses_auto_deploy_with_several_active_slots_and_no_target(
    alice_client: Any, project: Project, config: Any
) -> None:
    from recotem.deployment.models import DeploymentSlot

    data = make_data(project)
    model = make_model(project, config, data)
    DeploymentSlot.objects.create(project=project, name="a", trained_model=model, weight=50)
    b = DeploymentSlot.objects.create(project=project, name="b", trained_model=model, weight=50)
    response = _create(alice_client, project, config, auto_deploy=True)
    assert response.status_code == 400 and "2 active slots" in response.json()["deploy_slot"][0]
    assert (
        _create(alice_client, project, config, auto_deploy=True, deploy_slot=b.pk).status_code
        == 201
    )


def test_it_removes_the_beat_rows_when_disabled_and_restores_them(
    alice_client: Any, project: Project, config: Any
) -> None:
    sid = _create(alice_client, project, config).json()["id"]
    response = alice_client.patch(f"{URL}{sid}/", {"is_enabled": False}, format="json")
    assert response.status_code == 200 and response.json()["next_runs"] == []
    assert not PeriodicTask.objects.filter(name=f"recotem-retrain-{sid}").exists()
    assert not CrontabSchedule.objects.filter(hour="2", day_of_week="0").exists()
    alice_client.patch(
        f"{URL}{sid}/", {"is_enabled": True, "cron_expression": "*/5 * * * *"}, format="json"
    )
    assert PeriodicTask.objects.get(name=f"recotem-retrain-{sid}").crontab.minute == "*/5"


def test_it_removes_the_beat_rows_when_the_schedule_or_project_is_deleted(
    alice_client: Any, project: Project, config: Any
) -> None:
    sid = _create(alice_client, project, config).json()["id"]
    assert alice_client.delete(f"{URL}{sid}/").status_code == 204
    assert not PeriodicTask.objects.filter(name=f"recotem-retrain-{sid}").exists()
    sid = _create(alice_client, project, config).json()["id"]
    project_delete(project=project)
    assert not PeriodicTask.objects.filter(name=f"recotem-retrain-{sid}").exists()
    assert not CrontabSchedule.objects.exists()


def test_it_reconciles_drift_in_both_directions(
    alice_client: Any, project: Project, config: Any
) -> None:
    sid = _create(alice_client, project, config, timezone="Europe/Berlin").json()["id"]
    PeriodicTask.objects.filter(name=f"recotem-retrain-{sid}").delete()
    orphan_cron = CrontabSchedule.objects.create(minute="1")
    PeriodicTask.objects.create(name="recotem-retrain-999999", task="x", crontab=orphan_cron)
    report = schedule_reconcile()
    assert report["synced"] == 1 and report["orphans_deleted"] == 1
    task = PeriodicTask.objects.get(name=f"recotem-retrain-{sid}")
    assert str(task.crontab.timezone) == "Europe/Berlin"
    assert not PeriodicTask.objects.filter(name="recotem-retrain-999999").exists()
    assert PeriodicTask.objects.filter(name="recotem-retraining-reaper", enabled=True).exists()
    # A task edited behind our back is put back.
    PeriodicTask.objects.filter(pk=task.pk).update(enabled=False, kwargs="{}")
    schedule_reconcile()
    task.refresh_from_db()
    assert task.enabled and json.loads(task.kwargs) == {"schedule_id": sid}


def test_it_previews_exactly_the_times_of_the_cron_library(
    alice_client: Any, project: Project, config: Any
) -> None:
    body = _create(
        alice_client, project, config, cron_expression="15 9 * * 1-5", timezone="Asia/Tokyo"
    ).json()
    expected = cron.next_runs("15 9 * * 1-5", "Asia/Tokyo", n=5, after=datetime.now(UTC))
    assert [datetime.fromisoformat(x) for x in body["next_runs"]] == expected
    assert all(
        d.tzinfo is not None and d.astimezone(ZoneInfo("Asia/Tokyo")).hour == 9 for d in expected
    )


def test_other_users_cannot_see_or_trigger_a_schedule(
    alice_client: Any, bob_client: Any, project: Project, config: Any
) -> None:
    sid = _create(alice_client, project, config).json()["id"]
    assert bob_client.get(f"{URL}{sid}/").status_code == 404
    assert bob_client.post(f"{URL}{sid}/trigger/", {}, format="json").status_code == 404
    assert bob_client.get(URL).json()["count"] == 0
    assert not RetrainingRun.objects.exists()


def test_it_shows_the_webhook_secret_only_on_create_and_rotation(
    alice_client: Any, project: Project, config: Any
) -> None:
    from recotem.accounts.services import api_key_create

    created = _create(alice_client, project, config)
    secret = created.json()["webhook_secret"]
    assert "no-store" in created["Cache-Control"]
    sid = created.json()["id"]
    assert "webhook_secret" not in alice_client.get(f"{URL}{sid}/").json()
    assert all("webhook_secret" not in s for s in alice_client.get(URL).json()["results"])
    patched = alice_client.patch(f"{URL}{sid}/", {"webhook_secret": "mine"}, format="json")
    assert "webhook_secret" not in patched.json()
    assert RetrainingSchedule.objects.get(pk=sid).webhook_secret == secret  # not writable
    _, raw = api_key_create(project=project, name="r", scopes=["read"])
    from rest_framework.test import APIClient

    reader = APIClient()
    reader.credentials(HTTP_X_API_KEY=raw)
    assert "webhook_secret" not in reader.get(f"{URL}{sid}/").json()
    rotated = alice_client.post(f"{URL}{sid}/rotate_webhook_secret/")
    assert rotated.status_code == 200 and "no-store" in rotated["Cache-Control"]
    fresh = rotated.json()["webhook_secret"]
    assert len(fresh) == 64 and fresh != secret
    assert RetrainingSchedule.objects.get(pk=sid).webhook_secret == fresh
    assert reader.post(f"{URL}{sid}/rotate_webhook_secret/").status_code == 403  # needs write


def test_the_api_and_the_form_take_every_setting_the_validation_checks() -> None:
    import inspect

    from recotem.front.forms import ScheduleForm
    from recotem.retraining.api import RetrainingScheduleSerializer
    from recotem.retraining.validation import FIELDS, SETTINGS, validate_schedule

    checked = set(inspect.signature(validate_schedule).parameters) - {"project"}
    assert set(FIELDS) == checked
    assert set(FIELDS) < set(SETTINGS)
    assert set(SETTINGS) <= set(RetrainingScheduleSerializer.Meta.fields)
    assert list(ScheduleForm.Meta.fields) == list(SETTINGS)
