"""Review fixes: the reaper ends lost models and tuning jobs, re-sends once per interval, runs carry
hard time limits, deploys never revive an inactive slot, the gate refit reads through storage."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import before_task_publish
from django.core.files.storage import InMemoryStorage, Storage
from django.db.models.signals import post_save
from django.utils import timezone

from recotem.deployment.models import DeploymentSlot
from recotem.deployment.services import slot_create
from recotem.projects.models import Project, TrainingData
from recotem.projects.services import training_data_create_from_frame_file
from recotem.retraining import services
from recotem.retraining.models import RetrainingRun, RetrainingSchedule, RunStatus
from recotem.retraining.runner import run_execute
from recotem.retraining.tests.conftest import make_model
from recotem.training.models import TaskLog, TrainedModel
from recotem.training.services import trained_model_create, trained_model_train
from recotem.tuning.models import (
    EvaluationConfig,
    ModelConfiguration,
    ParameterTuningJob,
    SplitConfig,
)


@pytest.fixture
def schedule(project: Project, config: ModelConfiguration) -> RetrainingSchedule:
    return services.schedule_create(project=project, cron_expression="0 2 * * *", model_configuration=config)


def _job(project: Project, data: TrainingData, split: SplitConfig, evaluation: EvaluationConfig,
         **fields: Any) -> ParameterTuningJob:
    return ParameterTuningJob.objects.create(project=project, data=data, split=split, evaluation=evaluation, **fields)


def test_the_reaper_fails_models_and_tuning_jobs_whose_heartbeat_stopped(
    project: Project, config: ModelConfiguration, data: TrainingData, split: SplitConfig,
    evaluation: EvaluationConfig,
) -> None:
    now = timezone.now()
    stale = now - timedelta(minutes=5)
    lost_model = make_model(project, config, data, status="RUNNING", started_at=stale, heartbeat_at=stale)
    alive_model = make_model(project, config, data, status="RUNNING", started_at=stale, heartbeat_at=now)
    lost_job = _job(project, data, split, evaluation, status="RUNNING", started_at=stale, heartbeat_at=stale)
    alive_job = _job(project, data, split, evaluation, status="RUNNING", started_at=stale, heartbeat_at=now)
    report = services.runs_reap(now=now)
    assert (report["models_lost"], report["tuning_jobs_lost"]) == (1, 1)
    for obj in (lost_model, alive_model, lost_job, alive_job):
        obj.refresh_from_db()
    assert lost_model.status == "FAILED" and lost_model.error == "worker lost (no heartbeat for 300 s)"
    assert lost_job.status == "FAILED" and lost_job.error == "worker lost (no heartbeat for 300 s)"
    assert lost_model.completed_at is not None
    assert alive_model.status == "RUNNING" and alive_job.status == "RUNNING"
    assert TaskLog.objects.filter(trained_model=lost_model, level="ERROR").exists()


def test_the_reaper_waits_longer_for_parallel_tuning_jobs_queued_behind_other_work(
    project: Project, data: TrainingData, split: SplitConfig, evaluation: EvaluationConfig,
) -> None:
    now = timezone.now()
    queued = now - timedelta(minutes=10)
    abandoned = now - services.PARALLEL_TUNING_QUEUE_WAIT - timedelta(minutes=1)
    waiting = _job(project, data, split, evaluation, status="RUNNING", started_at=queued, heartbeat_at=queued,
                   n_tasks_parallel=2)
    lost = _job(project, data, split, evaluation, status="RUNNING", started_at=abandoned, heartbeat_at=abandoned,
                n_tasks_parallel=2)
    assert services.runs_reap(now=now)["tuning_jobs_lost"] == 1
    waiting.refresh_from_db()
    lost.refresh_from_db()
    assert waiting.status == "RUNNING" and lost.status == "FAILED"


def test_the_reaper_fails_the_model_and_tuning_job_of_a_run_it_ends(
    schedule: RetrainingSchedule, project: Project, config: ModelConfiguration, data: TrainingData,
    split: SplitConfig, evaluation: EvaluationConfig,
) -> None:
    now = timezone.now()
    # The worker is alive (fresh heartbeats) but the run is over its time limit.
    model = make_model(project, config, data, status="RUNNING", started_at=now, heartbeat_at=now)
    job = _job(project, data, split, evaluation, status="RUNNING", started_at=now, heartbeat_at=now)
    run = RetrainingRun.objects.create(
        schedule=schedule, status=RunStatus.RUNNING, trigger="manual", heartbeat_at=now,
        started_at=now - timedelta(seconds=schedule.time_limit_seconds + 5), trained_model=model, tuning_job=job,
        celery_task_id="0f0e0d0c-task",
    )
    report = services.runs_reap(now=now)
    assert report["time_limit"] == 1
    for obj in (run, model, job):
        obj.refresh_from_db()
    assert run.status == "FAILED" and run.error_message.startswith("time limit")
    assert model.status == "FAILED" and model.error.startswith("time limit")
    assert job.status == "FAILED" and job.error.startswith("time limit")
    assert RetrainingRun.objects.filter(retry_of=run, status="PENDING").exists()


def test_remote_revoke_is_skipped_on_the_embedded_broker(settings: Any) -> None:
    settings.CELERY_BROKER_IS_EMBEDDED = True
    assert services._revoke("some-task-id") is False


def test_the_reaper_resends_a_lost_pending_run_once_per_interval(
    schedule: RetrainingSchedule, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    run = RetrainingRun.objects.create(schedule=schedule, status=RunStatus.PENDING, trigger="manual")
    now = timezone.now()
    RetrainingRun.objects.filter(pk=run.pk).update(queued_at=now - timedelta(minutes=20))
    interval = timedelta(seconds=settings.RECOTEM_PENDING_RESEND_SECONDS)
    with django_capture_on_commit_callbacks() as sent:
        assert services.runs_reap(now=now)["resent"] == 1
        assert services.runs_reap(now=now + timedelta(seconds=30))["resent"] == 0
        assert services.runs_reap(now=now + interval - timedelta(seconds=1))["resent"] == 0
        assert services.runs_reap(now=now + interval + timedelta(seconds=1))["resent"] == 1
    assert len(sent) == 2
    run.refresh_from_db()
    assert run.resent_at == now + interval + timedelta(seconds=1)


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def grab(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        if sender == services.TASK_NAME:
            seen.append(dict(headers or {}))

    before_task_publish.connect(grab, weak=False)
    yield seen
    before_task_publish.disconnect(grab)


def test_run_messages_carry_the_schedules_hard_and_soft_time_limit(
    schedule: RetrainingSchedule, published: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    from recotem.retraining.tasks import run_retraining

    RetrainingSchedule.objects.filter(pk=schedule.pk).update(time_limit_seconds=120)
    with django_capture_on_commit_callbacks(execute=True):
        run = services.run_trigger(schedule=schedule, trigger="manual")
    assert [list(h["timelimit"]) for h in published] == [[150, 120]]
    assert published[0]["id"] == RetrainingRun.objects.get(pk=run.pk).celery_task_id
    RetrainingRun.objects.filter(pk=run.pk).update(status="COMPLETED")
    # A beat fire carries no limits: its run is sent again as a message that does.
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
    config = ModelConfiguration.objects.create(project=project, name=name, recommender_class_name=cls)
    model = trained_model_train(trained_model_id=trained_model_create(configuration=config, data=data,
                                                                      enqueue=False).pk)
    assert model.status == "COMPLETED", model.error
    return model


def _execute(schedule: RetrainingSchedule) -> RetrainingRun:
    run = services.run_trigger(schedule=schedule, trigger="manual", force=True)
    result = run_execute(run_id=run.pk)
    assert result is not None
    return result


def test_auto_deploy_never_revives_or_adds_a_slot_next_to_inactive_ones(
    project: Project, small_data: TrainingData
) -> None:
    incumbent = _trained(project, small_data, "pop", "TopPopRecommender")
    slot_create(project=project, name="auto-deploy", trained_model=incumbent, weight=100, is_active=False)
    schedule = services.schedule_create(
        project=project, cron_expression="0 3 * * *", model_configuration=incumbent.configuration, auto_deploy=True,
    )
    run = _execute(schedule)
    assert run.status == "FAILED" and not run.retryable
    assert "no active slot to deploy to; set deploy_slot" in run.error_message
    assert not RetrainingRun.objects.filter(retry_of=run).exists()
    slot = DeploymentSlot.objects.get(project=project)
    assert (slot.is_active, slot.trained_model_id) == (False, incumbent.pk)


def test_the_gate_refit_reads_training_data_through_storage(
    project: Project, small_data: TrainingData, monkeypatch: Any
) -> None:
    incumbent = _trained(project, small_data, "pop", "TopPopRecommender")
    slot_create(project=project, name="main", trained_model=incumbent)
    rp3 = ModelConfiguration.objects.create(project=project, name="rp3", recommender_class_name="RP3betaRecommender")
    schedule = services.schedule_create(
        project=project, cron_expression="0 3 * * *", model_configuration=rp3, auto_deploy=True,
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
    assert run.metrics["gate_method"].startswith("both configurations refitted")
    assert run.gate_decision in ("deployed", "rejected")


def test_a_soft_time_limit_ends_the_run_and_its_model_as_time_limit(
    project: Project, small_data: TrainingData, config: ModelConfiguration
) -> None:
    """Celery's pool raises SoftTimeLimitExceeded in the task's main thread by a signal; so does this."""
    schedule = services.schedule_create(project=project, cron_expression="0 3 * * *", model_configuration=config)

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
    assert run.error_message == f"time limit: the run exceeded time_limit_seconds={schedule.time_limit_seconds}."
    model = TrainedModel.objects.get(pk=run.trained_model_id)
    assert model.status == "FAILED" and model.error.startswith("time limit")
    assert RetrainingRun.objects.filter(retry_of=run, status="PENDING").exists()
