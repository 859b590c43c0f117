"""Writes for retraining: schedules and their beat rows, runs, retries, the reaper, retention.

Beat rows: each enabled schedule owns one django-celery-beat ``CrontabSchedule`` (cron fields +
ZoneInfo timezone) and one ``PeriodicTask`` named ``recotem-retrain-{id}`` whose kwargs are
``{"schedule_id": id}``. They are written in the caller's transaction, so a schedule and its beat
row commit or roll back together. ``schedule_reconcile`` repairs drift in both directions.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError, Q, RestrictedError
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from recotem.core.exceptions import ApplicationError
from recotem.lib import cron, signing
from recotem.lib.netguard import UrlNotAllowed, check_url_allowed
from recotem.retraining.models import ACTIVE_STATUSES, RetrainingRun, RetrainingSchedule, RunStatus

logger = logging.getLogger(__name__)

TASK_NAME = "recotem.retraining.tasks.run_retraining"
REAPER_TASK_NAME = "recotem.retraining.tasks.reap_runs"
REAPER_PERIODIC_NAME = "recotem-retraining-reaper"
PERIODIC_PREFIX = "recotem-retrain-"
MAX_BACKOFF_SECONDS = 3600
# The hard time limit is the schedule's time_limit_seconds plus this grace: the soft limit (at
# time_limit_seconds) lets the runner record "time limit" before the pool kills the process.
TIME_LIMIT_GRACE_SECONDS = 30
OVERDUE_AFTER = timedelta(minutes=5)


def periodic_task_name(schedule_id: int) -> str:
    return f"{PERIODIC_PREFIX}{schedule_id}"


# --- settings read at call time so tests and deployments can tune them ----------------------
def _stale_after() -> timedelta:
    return timedelta(seconds=getattr(settings, "RECOTEM_RUN_STALE_SECONDS", 60))


# How long a parallel tuning job may go without a heartbeat while its trial tasks wait in the queue.
PARALLEL_TUNING_QUEUE_WAIT = timedelta(hours=1)


def _reaper_seconds() -> int:
    return int(getattr(settings, "RECOTEM_REAPER_SECONDS", 30))


def _pending_resend_after() -> timedelta:
    return timedelta(seconds=getattr(settings, "RECOTEM_PENDING_RESEND_SECONDS", 600))


class RunConflict(ApplicationError):
    """A run of this schedule is already PENDING or RUNNING (HTTP 409)."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"Run #{run_id} of this schedule is still active.", field="detail", status=409)
        self.run_id = run_id


