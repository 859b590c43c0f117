from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings as dj_settings
from django.utils import timezone

from recotem.lib.signing import HEADER_NAME, verify_signature
from recotem.projects.models import Project
from recotem.retraining import notify, reaper, runs, schedules
from recotem.retraining.models import RetrainingRun, RetrainingSchedule, RunStatus
from recotem.retraining.selectors import overdue_schedules
from recotem.retraining.tests.conftest import make_data, make_model

URL = "/api/v1/retraining_schedule/"


@pytest.fixture
def schedule(project: Project, config: Any) -> RetrainingSchedule:
    return schedules.schedule_create(
        project=project, cron_expression="0 2 * * *", model_configuration=config
    )


def _running(schedule: RetrainingSchedule, **fields: Any) -> RetrainingRun:
    now = timezone.now()
    defaults = {"trigger": "manual", "started_at": now, "heartbeat_at": now}
    return RetrainingRun.objects.create(
        schedule=schedule, status=RunStatus.RUNNING, **{**defaults, **fields}
    )


def test_it_triggers_a_run_and_refuses_an_overlapping_one(
    alice_client: Any, schedule: RetrainingSchedule, django_capture_on_commit_callbacks: Any
) -> None:
    RetrainingSchedule.objects.filter(pk=schedule.pk).update(
        is_enabled=False
    )  # manual runs ignore this
    response = alice_client.post(f"{URL}{schedule.pk}/trigger/", {"force": True}, format="json")
    assert response.status_code == 202, response.content
    run = RetrainingRun.objects.get(pk=response.json()["run_id"])
    assert (run.status, run.trigger, run.force, run.attempt) == ("PENDING", "manual", True, 1)
    response = alice_client.post(f"{URL}{schedule.pk}/trigger/", {}, format="json")
    assert response.status_code == 409
    assert response.json()["run_id"] == run.pk and "still active" in response.json()["detail"]
    assert RetrainingRun.objects.count() == 1
    schedule.refresh_from_db()
    assert schedule.last_run_status == "PENDING" and schedule.last_run_at is not None


def test_it_rejects_a_non_boolean_force(alice_client: Any, schedule: RetrainingSchedule) -> None:
    response = alice_client.post(f"{URL}{schedule.pk}/trigger/", {"force": "yes"}, format="json")
    assert response.status_code == 400 and "force" in response.json()


def test_the_database_allows_one_active_run_per_schedule(schedule: RetrainingSchedule) -> None:
    runs.run_trigger(schedule=schedule, trigger="manual")
    with pytest.raises(runs.RunConflict):
        runs.run_trigger(schedule=schedule, trigger="manual")


def test_a_beat_fire_during_an_active_run_records_a_skipped_run(
    schedule: RetrainingSchedule,
) -> None:
    active = _running(schedule)
    fire_at = timezone.now().replace(second=0, microsecond=0)
    assert runs.run_for_beat_fire(schedule_id=schedule.pk, fire_at=fire_at) is None
    skipped = RetrainingRun.objects.exclude(pk=active.pk).get()
    assert skipped.status == "SKIPPED" and skipped.trigger == "schedule"
    assert skipped.fire_at == fire_at
    assert f"Run #{active.pk}" in skipped.skip_reason and "still active" in skipped.skip_reason


def test_the_reaper_fails_a_run_without_heartbeat_and_queues_a_retry(
    schedule: RetrainingSchedule,
) -> None:
    stale = timezone.now() - timedelta(minutes=5)
    run = _running(schedule, heartbeat_at=stale, started_at=stale)
    report = reaper.runs_reap()
    assert report["worker_lost"] == 1
    run.refresh_from_db()
    assert run.status == "FAILED" and run.error_message.startswith("worker lost")
    retry = RetrainingRun.objects.get(retry_of=run)
    assert (retry.status, retry.trigger, retry.attempt) == ("PENDING", "retry", 2)
    assert retry.not_before is not None and retry.not_before > timezone.now() + timedelta(
        seconds=50
    )


def test_the_reaper_enforces_the_time_limit(schedule: RetrainingSchedule) -> None:
    run = _running(
        schedule, started_at=timezone.now() - timedelta(seconds=schedule.time_limit_seconds + 5)
    )
    assert reaper.runs_reap()["time_limit"] == 1
    run.refresh_from_db()
    assert run.status == "FAILED" and run.error_message.startswith("time limit")


