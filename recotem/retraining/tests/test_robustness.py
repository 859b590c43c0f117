"""Review fixes: the reaper ends lost models and tuning jobs, re-sends once per interval, runs carry
hard time limits, deploys never revive an inactive slot, the gate refit reads through storage."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import before_task_publish
from django.core.files.storage import InMemoryStorage, Storage
from django.db.models.signals import post_save
from django.utils import timezone

from conftest import require
from recotem.core.models import TaskLog
from recotem.deployment.models import DeploymentSlot
from recotem.deployment.services import slot_create
from recotem.projects.models import Project, TrainingData
from recotem.projects.services import training_data_create_from_frame_file
from recotem.retraining import reaper, runs, schedules
from recotem.retraining.models import RetrainingRun, RetrainingSchedule, RunStatus
from recotem.retraining.names import RUN_TASK
from recotem.retraining.runner import run_execute
from recotem.retraining.tests.conftest import make_model
from recotem.training.models import ModelConfiguration, TrainedModel
from recotem.training.services import trained_model_create, trained_model_train
from recotem.tuning import services as tuning_services
from recotem.tuning.models import EvaluationConfig, ParameterTuningJob, SplitConfig


@pytest.fixture
def schedule(project: Project, config: ModelConfiguration) -> RetrainingSchedule:
    return schedules.schedule_create(
        project=project, cron_expression="0 2 * * *", model_configuration=config
    )


def _job(
    project: Project,
    data: TrainingData,
    split: SplitConfig,
    evaluation: EvaluationConfig,
    **fields: Any,
) -> ParameterTuningJob:
    return ParameterTuningJob.objects.create(
        project=project, data=data, split=split, evaluation=evaluation, **fields
    )


def test_the_reaper_fails_models_and_tuning_jobs_whose_heartbeat_stopped(
    project: Project,
    config: ModelConfiguration,
    data: TrainingData,
    split: SplitConfig,
    evaluation: EvaluationConfig,
) -> None:
    now = timezone.now()
    stale = now - timedelta(minutes=5)
    lost_model = make_model(
        project, config, data, status="RUNNING", started_at=stale, heartbeat_at=stale
    )
    alive_model = make_model(
        project, config, data, status="RUNNING", started_at=stale, heartbeat_at=now
    )
    lost_job = _job(
        project, data, split, evaluation, status="RUNNING", started_at=stale, heartbeat_at=stale
    )
    alive_job = _job(
        project, data, split, evaluation, status="RUNNING", started_at=stale, heartbeat_at=now
    )
    report = reaper.runs_reap(now=now)
    assert (report["models_lost"], report["tuning_jobs_lost"]) == (1, 1)
    for obj in (lost_model, alive_model, lost_job, alive_job):
        obj.refresh_from_db()
    assert (
        lost_model.status == "FAILED" and lost_model.error == "worker lost (no heartbeat for 300 s)"
    )
    assert lost_job.status == "FAILED" and lost_job.error == "worker lost (no heartbeat for 300 s)"
    assert lost_model.completed_at is not None
    assert alive_model.status == "RUNNING" and alive_job.status == "RUNNING"
    assert TaskLog.objects.filter(trained_model_id=lost_model.pk, level="ERROR").exists()


def test_the_reaper_waits_longer_for_parallel_tuning_jobs_queued_behind_other_work(
    project: Project,
    data: TrainingData,
    split: SplitConfig,
    evaluation: EvaluationConfig,
) -> None:
    now = timezone.now()
    queued = now - timedelta(minutes=10)
    abandoned = now - tuning_services.PARALLEL_TUNING_QUEUE_WAIT - timedelta(minutes=1)
    waiting = _job(
        project,
        data,
        split,
        evaluation,
        status="RUNNING",
        started_at=queued,
        heartbeat_at=queued,
        n_tasks_parallel=2,
    )
    lost = _job(
        project,
        data,
        split,
        evaluation,
        status="RUNNING",
        started_at=abandoned,
        heartbeat_at=abandoned,
        n_tasks_parallel=2,
    )
    assert reaper.runs_reap(now=now)["tuning_jobs_lost"] == 1
    waiting.refresh_from_db()
    lost.refresh_from_db()
    assert waiting.status == "RUNNING" and lost.status == "FAILED"


def test_the_reaper_fails_the_model_and_tuning_job_of_a_run_it_ends(
    schedule: RetrainingSchedule,
    project: Project,
    config: ModelConfiguration,
    data: TrainingData,
    split: SplitConfig,
    evaluation: EvaluationConfig,
) -> None:
    now = timezone.now()
    # The worker is alive (fresh heartbeats) but the run is over its time limit.
    model = make_model(project, config, data, status="RUNNING", started_at=now, heartbeat_at=now)
    job = _job(project, data, split, evaluation, status="RUNNING", started_at=now, heartbeat_at=now)
    run = RetrainingRun.objects.create(
        schedule=schedule,
        status=RunStatus.RUNNING,
        trigger="manual",
        heartbeat_at=now,
        started_at=now - timedelta(seconds=schedule.time_limit_seconds + 5),
        trained_model=model,
        tuning_job=job,
        celery_task_id="0f0e0d0c-task",
    )
    report = reaper.runs_reap(now=now)
    assert report["time_limit"] == 1
    for obj in (run, model, job):
        obj.refresh_from_db()
    assert run.status == "FAILED" and run.error_message.startswith("time limit")
    assert model.status == "FAILED" and model.error.startswith("time limit")
    assert job.status == "FAILED" and job.error.startswith("time limit")
    assert RetrainingRun.objects.filter(retry_of=run, status="PENDING").exists()


def test_remote_revoke_is_skipped_on_the_embedded_broker(settings: Any) -> None:
    settings.CELERY_BROKER_IS_EMBEDDED = True
    assert reaper.revoke("some-task-id") is False


def test_the_reaper_resends_a_lost_pending_run_once_per_interval(
    schedule: RetrainingSchedule, settings: Any, published: list[dict[str, Any]]
) -> None:
    # Handed to the broker 20 minutes ago and never started: the broker lost the message (a
    # Redis without persistence restarted). The outbox sends it again, at most once per interval.
    now = timezone.now()
    run = RetrainingRun.objects.create(
        schedule=schedule,
        status=RunStatus.PENDING,
        trigger="manual",
        sent_at=now - timedelta(minutes=20),
    )
    interval = timedelta(seconds=settings.RECOTEM_PENDING_RESEND_SECONDS)
    assert reaper.runs_reap(now=now)["resent"] == 1
    assert reaper.runs_reap(now=now + timedelta(seconds=30))["resent"] == 0
    assert reaper.runs_reap(now=now + interval - timedelta(seconds=1))["resent"] == 0
    assert reaper.runs_reap(now=now + interval + timedelta(seconds=1))["resent"] == 1
    assert len(published) == 2
    run.refresh_from_db()
    assert run.sent_at == now + interval + timedelta(seconds=1) and not run.send_pending


@contextmanager
def _broker(url: str) -> Iterator[None]:
    """Point this process's Celery app at ``url`` (and back), dropping pooled connections."""
    from recotem.celery import app

    def reset() -> None:
        app._pool = None
        app.amqp._producer_pool = None

    old = app.conf.broker_url
    app.conf.broker_url = url
    reset()
    try:
        yield
    finally:
        app.conf.broker_url = old
        reset()