class RunError(Exception):
    """A run failure with a message for people; ``retryable=False`` when retrying cannot help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


# --- schedules ------------------------------------------------------------------------------
def schedule_create(*, project: Any, **fields: Any) -> RetrainingSchedule:
    """Create a schedule and its beat rows in one transaction (the secret is generated here)."""
    with transaction.atomic():
        schedule = RetrainingSchedule(project=project, webhook_secret=secrets.token_hex(32), **fields)
        schedule.save()
        schedule_sync(schedule=schedule)
    return schedule


def schedule_update(*, schedule: RetrainingSchedule, **fields: Any) -> RetrainingSchedule:
    with transaction.atomic():
        for name, value in fields.items():
            setattr(schedule, name, value)
        # An edit restarts the overdue clock: the new cron is judged from now on.
        schedule.overdue_notified_for = None
        schedule.save()
        schedule_sync(schedule=schedule)
    return schedule


def schedule_delete(*, schedule: RetrainingSchedule) -> None:
    with transaction.atomic():
        _remove_beat_rows(schedule.pk)
        schedule.delete()


def schedule_sync(*, schedule: RetrainingSchedule) -> PeriodicTask | None:
    """Make beat match ``schedule``: upsert its crontab + periodic task, or remove them.

    Steps: disabled → delete the task (and its crontab if unused); enabled → get or create the
    crontab with the normalised fields and ZoneInfo timezone, upsert the task by name, point the
    schedule at it. ``PeriodicTask.save()`` bumps ``PeriodicTasks.last_update`` so a running beat
    picks the change up within its 5 s poll. Raises ``CronError``/``TimezoneError`` for values that
    bypassed the API's validation.
    """
    if not schedule.is_enabled:
        _remove_beat_rows(schedule.pk)
        if schedule.periodic_task_id is not None:
            RetrainingSchedule.objects.filter(pk=schedule.pk).update(periodic_task=None)
            schedule.periodic_task_id = None
        return None
    fields = cron.celery_crontab_fields(schedule.cron_expression)
    tz = ZoneInfo(cron.validate_timezone(schedule.timezone))
    crontab = CrontabSchedule.objects.filter(**fields, timezone=tz).order_by("id").first()
    if crontab is None:
        crontab = CrontabSchedule.objects.create(**fields, timezone=tz)
    name = periodic_task_name(schedule.pk)
    task = PeriodicTask.objects.filter(name=name).first() or PeriodicTask(name=name)
    old_crontab_id = task.crontab_id
    wanted = {
        "task": TASK_NAME,
        "kwargs": json.dumps({"schedule_id": schedule.pk}),
        "args": "[]",
        "queue": "retraining",
        "enabled": True,
        "crontab_id": crontab.pk,
        "interval_id": None,
        "solar_id": None,
        "clocked_id": None,
        "one_off": False,
        "description": f"Retraining of project #{schedule.project_id}",
    }
    if task.pk is None or any(getattr(task, k) != v for k, v in wanted.items()):
        for key, value in wanted.items():
            setattr(task, key, value)
        task.save()
    if old_crontab_id and old_crontab_id != crontab.pk:
        _delete_crontab_if_unused(old_crontab_id)
    if schedule.periodic_task_id != task.pk:
        RetrainingSchedule.objects.filter(pk=schedule.pk).update(periodic_task=task)
        schedule.periodic_task_id = task.pk
    return task


def _remove_beat_rows(schedule_id: int) -> None:
    for task in PeriodicTask.objects.filter(name=periodic_task_name(schedule_id)):
        crontab_id = task.crontab_id
        task.delete()  # delete() bumps PeriodicTasks so beat stops firing it
        if crontab_id:
            _delete_crontab_if_unused(crontab_id)


def _delete_crontab_if_unused(crontab_id: int) -> None:
    if not PeriodicTask.objects.filter(crontab_id=crontab_id).exists():
        CrontabSchedule.objects.filter(pk=crontab_id).delete()


def reaper_ensure() -> PeriodicTask:
    """The periodic reaper task (every RECOTEM_REAPER_SECONDS) on the default queue."""
    interval, _ = IntervalSchedule.objects.get_or_create(every=_reaper_seconds(), period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.filter(name=REAPER_PERIODIC_NAME).first()
    if task is None:
        task = PeriodicTask(name=REAPER_PERIODIC_NAME)
    if task.pk is None or task.interval_id != interval.pk or not task.enabled or task.task != REAPER_TASK_NAME:
        task.task = REAPER_TASK_NAME
        task.interval = interval
        task.crontab = None
        task.enabled = True
        task.queue = "celery"
        task.description = "Fails runs whose worker died or ran out of time, queues their retries."
        task.save()
    return task


def schedule_reconcile() -> dict[str, int]:
    """Repair drift between schedules and beat rows, both directions; returns counts.

    Steps: (1) every enabled schedule is re-synced (creates missing tasks, fixes changed cron,
    timezone, kwargs or disabled flags); (2) every disabled schedule loses its task; (3) every
    ``recotem-retrain-*`` task without an enabled schedule is deleted (orphans of a schedule
    deleted behind our back); (4) the reaper task exists; (5) ``PeriodicTasks.update_changed()``.
    Schedules with an expression beat cannot run are disabled and reported, never left firing.
    """
    report = {"synced": 0, "removed": 0, "orphans_deleted": 0, "invalid_disabled": 0}
    with transaction.atomic():
        enabled_ids: set[int] = set()
        for schedule in RetrainingSchedule.objects.select_related("periodic_task"):
            if schedule.is_enabled:
                try:
                    schedule_sync(schedule=schedule)
                except (cron.CronError, cron.TimezoneError) as exc:
                    logger.error("schedule %s disabled by reconcile: %s", schedule.pk, exc)
                    RetrainingSchedule.objects.filter(pk=schedule.pk).update(is_enabled=False)
                    _remove_beat_rows(schedule.pk)
                    report["invalid_disabled"] += 1
                    continue
                enabled_ids.add(schedule.pk)
                report["synced"] += 1
            else:
                if PeriodicTask.objects.filter(name=periodic_task_name(schedule.pk)).exists():
                    report["removed"] += 1
                schedule_sync(schedule=schedule)
        for task in PeriodicTask.objects.filter(name__startswith=PERIODIC_PREFIX):
            suffix = task.name[len(PERIODIC_PREFIX):]
            if not suffix.isdigit() or int(suffix) not in enabled_ids:
                crontab_id = task.crontab_id
                task.delete()
                if crontab_id:
                    _delete_crontab_if_unused(crontab_id)
                report["orphans_deleted"] += 1
        reaper_ensure()
        PeriodicTasks.update_changed()
    return report


# --- runs -------------------------------------------------------------------------------------
def _active_run_id(schedule_id: int) -> int | None:
    return (
        RetrainingRun.objects.filter(schedule_id=schedule_id, status__in=ACTIVE_STATUSES)
        .values_list("id", flat=True)
        .first()
    )


def _create_pending(schedule: RetrainingSchedule, **fields: Any) -> RetrainingRun:
    """Insert a PENDING run; the partial unique index refuses a second active run."""
    try:
        with transaction.atomic():
            run = RetrainingRun.objects.create(schedule=schedule, status=RunStatus.PENDING, **fields)
    except IntegrityError:
        active = _active_run_id(schedule.pk)
        if active is None:  # the other run finished between our insert and this read
            return _create_pending(schedule, **fields)
        raise RunConflict(active) from None
    RetrainingSchedule.objects.filter(pk=schedule.pk).update(
        last_run_at=run.queued_at, last_run_status=run.status
    )
    return run


def task_time_limits(schedule: RetrainingSchedule) -> dict[str, int]:
    """Celery limits of a run's task: soft at time_limit_seconds, hard a little later."""
    limit = int(schedule.time_limit_seconds)
    return {"soft_time_limit": limit, "time_limit": limit + TIME_LIMIT_GRACE_SECONDS}