def test_a_healthy_run_is_left_alone(schedule: RetrainingSchedule) -> None:
    run = _running(schedule)
    assert reaper.runs_reap() == {
        "worker_lost": 0,
        "time_limit": 0,
        "cancelled": 0,
        "resent": 0,
        "webhooks_resent": 0,
        "overdue": 0,
        "models_lost": 0,
        "tuning_jobs_lost": 0,
        "events_deleted": 0,
    }
    run.refresh_from_db()
    assert run.status == "RUNNING"


def test_retries_back_off_exponentially_and_stop_at_max_retries(
    schedule: RetrainingSchedule,
) -> None:
    schedule.max_retries = 2
    schedule.save()
    assert [runs.backoff_seconds(schedule, a) for a in (1, 2, 3, 10)] == [60, 120, 240, 3600]
    first = _running(schedule)
    runs.run_fail(run=first, message="boom", retryable=True)
    second = RetrainingRun.objects.get(status="PENDING")
    RetrainingRun.objects.filter(pk=second.pk).update(status="RUNNING", heartbeat_at=timezone.now())
    second.refresh_from_db()
    runs.run_fail(run=second, message="boom", retryable=True)
    third = RetrainingRun.objects.get(status="PENDING")
    assert third.attempt == 3 and third.retry_of_id == first.pk
    RetrainingRun.objects.filter(pk=third.pk).update(status="RUNNING", heartbeat_at=timezone.now())
    third.refresh_from_db()
    runs.run_fail(run=third, message="boom", retryable=True)
    assert not RetrainingRun.objects.filter(status="PENDING").exists()
    assert RetrainingRun.objects.filter(status="FAILED").count() == 3


def test_a_non_retryable_error_is_not_retried(schedule: RetrainingSchedule) -> None:
    run = _running(schedule)
    runs.run_fail(run=run, message="no data", retryable=False)
    assert not RetrainingRun.objects.filter(status="PENDING").exists()


def test_a_finished_run_cannot_be_ended_twice(schedule: RetrainingSchedule) -> None:
    run = _running(schedule)
    assert runs.run_finish(run=run, status="COMPLETED")
    assert not runs.run_fail(run=run, message="late", retryable=True)
    run.refresh_from_db()
    assert run.status == "COMPLETED"


def test_it_lists_runs_newest_first_filtered_by_schedule_and_status(
    alice_client: Any, bob_client: Any, schedule: RetrainingSchedule
) -> None:
    a = RetrainingRun.objects.create(schedule=schedule, status="FAILED", trigger="manual")
    b = RetrainingRun.objects.create(schedule=schedule, status="SKIPPED", trigger="schedule")
    c = RetrainingRun.objects.create(
        schedule=schedule, status="FAILED", trigger="retry", retry_of=a, attempt=2
    )
    body = alice_client.get(f"/api/v1/retraining_run/?schedule={schedule.pk}").json()
    assert [r["id"] for r in body["results"]] == [c.pk, b.pk, a.pk]
    assert body["results"][0]["retry_of"] == a.pk and body["results"][0]["attempt"] == 2
    assert {"data_fingerprint", "gate_decision", "incumbent_metrics", "notification"} <= set(
        body["results"][0]
    )
    body = alice_client.get(f"/api/v1/retraining_run/?schedule={schedule.pk}&status=FAILED").json()
    assert [r["id"] for r in body["results"]] == [c.pk, a.pk]
    assert alice_client.get("/api/v1/retraining_run/?status=NOPE").status_code == 400
    assert bob_client.get("/api/v1/retraining_run/").json()["count"] == 0


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[bytes, str]] = []
    fail_first = 0

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((body, self.headers.get(HEADER_NAME, "")))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver(settings: Any) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = ["127.0.0.1"]
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_a_failure_posts_a_signed_webhook_with_retries(
    schedule: RetrainingSchedule, receiver: str, django_capture_on_commit_callbacks: Any
) -> None:
    from recotem.celery import app

    schedule.notify_on_failure = True
    schedule.webhook_url = receiver
    schedule.save()
    _Receiver.fail_first = 1
    run = _running(schedule)
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True  # the delivery task runs in-process
    try:
        with django_capture_on_commit_callbacks(execute=True):
            runs.run_fail(run=run, message="broken input", retryable=False)
    finally:
        app.conf.task_always_eager = eager
    assert len(_Receiver.received) == 2
    body, header = _Receiver.received[-1]
    assert verify_signature(body, header, schedule.webhook_secret.encode())
    assert b'"broken input"' in body and b'"retraining.run.failed"' in body
    run.refresh_from_db()
    assert run.notification["delivered"] is True
    assert [a.get("status") for a in run.notification["attempts"]] == [503, 204]


