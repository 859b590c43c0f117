"""Canary deploys with real runs, real models, real slots and real events.

A run in canary mode puts the model that passed the gate on "<target>-canary" with a share of
the target's weight and starts an experiment linked to the run; when the window ends the
periodic decision promotes it unless the experiment says control_better, and rolls it back
(with a notification) when it does. Events attributed to the arms are stored rows, exactly as
the events API stores them.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from django.db import transaction
from django.forms.models import model_to_dict
from rest_framework.test import APIClient

from recotem.core.jobs import db_now
from recotem.deployment.models import DeploymentSlot, SlotHistory
from recotem.experiments.models import Event, Experiment
from recotem.projects.models import Project
from recotem.projects.services import training_data_create_from_frame_file
from recotem.retraining import notify, runs, schedules
from recotem.retraining.canary import canaries_decide, canary_weights
from recotem.retraining.models import RetrainingRun, RetrainingSchedule
from recotem.retraining.runner import run_execute
from recotem.testing.processes import WebhookRecorder
from recotem.training.models import ModelConfiguration


@pytest.fixture
def ials(project: Project) -> ModelConfiguration:
    return ModelConfiguration.objects.create(
        project=project,
        name="ials",
        recommender_class_name="IALSRecommender",
        parameters_json={"n_components": 64, "alpha0": 0.01, "reg": 0.01, "train_epochs": 10},
    )


def _run(schedule: RetrainingSchedule, force: bool = True) -> RetrainingRun:
    run, queued = runs.run_trigger(schedule=schedule, trigger="manual", force=force)
    assert queued
    result = run_execute(run_id=run.pk)
    assert result is not None
    return result


def _canary_run(
    project: Project, ml100k_csv: Path, ials: ModelConfiguration, **schedule_fields: Any
) -> tuple[RetrainingSchedule, RetrainingRun, RetrainingRun]:
    """A replace deploy (the incumbent, slot "auto-deploy" weight 100), then a canary run."""
    training_data_create_from_frame_file(project=project, path=ml100k_csv, name="ml100k.csv")
    schedule = schedules.schedule_create(
        project=project, cron_expression="0 3 * * *", model_configuration=ials, auto_deploy=True
    )
    first = _run(schedule, force=False)
    assert first.gate_decision == "deployed", first.gate_report
    schedules.schedule_update(
        schedule=schedule,
        deploy_mode="canary",
        canary_percent=10,
        canary_minutes=60,
        **schedule_fields,
    )
    canary = _run(schedule)
    assert canary.status == "COMPLETED", canary.error_message
    assert canary.gate_decision == "canary", canary.gate_report
    return schedule, first, canary


def _attribute(
    experiment: Experiment, arm: str, slot: DeploymentSlot, users: int, converted_every: int
) -> None:
    """Impressions for ``users`` users of the arm, a click from every ``converted_every``-th."""
    now = db_now()
    rows = []
    for n in range(users):
        user = f"{arm}-{n}"
        common = {
            "project_id": experiment.project_id,
            "user_id": user,
            "item_id": "1",
            "slot_id": slot.pk,
            "model_id": slot.trained_model_id,
            "experiment_id": experiment.pk,
            "arm": arm,
            "timestamp": now,
        }
        rows.append(Event(event_type="impression", **common))
        if n % converted_every == 0:
            rows.append(Event(event_type="click", **common))
    Event.objects.bulk_create(rows)


def _end_window(experiment: Experiment) -> None:
    Experiment.objects.filter(pk=experiment.pk).update(
        canary_ends_at=db_now() - timedelta(seconds=1)
    )


def _row(run: RetrainingRun) -> dict[str, Any]:
    return model_to_dict(RetrainingRun.objects.get(pk=run.pk))


class _Hook(WebhookRecorder):
    received: ClassVar[list[tuple[bytes, str]]] = []


@pytest.fixture
def hook() -> Iterator[tuple[str, type[_Hook]]]:
    class Hook(_Hook):
        received: ClassVar[list[tuple[bytes, str]]] = []

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Hook
    server.shutdown()
    server.server_close()


def test_canary_weights_keep_the_target_share() -> None:
    assert canary_weights(100, 10) == (90, 10)
    assert canary_weights(50, 10) == (45, 5)
    assert canary_weights(3, 10) == (2, 1)  # never a canary of weight 0
    assert canary_weights(100, 50) == (50, 50)


@pytest.mark.django_db(transaction=True)  # the run's heartbeat thread must see its rows
def test_a_worse_canary_is_rolled_back_notified_and_the_run_row_is_left_alone(
    project: Project,
    ml100k_csv: Path,
    ials: ModelConfiguration,
    settings: Any,
    hook: tuple[str, type[_Hook]],
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
    alice_client: APIClient,
) -> None:
    url, received = hook
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = ["127.0.0.1"]
    schedule, first, run = _canary_run(
        project, ml100k_csv, ials, notify_on_failure=True, webhook_url=url
    )
    target = DeploymentSlot.objects.get(project=project, name="auto-deploy")
    canary = DeploymentSlot.objects.get(project=project, name="auto-deploy-canary")
    assert (target.weight, target.trained_model_id) == (90, first.trained_model_id)
    assert (canary.weight, canary.is_active, canary.trained_model_id) == (
        10,
        True,
        run.trained_model_id,
    )
    assert run.deployed_slot_id == canary.pk
    experiment = Experiment.objects.get(retraining_run_id=run.pk)
    assert experiment.metric == "click"
    assert (experiment.control_slot_id, experiment.variant_slot_id, experiment.status) == (
        target.pk,
        canary.pk,
        "RUNNING",
    )
    assert experiment.canary_ends_at is not None
    assert timedelta(minutes=59) < experiment.canary_ends_at - db_now() <= timedelta(minutes=60)
    body = alice_client.get(f"/api/v1/retraining_run/{run.pk}/").json()
    assert body["canary"] == {
        "experiment": experiment.pk,
        "status": "RUNNING",
        "decision": None,
        "ends_at": body["canary"]["ends_at"],
        "promoted": None,
    }
    assert alice_client.get(f"/api/v1/retraining_run/{first.pk}/").json()["canary"] is None

    # Before the window ends nothing is decided, whatever the events say.
    # Users split as the weights say (90/10), so the sample-ratio check has nothing to flag.
    _attribute(experiment, "control", target, users=2700, converted_every=3)
    _attribute(experiment, "variant", canary, users=300, converted_every=10)
    assert canaries_decide() == {"promoted": 0, "rolled_back": 0}

    before = _row(run)
    _end_window(experiment)
    # The test commits (the run's heartbeat thread needs it), so hold the decision in an outer
    # transaction to see the notification it queues on commit.
    with (
        transaction.atomic(),
        caplog.at_level(logging.ERROR),
        django_capture_on_commit_callbacks() as callbacks,
    ):
        assert canaries_decide() == {"promoted": 0, "rolled_back": 1}
    experiment.refresh_from_db()
    assert (experiment.status, experiment.decision, experiment.promoted_slot_id) == (
        "STOPPED",
        "control_better",
        None,
    )
    target.refresh_from_db()
    canary.refresh_from_db()
    assert (target.weight, target.trained_model_id, target.is_active) == (
        100,
        first.trained_model_id,
        True,
    )
    assert (canary.is_active, canary.weight) == (False, 0)
    assert _row(run) == before  # the finished run is not written again
    assert any("rolled back" in r.getMessage() for r in caplog.records)
    # The webhook task gets a signed "rolled back" notice; deliver it as the task would.
    sends = [cb for cb in callbacks if getattr(cb, "func", None) is notify._send_webhook]
    assert len(sends) == 1
    sent = sends[0].args[0]
    assert sent["run_id"] is None  # recorded nowhere on the run
    notify.webhook_notify(schedule_id=sent["schedule_id"], payload=sent["payload"])
    (raw, signature), *_ = received.received
    payload = json.loads(raw)
    assert payload["event"] == "retraining.canary.rolled_back" and signature
    assert payload["run"]["id"] == run.pk and payload["experiment"]["id"] == experiment.pk
    assert payload["experiment"]["decision"] == "control_better"
    body = alice_client.get(f"/api/v1/retraining_run/{run.pk}/").json()
    assert (body["canary"]["status"], body["canary"]["decision"]) == ("STOPPED", "control_better")
    assert body["canary"]["promoted"] is False
    # Decided once: a second pass finds nothing to do.
    assert canaries_decide() == {"promoted": 0, "rolled_back": 0}


@pytest.mark.django_db(transaction=True)  # the run's heartbeat thread must see its rows
def test_an_equal_canary_is_promoted_into_the_target_slot_with_history(
    project: Project, ml100k_csv: Path, ials: ModelConfiguration
) -> None:
    schedule, first, run = _canary_run(project, ml100k_csv, ials)
    target = DeploymentSlot.objects.get(project=project, name="auto-deploy")
    canary = DeploymentSlot.objects.get(project=project, name="auto-deploy-canary")
    experiment = Experiment.objects.get(retraining_run_id=run.pk)

    # A second canary run while this one runs is refused by the gate, and changes no slot.
    refused = _run(schedule)
    assert refused.gate_decision == "rejected" and "still running" in refused.gate_report["reason"]
    assert not Experiment.objects.filter(retraining_run_id=refused.pk).exists()
    canary.refresh_from_db()
    assert canary.trained_model_id == run.trained_model_id and canary.weight == 10

    _attribute(experiment, "control", target, users=1800, converted_every=5)
    _attribute(experiment, "variant", canary, users=200, converted_every=5)
    before = _row(run)
    _end_window(experiment)
    assert canaries_decide() == {"promoted": 1, "rolled_back": 0}
    experiment.refresh_from_db()
    assert experiment.status == "STOPPED" and experiment.decision != "control_better"
    assert experiment.promoted_slot_id == target.pk
    target.refresh_from_db()
    canary.refresh_from_db()
    assert (target.weight, target.trained_model_id) == (100, run.trained_model_id)
    assert (canary.is_active, canary.weight) == (False, 0)
    history = SlotHistory.objects.filter(slot=target).order_by("-id").first()
    assert history is not None
    assert (history.trained_model_id, history.previous_model_id, history.changed_by) == (
        run.trained_model_id,
        first.trained_model_id,
        f"canary of run #{run.pk}",
    )
    assert _row(run) == before

    # The next canary reuses the switched-off canary slot.
    again = _run(schedule)
    assert again.gate_decision == "canary", again.gate_report
    canary.refresh_from_db()
    assert (canary.is_active, canary.weight, canary.trained_model_id) == (
        True,
        10,
        again.trained_model_id,
    )
    assert DeploymentSlot.objects.filter(project=project).count() == 2


def test_the_schedule_api_validates_the_canary_fields(
    alice_client: APIClient, project: Project, ials: ModelConfiguration
) -> None:
    base = {"project": project.pk, "cron_expression": "0 3 * * *", "model_configuration": ials.pk}
    for field, value in [
        ("deploy_mode", "shadow"),
        ("canary_percent", 0),
        ("canary_percent", 51),
        ("canary_minutes", 0),
        ("canary_metric", "impression"),
        ("canary_metric", "Click"),
        ("canary_metric", "x" * 33),
    ]:
        response = alice_client.post(
            "/api/v1/retraining_schedule/", {**base, field: value}, format="json"
        )
        assert response.status_code == 400 and field in response.json(), response.content
    response = alice_client.post("/api/v1/retraining_schedule/", base, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (
        body["deploy_mode"],
        body["canary_percent"],
        body["canary_minutes"],
        body["canary_metric"],
    ) == ("replace", 10, 60, "click")
    changed = alice_client.patch(
        f"/api/v1/retraining_schedule/{body['id']}/",
        {"deploy_mode": "canary", "canary_percent": 25, "canary_metric": "purchase"},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    assert (
        changed.json()["deploy_mode"],
        changed.json()["canary_percent"],
        changed.json()["canary_metric"],
    ) == ("canary", 25, "purchase")


@pytest.mark.django_db(transaction=True)  # the run's heartbeat thread must see its rows
def test_the_runs_table_shows_the_canary_state(
    project: Project, ml100k_csv: Path, ials: ModelConfiguration, alice: Any
) -> None:
    from django.test import Client

    schedule, first, run = _canary_run(project, ml100k_csv, ials)
    web = Client()
    web.force_login(alice)
    page = web.get(f"/projects/{project.pk}/retraining/runs/").content.decode()
    row = page[page.index(f'data-run-id="{run.pk}"') :]
    row = row[: row.index("</tr>")]
    experiment = Experiment.objects.get(retraining_run_id=run.pk)
    assert 'data-canary-status="RUNNING"' in row and f"experiment #{experiment.pk}" in row
    _end_window(experiment)
    canaries_decide()  # no events: "continue", so promoted
    page = web.get(f"/projects/{project.pk}/retraining/runs/").content.decode()
    row = page[page.index(f'data-run-id="{run.pk}"') :]
    row = row[: row.index("</tr>")]
    assert 'data-canary-status="STOPPED"' in row and "promoted" in row and "(continue)" in row


@pytest.mark.django_db(transaction=True)  # the run's heartbeat thread must see its rows
def test_a_running_canary_refuses_model_changes_of_its_slots_until_it_ends(
    project: Project,
    ml100k_csv: Path,
    ials: ModelConfiguration,
    alice: Any,
    alice_client: APIClient,
    admin_client: Any,
) -> None:
    from django.test import Client

    schedule, first, run = _canary_run(project, ml100k_csv, ials, canary_metric="purchase")
    target = DeploymentSlot.objects.get(project=project, name="auto-deploy")
    canary = DeploymentSlot.objects.get(project=project, name="auto-deploy-canary")
    experiment = Experiment.objects.get(retraining_run_id=run.pk)
    assert experiment.metric == "purchase"  # the schedule's canary_metric (default click)
    history = SlotHistory.objects.count()
    slots = "/api/v1/deployment_slot"

    # A user's change of either slot's model, and a rollback of the target: 409, naming it.
    for response in (
        alice_client.patch(
            f"{slots}/{target.pk}/", {"trained_model": run.trained_model_id}, format="json"
        ),
        alice_client.post(f"{slots}/{target.pk}/rollback/"),
        alice_client.patch(
            f"{slots}/{canary.pk}/", {"trained_model": first.trained_model_id}, format="json"
        ),
    ):
        assert response.status_code == 409, response.content
        detail = response.json()["detail"]
        assert f"experiment #{experiment.pk}" in detail and f"run #{run.pk}" in detail
    # The UI's rollback button and the admin say the same.
    web = Client()
    web.force_login(alice)
    page = web.post(
        f"/projects/{project.pk}/deployment/slots/{target.pk}/rollback/", follow=True
    ).content.decode()
    assert f"Promote or stop experiment #{experiment.pk} first." in page
    form = {"project": project.pk, "name": target.name, "weight": 90, "is_active": "on"}
    page = admin_client.post(
        f"/admin/deployment/deploymentslot/{target.pk}/change/",
        {**form, "trained_model": run.trained_model_id},
    )
    assert page.status_code == 200 and f"experiment #{experiment.pk}" in page.content.decode()

    # Another run's replace deploy into the target completes rejected and says why.
    schedules.schedule_update(schedule=schedule, deploy_mode="replace")
    replaced = _run(schedule)
    assert replaced.gate_decision == "rejected", replaced.gate_report
    assert f"experiment #{experiment.pk}" in replaced.gate_report["reason"]

    target.refresh_from_db()
    canary.refresh_from_db()
    experiment.refresh_from_db()
    assert (target.trained_model_id, target.weight) == (first.trained_model_id, 90)
    assert (canary.trained_model_id, canary.weight) == (run.trained_model_id, 10)
    assert experiment.status == "RUNNING" and SlotHistory.objects.count() == history

    # Once the canary has ended (here a user stops it), the slot may change again.
    assert alice_client.post(f"/api/v1/experiment/{experiment.pk}/stop/").status_code == 200
    response = alice_client.patch(
        f"{slots}/{target.pk}/", {"trained_model": run.trained_model_id}, format="json"
    )
    assert response.status_code == 200, response.content