def enqueue_run(run: RetrainingRun, *, countdown: float = 0) -> None:
    """Send the run's task after the current transaction commits (no message for a rolled-back row).

    The message carries the schedule's time limit, so the worker pool itself stops an over-time
    run even if the reaper is not running.
    """
    from recotem.retraining.tasks import run_retraining

    limits = task_time_limits(RetrainingSchedule.objects.only("time_limit_seconds").get(pk=run.schedule_id))

    def send() -> None:
        result = run_retraining.apply_async(
            kwargs={"schedule_id": run.schedule_id, "run_id": run.pk}, countdown=countdown or None, **limits
        )
        RetrainingRun.objects.filter(pk=run.pk).update(celery_task_id=result.id or "")

    transaction.on_commit(send)


def run_trigger(*, schedule: RetrainingSchedule, trigger: str, force: bool = False) -> RetrainingRun:
    """Queue a run now (also for a disabled schedule). Raises ``RunConflict`` if one is active."""
    with transaction.atomic():
        run = _create_pending(schedule, trigger=trigger, force=force)
        enqueue_run(run)
    return run


def run_for_beat_fire(*, schedule_id: int) -> RetrainingRun | None:
    """A beat fire: a PENDING run to execute now, or a SKIPPED run when one is already active."""
    schedule = RetrainingSchedule.objects.filter(pk=schedule_id).first()
    if schedule is None:
        logger.warning("beat fired for missing schedule %s; reconciling", schedule_id)
        _remove_beat_rows(schedule_id)
        return None
    if not schedule.is_enabled:
        return None
    try:
        return _create_pending(schedule, trigger=RetrainingRun.Trigger.SCHEDULE)
    except RunConflict as exc:
        now = timezone.now()
        run = RetrainingRun.objects.create(
            schedule=schedule,
            status=RunStatus.SKIPPED,
            trigger=RetrainingRun.Trigger.SCHEDULE,
            started_at=now,
            completed_at=now,
            skip_reason=f"Run #{exc.run_id} of this schedule was still active when the schedule fired.",
        )
        RetrainingSchedule.objects.filter(pk=schedule.pk).update(last_run_at=now, last_run_status=run.status)
        return None