def test_a_failure_queues_the_webhook_instead_of_posting_inline(
    schedule: RetrainingSchedule, receiver: str, django_capture_on_commit_callbacks: Any
) -> None:
    """run_fail (called by the reaper) must not wait for a slow receiver: delivery is its own task."""
    schedule.notify_on_failure = True
    schedule.webhook_url = receiver
    schedule.save()
    run = _running(schedule)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        runs.run_fail(run=run, message="broken input", retryable=False)
    assert _Receiver.received == []
    run.refresh_from_db()
    assert run.notification == {
        "logged": True,
        "webhook_url": receiver,
        "delivered": None,
        "attempts": [],
    }
    assert len(callbacks) == 1  # the deliver_webhook message, sent on commit
    delivery = notify.webhook_notify(
        schedule_id=schedule.pk, payload={"event": "retraining.run.failed"}, run_id=run.pk
    )
    assert delivery is not None and delivery.delivered
    body, header = _Receiver.received[-1]
    assert verify_signature(body, header, schedule.webhook_secret.encode())
    run.refresh_from_db()
    assert run.notification["delivered"] is True


def test_a_webhook_to_a_host_not_allowed_is_refused(
    alice_client: Any, project: Project, config: Any, settings: Any
) -> None:
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = []
    response = alice_client.post(
        URL,
        {
            "project": project.pk,
            "cron_expression": "0 2 * * *",
            "model_configuration": config.pk,
            "webhook_url": "http://127.0.0.1:9/hook",
        },
        format="json",
    )
    assert response.status_code == 400 and "webhook_url" in response.json()


def test_it_flags_an_overdue_schedule_once(schedule: RetrainingSchedule, alice_client: Any) -> None:
    created = schedule.updated_at
    with time_machine.travel(created + timedelta(days=1, hours=1), tick=False):
        flagged = overdue_schedules()
        assert [s.pk for s, _ in flagged] == [schedule.pk]
        # The JWT of alice_client has expired a day later, so read the serializer directly.
        from recotem.retraining.api import RetrainingScheduleSerializer

        assert RetrainingScheduleSerializer(schedule, context={}).data["overdue"] is True
        # The reaper reads the database's clock, which time travel does not move: pass the time.
        assert reaper.runs_reap(now=timezone.now())["overdue"] == 1
        assert reaper.runs_reap(now=timezone.now())["overdue"] == 0
        RetrainingRun.objects.create(schedule=schedule, status="SKIPPED", trigger="schedule")
        assert overdue_schedules() == []


def test_ping_reports_processes_and_overdue_count(
    client: Any, schedule: RetrainingSchedule
) -> None:
    body = client.get("/api/v1/ping/").json()
    assert body["success"] and "alive" in body["worker"] and "alive" in body["beat"]
    assert body["retraining"] == {"overdue_schedules": 0}


def test_retention_keeps_newest_and_slot_models(project: Project, config: Any) -> None:
    from recotem.deployment.models import DeploymentSlot, SlotHistory
    from recotem.training.models import TrainedModel

    data = make_data(project)
    models = [make_model(project, config, data) for _ in range(6)]
    slot = DeploymentSlot.objects.create(project=project, name="main", trained_model=models[1])
    SlotHistory.objects.create(
        slot=slot, trained_model_id=models[1].pk, previous_model_id=models[0].pk
    )
    running = make_model(project, config, data, status="RUNNING")
    deleted = reaper.project_retain(project_id=project.pk, keep=2)["models"]
    assert sorted(deleted) == sorted(m.pk for m in models[2:4])
    remaining = set(TrainedModel.objects.values_list("pk", flat=True))
    assert remaining == {models[0].pk, models[1].pk, models[4].pk, models[5].pk, running.pk}
    assert dj_settings.RECOTEM_KEEP_MODELS == 10
