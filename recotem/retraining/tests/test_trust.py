"""The guarantees of a run, one by one, in-process against the real database (no broker needed
for most): one run per fire instant, edits never fire early, a fenced zombie, the deploy's
compare-and-set, retries created before notifications, cancel, database time, bounded disk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.core.files.base import ContentFile
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from recotem.deployment.models import DeploymentSlot, SlotHistory
from recotem.deployment.services import slot_create, slot_rollback, slot_set_model
from recotem.projects.models import DataSource, Project, TrainingData
from recotem.projects.services import training_data_create_from_frame_file
from recotem.retraining import reaper, runner, runs, schedules
from recotem.retraining.models import RetrainingRun, RetrainingSchedule, RunStatus
from recotem.retraining.selectors import due_fire
from recotem.retraining.tests.conftest import make_data
from recotem.training.models import ModelConfiguration, TrainedModel
from recotem.training.services import trained_model_create, trained_model_train


@pytest.fixture
def schedule(project: Project, config: ModelConfiguration) -> RetrainingSchedule:
    return schedules.schedule_create(
        project=project, cron_expression="0 2 * * *", model_configuration=config
    )


def _running(schedule: RetrainingSchedule) -> RetrainingRun:
    run, _ = runs.run_trigger(schedule=schedule, trigger="manual")
    started = runs.run_start(run_id=run.pk)
    assert started is not None and started.lease
    return started


# --- one fire, one run ------------------------------------------------------------------------


def test_it_records_one_run_per_fire_instant(schedule: RetrainingSchedule) -> None:
    instant = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    first = runs.run_for_beat_fire(schedule_id=schedule.pk, fire_at=instant)
    assert first is not None and first.fire_at == instant
    RetrainingRun.objects.filter(pk=first.pk).update(status=RunStatus.COMPLETED)
    # A restarted (or second) beat fires the same instant again: nothing new.
    assert runs.run_for_beat_fire(schedule_id=schedule.pk, fire_at=instant) is None
    assert RetrainingRun.objects.filter(schedule=schedule, fire_at=instant).count() == 1
    # And the database itself refuses it, whoever writes.
    with pytest.raises(IntegrityError), transaction.atomic():
        RetrainingRun.objects.create(
            schedule=schedule, status=RunStatus.SKIPPED, trigger="schedule", fire_at=instant
        )


def test_beat_decides_from_the_run_history_not_its_memory(schedule: RetrainingSchedule) -> None:
    RetrainingSchedule.objects.filter(pk=schedule.pk).update(
        fires_from=datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    )
    now = datetime(2026, 12, 1, 2, 0, 20, tzinfo=UTC)
    fire, wait = due_fire(schedule.pk, now)
    assert fire == datetime(2026, 12, 1, 2, 0, tzinfo=UTC) and 0 < wait <= 86400
    runs.run_for_beat_fire(schedule_id=schedule.pk, fire_at=fire)
    # Beat killed and restarted a second later: the instant is recorded, so it is not due.
    assert due_fire(schedule.pk, now + timedelta(seconds=1))[0] is None
    # After a pause of three days beat owes one run, for the latest missed instant.
    later = now + timedelta(days=3, hours=1)
    assert due_fire(schedule.pk, later)[0] == datetime(2026, 12, 4, 2, 0, tzinfo=UTC)


def test_an_edit_never_fires_before_the_previews_first_instant(
    schedule: RetrainingSchedule,
) -> None:
    # Last fire eight hours ago, edited now to fire daily at the time of an hour ago: the old beat
    # (deciding from the old last_run_at) was due at once; now the first fire is the preview's,
    # tomorrow. Times are relative to the database's clock, which stamps the edit (time travel
    # does not move it), so the test holds on any day.
    from recotem.core.jobs import db_now
    from recotem.retraining.selectors import schedule_next_runs

    assert schedule.timezone == "UTC"
    edited = db_now().replace(second=0, microsecond=0)
    RetrainingRun.objects.create(
        schedule=schedule,
        status=RunStatus.COMPLETED,
        trigger="schedule",
        fire_at=edited - timedelta(hours=8),
    )
    an_hour_ago = edited - timedelta(hours=1)
    schedules.schedule_update(
        schedule=schedule, cron_expression=f"{an_hour_ago.minute} {an_hour_ago.hour} * * *"
    )
    schedule.refresh_from_db()
    preview = schedule_next_runs(schedule, n=1)[0]
    assert preview == an_hour_ago + timedelta(days=1)
    assert due_fire(schedule.pk, edited + timedelta(minutes=1, seconds=5))[0] is None
    assert due_fire(schedule.pk, preview + timedelta(seconds=1))[0] == preview
    # The stock DatabaseScheduler decides from last_run_at: the edit counts as the last fire.
    assert schedule.periodic_task is not None
    assert schedule.periodic_task.last_run_at == schedule.fires_from


# --- one writer -------------------------------------------------------------------------------


def test_a_run_the_reaper_ended_can_never_write_or_deploy(schedule: RetrainingSchedule) -> None:
    run = _running(schedule)
    zombie = RetrainingRun.objects.get(pk=run.pk)  # the old attempt's view of its run
    RetrainingRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    assert reaper.runs_reap()["worker_lost"] == 1
    retry = RetrainingRun.objects.get(retry_of=run)
    # The retry started under a new lease; the zombie's writes are all refused.
    RetrainingRun.objects.filter(pk=retry.pk).update(not_before=None)
    with pytest.raises(runs.RunFenced):
        runs.run_save(zombie, stage="deploy")
    deployed: list[bool] = []
    assert not runs.run_finish(
        run=zombie, status=RunStatus.COMPLETED, on_finish=lambda: deployed.append(True) or {}
    )
    assert deployed == [] and runs.run_heartbeat(zombie) == "lost"
    zombie.refresh_from_db()
    assert zombie.status == RunStatus.FAILED


@pytest.mark.django_db(transaction=True)  # the run's heartbeat thread must see its rows
def test_a_rollback_during_the_gate_is_never_overwritten(
    project: Project, ml100k_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = training_data_create_from_frame_file(project=project, path=ml100k_csv, name="u.csv")
    rp3 = ModelConfiguration.objects.create(
        project=project, name="rp3", recommender_class_name="RP3betaRecommender"
    )
    old, new = (
        trained_model_train(
            trained_model_id=trained_model_create(configuration=rp3, data=data, enqueue=False).pk
        )
        for _ in range(2)
    )
    slot = slot_create(project=project, name="main", trained_model=old)
    slot = slot_set_model(slot=slot, trained_model=new, changed_by="user")
    sched = schedules.schedule_create(
        project=project, cron_expression="0 2 * * *", model_configuration=rp3, auto_deploy=True
    )

    def user_rolls_back(stage: str) -> None:
        if stage == "deploy":  # while the run finishes, the user rolled the slot back
            slot_rollback(slot=DeploymentSlot.objects.get(pk=slot.pk))

    monkeypatch.setattr(runner, "_failpoint", user_rolls_back)
    run, _ = runs.run_trigger(schedule=sched, trigger="manual", force=True)
    result = runner.run_execute(run_id=run.pk)
    assert result is not None and result.status == RunStatus.COMPLETED, result.error_message
    assert result.gate_decision == RetrainingRun.Gate.REJECTED
    assert "changed during the run" in result.gate_report["reason"]
    assert DeploymentSlot.objects.get(pk=slot.pk).trained_model_id == old.pk  # the rollback holds


# --- retries, cancel, errors ----------------------------------------------------------------


def test_a_failed_notification_never_loses_the_retry(
    schedule: RetrainingSchedule, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _running(schedule)

    def broken(**_: Any) -> None:
        raise OperationalError("the notification store is down")

    monkeypatch.setattr(runs, "notify_failure", broken)
    assert runs.run_fail(run=run, message="worker lost", retryable=True)
    retry = RetrainingRun.objects.get(retry_of=run)
    assert (retry.status, retry.attempt, retry.send_pending) == (RunStatus.PENDING, 2, True)


def test_errors_are_classified_retryable_or_permanent() -> None:
    from recotem.ml.tuning import TuningError

    assert runs.classify(OperationalError("connection reset"))[1] is True
    assert runs.classify(ConnectionResetError("peer"))[1] is True
    assert runs.classify(RuntimeError("surprise"))[1] is True
    assert runs.classify(ValueError("too few interactions to split"))[1] is False
    assert runs.classify(TuningError("every trial failed"))[1] is False
    assert runs.classify(runs.RunError("no slot", retryable=False)) == ("no slot", False)


def test_cancel_stops_pending_and_running_runs_and_refuses_ended_ones(
    schedule: RetrainingSchedule, alice_client: Any
) -> None:
    pending, _ = runs.run_trigger(schedule=schedule, trigger="manual")
    r = alice_client.post(f"/api/v1/retraining_run/{pending.pk}/cancel/")
    assert r.status_code == 202 and r.json()["status"] == "CANCELLED"
    assert runs.run_start(run_id=pending.pk) is None  # its message finds nothing to do
    running = _running(schedule)
    r = alice_client.post(f"/api/v1/retraining_run/{running.pk}/cancel/")
    assert r.status_code == 202 and r.json()["cancel_requested_at"] is not None
    assert runs.run_heartbeat(running) == "cancel"  # the worker learns it at its next beat
    RetrainingRun.objects.filter(pk=running.pk).update(status=RunStatus.COMPLETED)
    r = alice_client.post(f"/api/v1/retraining_run/{running.pk}/cancel/")
    assert r.status_code == 409 and "already ended" in r.json()["detail"]


def test_disabling_a_schedule_cancels_its_pending_retries(schedule: RetrainingSchedule) -> None:
    run = _running(schedule)
    runs.run_fail(run=run, message="boom", retryable=True)
    retry = RetrainingRun.objects.get(retry_of=run)
    schedules.schedule_update(schedule=schedule, is_enabled=False)
    retry.refresh_from_db()
    assert retry.status == RunStatus.CANCELLED and "disabled" in retry.skip_reason


def test_a_run_cancelled_while_its_worker_died_ends_cancelled_without_retry(
    schedule: RetrainingSchedule,
) -> None:
    run = _running(schedule)
    runs.run_cancel(run=run)
    RetrainingRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    assert reaper.runs_reap()["cancelled"] == 1
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and not RetrainingRun.objects.filter(retry_of=run)


def test_creating_a_run_never_recurses_without_bound(
    schedule: RetrainingSchedule, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other run keeps ending between our failed insert and our read: give up, readably.
    def always_conflict(**_: Any) -> None:
        raise IntegrityError("one_active_run_per_schedule")

    monkeypatch.setattr(RetrainingRun.objects, "create", always_conflict)
    with pytest.raises(runs.RunError, match="kept changing"):
        runs.run_trigger(schedule=schedule, trigger="manual")


# --- database time ----------------------------------------------------------------------------


def test_a_worker_with_a_skewed_clock_is_not_reaped_while_alive(
    schedule: RetrainingSchedule,
) -> None:
    run = _running(schedule)
    with time_machine.travel(timezone.now() - timedelta(hours=2)):  # this host's clock is off
        assert runs.run_heartbeat(run) == "ok"
    run.refresh_from_db()
    assert run.heartbeat_at is not None
    assert abs((run.heartbeat_at - datetime.now(UTC)).total_seconds()) < 30  # database time
    assert reaper.runs_reap()["worker_lost"] == 0


# --- sanity checks of the gate --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the run's heartbeat thread must see its rows
def test_it_refuses_to_deploy_when_the_data_shrank(
    project: Project, ml100k_csv: Path, tmp_path: Path
) -> None:
    import pandas as pd

    rp3 = ModelConfiguration.objects.create(
        project=project, name="rp3", recommender_class_name="RP3betaRecommender"
    )
    full = training_data_create_from_frame_file(project=project, path=ml100k_csv, name="all.csv")
    sched = schedules.schedule_create(
        project=project, cron_expression="0 2 * * *", model_configuration=rp3, auto_deploy=True
    )
    first = runner.run_execute(run_id=runs.run_trigger(schedule=sched, trigger="manual")[0].pk)
    assert first is not None and first.gate_decision == "deployed", first.gate_report
    part = tmp_path / "part.csv"
    pd.read_csv(ml100k_csv).head(full.row_count // 3).to_csv(part, index=False)
    training_data_create_from_frame_file(project=project, path=part, name="part.csv")
    shrunk = runner.run_execute(run_id=runs.run_trigger(schedule=sched, trigger="manual")[0].pk)
    assert shrunk is not None and shrunk.gate_decision == "rejected"
    assert (
        "shrank" in shrunk.gate_report["reason"]
        and "max_data_shrink" in shrunk.gate_report["reason"]
    )
    forced = runner.run_execute(
        run_id=runs.run_trigger(schedule=sched, trigger="manual", force=True)[0].pk
    )
    assert forced is not None and forced.gate_decision == "deployed", forced.gate_report


# --- bounded disk -----------------------------------------------------------------------------


def _artifact(project: Project, config: ModelConfiguration, data: TrainingData) -> TrainedModel:
    model = TrainedModel(
        project=project, configuration=config, data_loc=data, status="COMPLETED", filesize=4096
    )
    model.file.save(
        f"model-{timezone.now().timestamp()}.rctm", ContentFile(b"x" * 4096), save=False
    )
    model.save()
    return model


def test_a_year_of_daily_runs_keeps_disk_flat(
    project: Project, config: ModelConfiguration, settings: Any, tmp_path: Path
) -> None:
    settings.RECOTEM_KEEP_MODELS = 5
    settings.RECOTEM_ROLLBACK_DEPTH = 3
    settings.RECOTEM_KEEP_SNAPSHOTS = 4
    media = Path(settings.MEDIA_ROOT)
    source = DataSource.objects.create(project=project, kind="sql", url="sqlite:///x", query="q")
    slot = None
    sizes: list[tuple[int, int]] = []
    for day in range(365):
        data = make_data(project, fingerprint=f"sha256:{day}")
        TrainingData.objects.filter(pk=data.pk).update(data_source=source)
        model = _artifact(project, config, data)
        if slot is None:
            slot = slot_create(project=project, name="main", trained_model=model)
        else:
            slot = slot_set_model(slot=slot, trained_model=model, changed_by=f"day {day}")
        reaper.project_retain(project_id=project.pk)
        files = [p for p in media.rglob("*") if p.is_file()]
        sizes.append((len(files), sum(p.stat().st_size for p in files)))
    # Flat after the first week: the newest 5 models (the served one and 3 rollback targets are
    # among them) and 4 snapshots (their models pin the newer ones), whatever the day.
    assert len(set(sizes[30:])) == 1, sizes[25:40]
    count, total = sizes[-1]
    assert count <= 5 + 5 and total < 6 * 4096 + 5 * 100
    assert SlotHistory.objects.filter(slot=slot).count() == 365  # the record stays
    assert TrainedModel.objects.filter(project=project).count() == 5
    served = slot.trained_model_id
    assert slot_rollback(slot=slot).trained_model_id != served  # rollback still works