def run_start(*, run_id: int, task_id: str = "") -> RetrainingRun | None:
    """PENDING → RUNNING, exactly once: a duplicate message finds rowcount 0 and backs off."""
    now = timezone.now()
    updated = RetrainingRun.objects.filter(pk=run_id, status=RunStatus.PENDING).update(
        status=RunStatus.RUNNING, started_at=now, heartbeat_at=now,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        **({"celery_task_id": task_id} if task_id else {}),
    )
    if updated != 1:
        return None
    run = RetrainingRun.objects.select_related("schedule", "schedule__project").get(pk=run_id)
    RetrainingSchedule.objects.filter(pk=run.schedule_id).update(last_run_status=RunStatus.RUNNING)
    return run


def run_finish(*, run: RetrainingRun, status: str, **fields: Any) -> bool:
    """RUNNING → a final status; False when the reaper already ended the run."""
    now = timezone.now()
    updated = RetrainingRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        status=status, completed_at=now, **fields
    )
    if updated != 1:
        return False
    for key, value in fields.items():
        setattr(run, key, value)
    run.status, run.completed_at = status, now
    RetrainingSchedule.objects.filter(pk=run.schedule_id).update(last_run_at=now, last_run_status=status)
    return True


def run_heartbeat(*, run_id: int) -> bool:
    return bool(
        RetrainingRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())
    )


def backoff_seconds(schedule: RetrainingSchedule, attempt: int) -> int:
    """Delay before attempt ``attempt + 1``: base, doubling per attempt, capped at 1 h."""
    return int(min(schedule.retry_backoff_seconds * 2 ** max(attempt - 1, 0), MAX_BACKOFF_SECONDS))


def run_schedule_retry(*, run: RetrainingRun) -> RetrainingRun | None:
    """After a FAILED run: a new PENDING run linked to the first, sent with exponential backoff.

    No retry when the error is not retryable or ``max_retries`` retries were already made.
    """
    schedule = RetrainingSchedule.objects.get(pk=run.schedule_id)
    if not run.retryable or run.attempt > schedule.max_retries:
        return None
    delay = backoff_seconds(schedule, run.attempt)
    try:
        with transaction.atomic():
            retry = _create_pending(
                schedule,
                trigger=RetrainingRun.Trigger.RETRY,
                force=run.force,
                attempt=run.attempt + 1,
                retry_of_id=run.retry_of_id or run.pk,
                not_before=timezone.now() + timedelta(seconds=delay),
            )
            enqueue_run(retry, countdown=delay)
    except RunConflict:
        return None  # someone already queued a run; it will do the work
    logger.info("run %s failed; retry %s (attempt %s) in %s s", run.pk, retry.pk, retry.attempt, delay)
    return retry


def run_fail(
    *, run: RetrainingRun, message: str, retryable: bool, before_retry: Callable[[], None] | None = None
) -> bool:
    """RUNNING → FAILED, then notify (webhook sent by its own task) and queue a retry.

    Returns False if already ended. ``before_retry`` runs once the run is failed and before its
    retry is queued (the reaper fails the run's model / tuning job there).
    """
    if not run_finish(run=run, status=RunStatus.FAILED, error_message=message, retryable=retryable):
        return False
    run.retryable = retryable
    if before_retry is not None:
        before_retry()
    notify_failure(run=run)
    run_schedule_retry(run=run)
    return True


# --- reaper ---------------------------------------------------------------------------------------
def _remote_control_enabled() -> bool:
    # The embedded (SQLAlchemy) broker has no broadcast channel: a revoke there would hang.
    return bool(getattr(settings, "CELERY_WORKER_ENABLE_REMOTE_CONTROL", True)) and not getattr(
        settings, "CELERY_BROKER_IS_EMBEDDED", False
    )


def _revoke(task_id: str) -> bool:
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
    from recotem.training.models import TrainedModel
    from recotem.tuning.models import JobStatus, ParameterTuningJob

    now = timezone.now()
    if run.trained_model_id:
        TrainedModel.objects.filter(pk=run.trained_model_id, status=JobStatus.RUNNING).update(
            status=JobStatus.FAILED, error=message, completed_at=now
        )
    if run.tuning_job_id:
        ParameterTuningJob.objects.filter(pk=run.tuning_job_id, status=JobStatus.RUNNING).update(
            status=JobStatus.FAILED, error=message, completed_at=now
        )