def test_a_run_recorded_while_the_broker_is_away_is_sent_once_it_answers(
    schedule: RetrainingSchedule, tmp_path: Path
) -> None:
    import redis

    from recotem.testing import processes

    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    port = processes.free_port()
    server = processes.redis_start(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    with _broker(url):
        processes.stop(server)  # the broker goes away
        run, queued = runs.run_trigger(schedule=schedule, trigger="manual")
        assert not queued
        run.refresh_from_db()
        assert run.send_pending and run.status == "PENDING"
        assert reaper.runs_reap()["resent"] == 0  # still away: kept, not lost
        server = processes.redis_start(port, tmp_path)  # and comes back
        try:
            assert reaper.runs_reap()["resent"] == 1
            run.refresh_from_db()
            assert not run.send_pending and run.sent_at is not None
            assert redis.Redis.from_url(url).llen("retraining") == 1  # sent once, not twice
            assert reaper.runs_reap()["resent"] == 0
        finally:
            processes.stop(server)


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def grab(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        if sender == RUN_TASK:
            seen.append(dict(headers or {}))

    before_task_publish.connect(grab, weak=False)
    yield seen
    before_task_publish.disconnect(grab)


def test_run_messages_carry_the_schedules_hard_and_soft_time_limit(
    schedule: RetrainingSchedule,
    published: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    from recotem.retraining.tasks import run_retraining

    RetrainingSchedule.objects.filter(pk=schedule.pk).update(time_limit_seconds=120)
    run, _ = runs.run_trigger(schedule=schedule, trigger="manual")
    assert [list(h["timelimit"]) for h in published] == [[150, 120]]
    assert published[0]["id"] == RetrainingRun.objects.get(pk=run.pk).celery_task_id
    RetrainingRun.objects.filter(pk=run.pk).update(status="COMPLETED")
    # A fire of the stock beat scheduler carries no limits: its run is sent again as a message
    # that does. (The schedule has an instant due: created a day ago.)
    RetrainingSchedule.objects.filter(pk=schedule.pk).update(
        fires_from=timezone.now() - timedelta(days=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        result = run_retraining.apply(kwargs={"schedule_id": schedule.pk}).get()
    assert result["status"] == "queued"
    assert RetrainingRun.objects.get(pk=result["run_id"]).status == "PENDING"
    assert [list(h["timelimit"]) for h in published[1:]] == [[150, 120]]


class _RemoteStorage(Storage):
    """Files kept off the local disk, like S3Storage: everything but ``path()`` (which raises)."""

    def __init__(self) -> None:
        self._files = InMemoryStorage()

    def _open(self, name: str, mode: str = "rb") -> Any:
        return self._files._open(name, mode)

    def _save(self, name: str, content: Any) -> str:
        return self._files._save(name, content)

    def exists(self, name: str) -> bool:
        return self._files.exists(name)

    def delete(self, name: str) -> None:
        self._files.delete(name)

    def size(self, name: str) -> int:
        return self._files.size(name)


@pytest.fixture
def small_data(project: Project, small_csv: Path) -> TrainingData:
    return training_data_create_from_frame_file(project=project, path=small_csv, name="small.csv")


def _trained(project: Project, data: TrainingData, name: str, cls: str) -> TrainedModel:
    config = ModelConfiguration.objects.create(
        project=project, name=name, recommender_class_name=cls
    )
    model = trained_model_train(
        trained_model_id=trained_model_create(configuration=config, data=data, enqueue=False).pk
    )
    assert model.status == "COMPLETED", model.error
    return model


def _execute(schedule: RetrainingSchedule) -> RetrainingRun:
    run, _ = runs.run_trigger(schedule=schedule, trigger="manual", force=True)
    result = run_execute(run_id=run.pk)
    assert result is not None
    return result


@pytest.mark.django_db(transaction=True)  # the run's heartbeat thread must see its rows
def test_auto_deploy_never_revives_or_adds_a_slot_next_to_inactive_ones(
    project: Project, small_data: TrainingData
) -> None:
    incumbent = _trained(project, small_data, "pop", "TopPopRecommender")
    slot_create(
        project=project, name="auto-deploy", trained_model=incumbent, weight=100, is_active=False
    )
    schedule = schedules.schedule_create(
        project=project,
        cron_expression="0 3 * * *",
        model_configuration=incumbent.configuration,
        auto_deploy=True,
    )
    run = _execute(schedule)
    assert run.status == "FAILED" and not run.retryable
    assert "no active slot to deploy to; set deploy_slot" in run.error_message
    assert not RetrainingRun.objects.filter(retry_of=run).exists()
    slot = DeploymentSlot.objects.get(project=project)
    assert (slot.is_active, slot.trained_model_id) == (False, incumbent.pk)


@pytest.mark.django_db(transaction=True)  # the run's heartbeat thread must see its rows
def test_the_gate_refit_reads_training_data_through_storage(
    project: Project, small_data: TrainingData, monkeypatch: Any
) -> None:
    incumbent = _trained(project, small_data, "pop", "TopPopRecommender")
    slot_create(project=project, name="main", trained_model=incumbent)
    rp3 = ModelConfiguration.objects.create(
        project=project, name="rp3", recommender_class_name="RP3betaRecommender"
    )
    schedule = schedules.schedule_create(
        project=project,
        cron_expression="0 3 * * *",
        model_configuration=rp3,
        auto_deploy=True,
    )
    # A storage without local paths (like S3): `.path` raises NotImplementedError.
    csv = Path(small_data.file.path)
    for model in (TrainingData, TrainedModel):
        monkeypatch.setattr(model._meta.get_field("file"), "storage", _RemoteStorage())
    data = training_data_create_from_frame_file(project=project, path=csv, name="small.csv")
    with pytest.raises(NotImplementedError):
        data.file.path  # noqa: B018
    run = _execute(schedule)
    assert run.status == "COMPLETED", run.error_message
    assert run.training_data_id == data.pk
    assert run.gate_report["method"].startswith("paired t")
    assert run.gate_decision in ("deployed", "rejected")


@pytest.mark.django_db(transaction=True)  # the run's heartbeat thread must see its rows
def test_a_soft_time_limit_ends_the_run_and_its_model_as_time_limit(
    project: Project, small_data: TrainingData, config: ModelConfiguration
) -> None:
    """Celery's pool raises SoftTimeLimitExceeded in the task's main thread by a signal; so does this."""
    schedule = schedules.schedule_create(
        project=project, cron_expression="0 3 * * *", model_configuration=config
    )

    def soft_limit(signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded()

    def arm(sender: Any, instance: TaskLog, created: bool, **kwargs: Any) -> None:
        if created and instance.trained_model_id and " on data #" in instance.contents:
            signal.setitimer(signal.ITIMER_REAL, 0.001)

    previous = signal.signal(signal.SIGALRM, soft_limit)
    post_save.connect(arm, sender=TaskLog, weak=False)
    try:
        run = _execute(schedule)
    finally:
        post_save.disconnect(arm, sender=TaskLog)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert run.status == "FAILED"
    assert (
        run.error_message
        == f"time limit: the run exceeded time_limit_seconds={schedule.time_limit_seconds}."
    )
    model = TrainedModel.objects.get(pk=run.trained_model_id)
    assert model.status == "FAILED" and model.error.startswith("time limit")
    assert RetrainingRun.objects.filter(retry_of=run, status="PENDING").exists()
