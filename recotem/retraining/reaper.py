"""The reaper (a periodic task, every RECOTEM_REAPER_SECONDS): ends work whose worker is gone.

It owns no rows of other apps: trained models and tuning jobs are failed by their own services
(`trained_models_reap`, `tuning_jobs_reap`, `trained_model_fail`, `tuning_job_fail`), which the
reaper calls. All times are the database's, so a host with a skewed clock never gets a live run
reaped.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings

from recotem.core.jobs import db_now, outbox_flush
from recotem.deployment.selectors import protected_model_ids
from recotem.experiments.retention import events_retain
from recotem.projects.services import snapshots_retain
from recotem.retraining import runs
from recotem.retraining.models import ACTIVE_STATUSES, RetrainingRun, RetrainingSchedule, RunStatus
from recotem.retraining.notify import notify_overdue, webhooks_resend
from recotem.retraining.selectors import overdue_schedules
from recotem.training.services import models_retain, trained_model_fail, trained_models_reap
from recotem.tuning.services import active_tuning_data_ids, tuning_job_fail, tuning_jobs_reap

logger = logging.getLogger(__name__)


def _stale_after() -> timedelta:
    return timedelta(seconds=getattr(settings, "RECOTEM_RUN_STALE_SECONDS", 60))


def _remote_control_enabled() -> bool:
    # The embedded (SQLAlchemy) broker has no broadcast channel: a revoke there would hang.
    return bool(getattr(settings, "CELERY_WORKER_ENABLE_REMOTE_CONTROL", True)) and not getattr(
        settings, "CELERY_BROKER_IS_EMBEDDED", False
    )


def revoke(task_id: str) -> bool:
    """Kill the worker process still executing ``task_id`` (where remote control exists)."""
    if not task_id or not _remote_control_enabled():
        return False
    try:
        from recotem.celery import app

        app.control.revoke(task_id, terminate=True, signal="SIGKILL")
    except Exception:  # the broker may be down: the run is failed anyway
        logger.warning("could not revoke task %s", task_id, exc_info=True)
        return False
    return True


def fail_run_children(run: RetrainingRun, message: str) -> None:
    """Fail the RUNNING trained model / tuning job a dead or over-time run was working on."""
    if run.trained_model_id:
        trained_model_fail(trained_model_id=run.trained_model_id, message=message)
    if run.tuning_job_id:
        tuning_job_fail(job_id=run.tuning_job_id, message=message)


def _end_run(run: RetrainingRun, message: str) -> bool:
    """Revoke the run's task, fail the run and its model/job, then (in run_fail) queue the retry."""
    revoke(run.celery_task_id)
    return runs.run_fail(
        run=run,
        message=message,
        retryable=True,
        fenced=False,
        before_retry=lambda: fail_run_children(run, message),
    )


def runs_reap(*, now: datetime | None = None) -> dict[str, int]:
    """End work whose worker is gone or whose time is up; send what waits; flag overdue schedules.

    Steps, all in database time: (1) RUNNING runs past the schedule's ``time_limit_seconds`` →
    FAILED "time limit", and RUNNING runs with a heartbeat older than RECOTEM_RUN_STALE_SECONDS →
    FAILED "worker lost" (CANCELLED instead when a cancel was asked for); each has its task revoked
    where remote control exists, its model / tuning job failed by their own apps, and a retry
    created with the failure; (2) trained models and tuning jobs with a stale heartbeat → FAILED by
    their apps; (3) the outboxes are flushed: pending messages sent, PENDING work whose message may
    have been lost sent again; webhooks that could not be queued are queued; (4) events older than
    RECOTEM_EVENTS_KEEP_DAYS are deleted (experiments' own retain function); (5) overdue schedules
    are notified once per missed fire.
    """
    now = now or db_now()
    report = {"worker_lost": 0, "time_limit": 0, "cancelled": 0, "resent": 0, "overdue": 0}
    running = RetrainingRun.objects.filter(status=RunStatus.RUNNING).select_related("schedule")
    for run in running:
        limit = timedelta(seconds=run.schedule.time_limit_seconds)
        if run.started_at and now - run.started_at > limit:
            msg = f"time limit: the run exceeded time_limit_seconds={run.schedule.time_limit_seconds}."
            if _end_run(run, msg):
                report["time_limit"] += 1
        elif run.heartbeat_at is None or now - run.heartbeat_at > _stale_after():
            last = run.heartbeat_at.isoformat() if run.heartbeat_at else "never"
            if run.cancel_requested_at is not None:
                if _cancel_dead_run(run):
                    report["cancelled"] += 1
                continue
            msg = f"worker lost: no heartbeat since {last}; the worker process died or was killed."
            if _end_run(run, msg):
                report["worker_lost"] += 1
    report["models_lost"] = trained_models_reap(now=now, stale_after=_stale_after())
    report["tuning_jobs_lost"] = tuning_jobs_reap(now=now, stale_after=_stale_after())
    flushed = outbox_flush(now=now)
    report["resent"] = flushed["sent"] + flushed["resent"]
    report["webhooks_resent"] = webhooks_resend()
    try:
        report["events_deleted"] = events_retain(now=now)
    except Exception:  # housekeeping: never keep the reaper from its real work
        logger.exception("event retention failed; trying again at the next reap")
    for schedule, fire_at in overdue_schedules(now=now):
        if schedule.overdue_notified_for is not None and schedule.overdue_notified_for >= fire_at:
            continue
        RetrainingSchedule.objects.filter(pk=schedule.pk).update(overdue_notified_for=fire_at)
        report["overdue"] += 1
        notify_overdue(schedule=schedule, fire_at=fire_at)
    return report


def _cancel_dead_run(run: RetrainingRun) -> bool:
    """A cancelled run whose worker died before it could stop: CANCELLED, no retry."""
    message = "cancelled (its worker stopped answering before it could stop by itself)"
    revoke(run.celery_task_id)

    def stop_children() -> dict[str, object]:
        fail_run_children(run, message)
        return {}

    return runs.run_finish(
        run=run,
        status=RunStatus.CANCELLED,
        fenced=False,
        on_finish=stop_children,
        skip_reason=message,
    )


def project_retain(*, project_id: int, keep: int | None = None) -> dict[str, list[int]]:
    """Housekeeping after a run: bounded disk, whatever the schedule's frequency.

    Models: the newest ``keep`` (RECOTEM_KEEP_MODELS) finished models stay, plus what each slot
    serves and the RECOTEM_ROLLBACK_DEPTH models it served before. Data-source snapshots: the
    newest RECOTEM_KEEP_SNAPSHOTS stay, plus any a remaining model, an active run, a running tuning
    job or the schedule still uses. Each app deletes its own rows (and files); returns the ids.
    """
    models = models_retain(
        project_id=project_id,
        keep=settings.RECOTEM_KEEP_MODELS if keep is None else keep,
        protected=protected_model_ids(project_id, rollback_depth=settings.RECOTEM_ROLLBACK_DEPTH),
    )
    in_use = set(
        RetrainingRun.objects.filter(
            schedule__project_id=project_id, status__in=ACTIVE_STATUSES
        ).values_list("training_data_id", flat=True)
    )
    in_use |= set(
        RetrainingSchedule.objects.filter(project_id=project_id).values_list(
            "training_data_id", flat=True
        )
    )
    in_use |= active_tuning_data_ids(project_id=project_id)
    snapshots = snapshots_retain(
        project_id=project_id, keep=settings.RECOTEM_KEEP_SNAPSHOTS, protected=in_use - {None}
    )
    return {"models": models, "snapshots": snapshots}