def _reap_end_run(run: RetrainingRun, message: str) -> bool:
    """Revoke the run's task, fail the run and its model/job, then (in run_fail) queue the retry."""
    _revoke(run.celery_task_id)
    if not run_fail(run=run, message=message, retryable=True, before_retry=lambda: fail_run_children(run, message)):
        return False
    return True


def _reap_stale_jobs(now: datetime) -> dict[str, int]:
    """RUNNING trained models and tuning jobs without a heartbeat for RECOTEM_RUN_STALE_SECONDS → FAILED.

    Their worker was SIGKILLed, ran out of memory or lost its host: nothing else would ever end them.
    The update re-checks the condition, so a heartbeat that lands meanwhile keeps the row alive.
    """
    from django.db.models.functions import Coalesce

    from recotem.training.models import TrainedModel
    from recotem.training.services import task_log
    from recotem.tuning.models import JobStatus, ParameterTuningJob

    cutoff = now - _stale_after()
    report = {"models_lost": 0, "tuning_jobs_lost": 0}
    for key, model_cls, link in (
        ("models_lost", TrainedModel, "trained_model"), ("tuning_jobs_lost", ParameterTuningJob, "tuning_job")
    ):
        stale = model_cls.objects.filter(status=JobStatus.RUNNING).annotate(
            last_seen=Coalesce("heartbeat_at", "started_at", "created_at")
        ).filter(last_seen__lt=cutoff)
        if model_cls is ParameterTuningJob:
            # A parallel job's trial tasks may wait in the tuning queue behind other work, with
            # nobody beating for the job meanwhile: give those jobs a longer, still finite, wait.
            stale = stale.filter(
                Q(n_tasks_parallel__lte=1) | Q(last_seen__lt=now - PARALLEL_TUNING_QUEUE_WAIT)
            )
        for pk, project_id, last_seen in stale.values_list("pk", "project_id", "last_seen"):
            message = f"worker lost (no heartbeat for {int((now - last_seen).total_seconds())} s)"
            updated = model_cls.objects.filter(pk=pk, status=JobStatus.RUNNING).annotate(
                last_seen=Coalesce("heartbeat_at", "started_at", "created_at")
            ).filter(last_seen__lt=last_seen + timedelta(microseconds=1)).update(
                status=JobStatus.FAILED, error=message, completed_at=now
            )
            if updated:
                report[key] += 1
                task_log(project_id=project_id, level="ERROR", contents=f"{model_cls.__name__} #{pk}: {message}",
                         **{link: model_cls(pk=pk)})
    return report


def runs_reap(*, now: datetime | None = None) -> dict[str, int]:
    """Fail runs, models and tuning jobs whose worker is gone or whose time is up; re-send lost
    PENDING messages; flag overdue schedules.

    Steps: (1) RUNNING runs with a heartbeat older than RECOTEM_RUN_STALE_SECONDS → FAILED "worker
    lost"; (2) RUNNING past the schedule's ``time_limit_seconds`` → FAILED "time limit"; each has its
    task revoked (where remote control exists), its RUNNING model / tuning job failed too, the usual
    notification and a retry (queued here, not by broker redelivery); (3) RUNNING trained models and
    tuning jobs with a stale heartbeat → FAILED "worker lost (no heartbeat for N s)"; (4) PENDING runs
    whose start time passed RECOTEM_PENDING_RESEND_SECONDS ago are sent again, at most once per that
    interval (``resent_at``) — duplicates are harmless because only one message can move a run to
    RUNNING; (5) overdue schedules are notified once per fire.
    """
    now = now or timezone.now()
    report = {"worker_lost": 0, "time_limit": 0, "resent": 0, "overdue": 0}
    running = RetrainingRun.objects.filter(status=RunStatus.RUNNING).select_related("schedule")
    for run in running:
        limit = timedelta(seconds=run.schedule.time_limit_seconds)
        if run.started_at and now - run.started_at > limit:
            msg = f"time limit: the run exceeded time_limit_seconds={run.schedule.time_limit_seconds}."
            if _reap_end_run(run, msg):
                report["time_limit"] += 1
        elif run.heartbeat_at is None or now - run.heartbeat_at > _stale_after():
            last = run.heartbeat_at.isoformat() if run.heartbeat_at else "never"
            msg = f"worker lost: no heartbeat since {last}; the worker process died or was killed."
            if _reap_end_run(run, msg):
                report["worker_lost"] += 1
    report.update(_reap_stale_jobs(now))
    resend_before = now - _pending_resend_after()
    not_resent_lately = Q(resent_at__isnull=True) | Q(resent_at__lt=resend_before)
    lost = RetrainingRun.objects.filter(status=RunStatus.PENDING).filter(
        Q(not_before__lt=resend_before) | Q(not_before__isnull=True, queued_at__lt=resend_before)
    ).filter(not_resent_lately)
    for run in lost:
        # The stamp is the claim: a second reaper (or the next tick) finds it and sends nothing.
        if RetrainingRun.objects.filter(pk=run.pk, status=RunStatus.PENDING).filter(not_resent_lately).update(
            resent_at=now
        ):
            enqueue_run(run)
            report["resent"] += 1
    from recotem.retraining.selectors import overdue_schedules

    for schedule, fire_at in overdue_schedules(now=now):
        if schedule.overdue_notified_for is not None and schedule.overdue_notified_for >= fire_at:
            continue
        RetrainingSchedule.objects.filter(pk=schedule.pk).update(overdue_notified_for=fire_at)
        report["overdue"] += 1
        notify_overdue(schedule=schedule, fire_at=fire_at)
    return report


# --- notifications ----------------------------------------------------------------------------
@dataclass
class Delivery:
    delivered: bool
    attempts: list[dict[str, Any]]


WEBHOOK_ATTEMPTS = 3


def webhook_deliver(*, url: str, secret: str, payload: dict[str, Any], attempts: int = WEBHOOK_ATTEMPTS) -> Delivery:
    """POST ``payload`` as JSON with a ``Recotem-Signature`` header, retrying 5xx/network errors.

    The URL is checked against RECOTEM_ALLOWED_SOURCE_HOSTS before every attempt (DNS may change),
    and redirects are not followed: a redirect could lead anywhere.
    """
    body = json.dumps(payload, default=str).encode()
    log: list[dict[str, Any]] = []
    opener = urllib.request.build_opener(_NoRedirect)
    for attempt in range(1, attempts + 1):
        entry: dict[str, Any] = {"attempt": attempt, "at": timezone.now().isoformat()}
        try:
            check_url_allowed(url, allowed_hosts=settings.RECOTEM_ALLOWED_SOURCE_HOSTS)
        except UrlNotAllowed as exc:
            entry["error"] = str(exc)
            log.append(entry)
            return Delivery(False, log)
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "Recotem-Webhook/1")
        request.add_header(signing.HEADER_NAME, signing.sign_payload(body, secret.encode(), int(time.time())))
        try:
            with opener.open(request, timeout=10) as response:
                entry["status"] = response.status
        except urllib.error.HTTPError as exc:
            entry["status"] = exc.code
        except (urllib.error.URLError, OSError) as exc:
            entry["error"] = str(getattr(exc, "reason", exc))
        log.append(entry)
        status = entry.get("status")
        if status is not None and 200 <= status < 300:
            return Delivery(True, log)
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            return Delivery(False, log)  # the receiver refuses it; repeating will not help
        if attempt < attempts:
            time.sleep(min(2 ** (attempt - 1), 10))
    return Delivery(False, log)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def notify_failure(*, run: RetrainingRun) -> None:
    """On FAILED with ``notify_on_failure``: a log record, then the signed webhook (recorded on the run)."""
    schedule = RetrainingSchedule.objects.select_related("project").get(pk=run.schedule_id)
    if not schedule.notify_on_failure:
        return
    logger.error(
        "retraining run %s of project %s (%s) failed: %s",
        run.pk, schedule.project_id, schedule.project.name, run.error_message,
    )
    record: dict[str, Any] = {"logged": True}
    payload: dict[str, Any] | None = None
    if schedule.webhook_url:
        payload = {
            "event": "retraining.run.failed",
            "project": {"id": schedule.project_id, "name": schedule.project.name},
            "schedule_id": schedule.pk,
            "run": {
                "id": run.pk, "status": run.status, "trigger": run.trigger, "attempt": run.attempt,
                "retry_of": run.retry_of_id, "error_message": run.error_message,
                "retryable": run.retryable,
                "will_retry": run.retryable and run.attempt <= schedule.max_retries,
            },
        }
        # "delivered" stays None until the delivery task records the outcome.
        record.update({"webhook_url": schedule.webhook_url, "delivered": None, "attempts": []})
    RetrainingRun.objects.filter(pk=run.pk).update(notification=record)
    run.notification = record
    if payload is not None:
        _enqueue_webhook(schedule_id=schedule.pk, payload=payload, run_id=run.pk)


def _enqueue_webhook(*, schedule_id: int, payload: dict[str, Any], run_id: int | None = None) -> None:
    """Deliver in a task of its own (default queue): 3 tries × 10 s must not block the reaper or a worker."""
    from recotem.retraining.tasks import deliver_webhook

    kwargs = {"schedule_id": schedule_id, "payload": json.loads(json.dumps(payload, default=str)), "run_id": run_id}
    transaction.on_commit(lambda: deliver_webhook.apply_async(kwargs=kwargs))


def webhook_notify(*, schedule_id: int, payload: dict[str, Any], run_id: int | None = None) -> Delivery | None:
    """POST ``payload`` to the schedule's webhook (URL and secret read now) and record it on the run."""
    schedule = RetrainingSchedule.objects.filter(pk=schedule_id).first()
    if schedule is None or not schedule.webhook_url:
        return None
    delivery = webhook_deliver(url=schedule.webhook_url, secret=schedule.webhook_secret, payload=payload)
    if run_id is not None:
        record = {
            "logged": True, "webhook_url": schedule.webhook_url,
            "delivered": delivery.delivered, "attempts": delivery.attempts,
        }
        RetrainingRun.objects.filter(pk=run_id).update(notification=record)
    return delivery


def notify_overdue(*, schedule: RetrainingSchedule, fire_at: datetime) -> None:
    logger.error(
        "retraining schedule %s of project %s is overdue: it should have fired at %s",
        schedule.pk, schedule.project_id, fire_at.isoformat(),
    )
    if schedule.notify_on_failure and schedule.webhook_url:
        payload = {
            "event": "retraining.schedule.overdue",
            "project": {"id": schedule.project_id},
            "schedule_id": schedule.pk,
            "missed_fire_at": fire_at.isoformat(),
        }
        _enqueue_webhook(schedule_id=schedule.pk, payload=payload)


# --- retention ----------------------------------------------------------------------------------
def models_retain(*, project_id: int, keep: int | None = None) -> list[int]:
    """Delete trained models beyond the newest ``keep`` finished ones, except protected ones.

    Protected: every model a slot serves, and every model in any slot's history (a rollback
    target). Running or pending models are never touched. Returns the deleted ids; files go too.
    """
    from recotem.deployment.models import DeploymentSlot, SlotHistory
    from recotem.training.models import TrainedModel
    from recotem.training.services import trained_model_delete

    keep = settings.RECOTEM_KEEP_MODELS if keep is None else keep
    protected: set[int] = set(
        DeploymentSlot.objects.filter(project_id=project_id).values_list("trained_model_id", flat=True)
    )
    for current, previous in SlotHistory.objects.filter(slot__project_id=project_id).values_list(
        "trained_model_id", "previous_model_id"
    ):
        protected.add(current)
        if previous:
            protected.add(previous)
    finished = TrainedModel.objects.filter(project_id=project_id, status__in=["COMPLETED", "FAILED"]).order_by("-id")
    deleted: list[int] = []
    for model in finished[keep:]:
        if model.pk in protected:
            continue
        model_id = model.pk
        try:
            with transaction.atomic():
                trained_model_delete(trained_model=model)
        except (ProtectedError, RestrictedError):
            continue
        except OSError:
            logger.warning("could not delete the artifact of model %s", model_id)
        deleted.append(model_id)
    return deleted
