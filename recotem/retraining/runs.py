"""Retraining runs: the state machine and its guarantees.

``PENDING → RUNNING → COMPLETED | FAILED | SKIPPED | CANCELLED``, every transition one conditional
UPDATE, with these promises:

* **One fire, one run.** A scheduled run records the cron instant it is for (``fire_at``);
  (schedule, fire_at) is unique in the database, so a second fire of the same instant (beat
  restarted after a crash, a second beat by mistake) creates nothing and is logged. At most one
  run per schedule is active (a partial unique index).
* **The run row is the outbox.** A run is created with ``send_pending``; its message is handed to
  the broker after commit, and when the broker is away the row simply stays pending until any
  process's ``outbox_flush`` (beat every few seconds, the reaper, a starting worker) sends it.
  A retry waits in the outbox until its ``not_before``: no message sits in a broker for an hour.
* **One writer.** The worker that starts a run gets a fresh ``lease``; every write it makes checks
  it (``run_save``), so once the reaper or a cancel ended the run, the old attempt (a zombie on a
  host that lost contact) can never write, deploy or finish again.
* **Retries that mean it.** Errors are classified (``classify``); a retry row is created in the
  same transaction that fails the run, before any notification, so a failed notification never
  loses it.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q
from django.db.models.functions import Now

from recotem.core.exceptions import ApplicationError
from recotem.core.jobs import BrokerUnavailable, Outbox, db_now, register_outbox, transition
from recotem.retraining.models import (
    ACTIVE_STATUSES,
    RetrainingRun,
    RetrainingSchedule,
    RunStatus,
)
from recotem.retraining.names import RUN_TASK
from recotem.retraining.notify import notify_failure

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 3600
# The hard time limit is the schedule's time_limit_seconds plus this grace: the soft limit (at
# time_limit_seconds) lets the runner record "time limit" before the pool kills the process.
TIME_LIMIT_GRACE_SECONDS = 30
_CREATE_ATTEMPTS = 3


class RunConflict(ApplicationError):
    """A run of this schedule is already PENDING or RUNNING (HTTP 409)."""

    def __init__(self, run_id: int) -> None:
        super().__init__(
            f"Run #{run_id} of this schedule is still active.", field="detail", status=409
        )
        self.run_id = run_id


class RunEnded(ApplicationError):
    """The run already ended; it cannot be cancelled (HTTP 409)."""

    def __init__(self, run: RetrainingRun) -> None:
        super().__init__(f"Run #{run.pk} already ended ({run.status}).", field="detail", status=409)


class DuplicateFire(Exception):
    """A run for this (schedule, fire instant) exists already."""


class RunError(Exception):
    """A run failure with a message for people; ``retryable=False`` when retrying cannot help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class RunFenced(Exception):
    """This attempt lost the run (the reaper ended it, or it was cancelled): stop, write nothing."""


class RunCancelled(Exception):
    """Somebody asked to cancel the run: stop at this step."""


def classify(exc: BaseException) -> tuple[str, bool]:
    """(message for people, retryable) of an error that ended a run.

    Retryable: whatever can change by itself — a lost worker, the time limit, the broker, the
    database, the network, an unexpected error (it may be transient; retries are bounded).
    Permanent: what only a person can fix — invalid settings or data (validation errors, data
    too small to split, every tuning trial failing), a missing configuration, no slot to deploy.
    """
    from recotem.ml.tuning import TuningError  # the ML stack loads only in workers

    if isinstance(exc, RunError):
        return str(exc), exc.retryable
    retryable = getattr(exc, "retryable", None)  # SourceError and safe-HTTP errors say it
    if isinstance(retryable, bool):
        return str(exc), retryable
    if isinstance(exc, SoftTimeLimitExceeded):
        return "time limit: the run exceeded its time_limit_seconds.", True
    if isinstance(exc, BrokerUnavailable | DatabaseError | OSError):
        return f"{type(exc).__name__}: {exc}", True
    if isinstance(exc, ApplicationError | TuningError | ValueError):
        return f"{type(exc).__name__}: {exc}", False
    return f"{type(exc).__name__}: {exc}", True


# --- the outbox -------------------------------------------------------------------------------


def task_time_limits(schedule: RetrainingSchedule) -> dict[str, int]:
    """Celery limits of a run's task: soft at time_limit_seconds, hard a little later."""
    limit = int(schedule.time_limit_seconds)
    return {"soft_time_limit": limit, "time_limit": limit + TIME_LIMIT_GRACE_SECONDS}


def _message(run: RetrainingRun) -> tuple[dict[str, Any], dict[str, Any]]:
    # The message carries the schedule's time limit, so the worker pool itself stops an
    # over-time run even if the reaper is not running.
    schedule = RetrainingSchedule.objects.only("time_limit_seconds").get(pk=run.schedule_id)
    return {"schedule_id": run.schedule_id, "run_id": run.pk}, task_time_limits(schedule)


def _remember_task_id(run: RetrainingRun, task_id: str) -> None:
    RetrainingRun.objects.filter(pk=run.pk).update(celery_task_id=task_id)


RUN_OUTBOX = register_outbox(
    Outbox(
        RetrainingRun,
        RUN_TASK,
        _message,
        ready=Q(not_before__isnull=True) | Q(not_before__lte=Now()),
        on_sent=_remember_task_id,
        created_field="queued_at",
    )
)


# --- creating runs ----------------------------------------------------------------------------


def _active_run_id(schedule_id: int) -> int | None:
    return (
        RetrainingRun.objects.filter(schedule_id=schedule_id, status__in=ACTIVE_STATUSES)
        .values_list("id", flat=True)
        .first()
    )


def _create(schedule: RetrainingSchedule, **fields: Any) -> RetrainingRun:
    """Insert a run row; the database refuses a second active run and a second run of one fire
    instant. Bounded: a conflict that vanished between insert and read is retried a few times."""
    for _ in range(_CREATE_ATTEMPTS):
        try:
            with transaction.atomic():
                run = RetrainingRun.objects.create(schedule=schedule, **fields)
        except IntegrityError:
            fire_at = fields.get("fire_at")
            if (
                fire_at is not None
                and RetrainingRun.objects.filter(schedule=schedule, fire_at=fire_at).exists()
            ):
                raise DuplicateFire(
                    f"schedule {schedule.pk} already has a run for {fire_at}"
                ) from None
            active = _active_run_id(schedule.pk)
            if active is not None:
                raise RunConflict(active) from None
            continue  # the other run ended between our insert and the read: try again
        RetrainingSchedule.objects.filter(pk=schedule.pk).update(
            last_run_at=run.queued_at, last_run_status=run.status
        )
        return run
    raise RunError("Could not record the run: the schedule's runs kept changing.")


def _create_pending(schedule: RetrainingSchedule, **fields: Any) -> RetrainingRun:
    return _create(schedule, status=RunStatus.PENDING, send_pending=True, **fields)


def run_trigger(
    *, schedule: RetrainingSchedule, trigger: str, force: bool = False
) -> tuple[RetrainingRun, bool]:
    """Record a run now (also for a disabled schedule) and try to hand it to the broker.

    Returns (run, queued): ``queued`` is False when the broker is away — the run is recorded and
    will be sent when it answers. Raises ``RunConflict`` if a run is active.
    """
    with transaction.atomic():
        run = _create_pending(schedule, trigger=trigger, force=force)
    return run, RUN_OUTBOX.send(run.pk)


def run_for_beat_fire(*, schedule_id: int, fire_at: datetime) -> RetrainingRun | None:
    """A beat fire of the cron instant ``fire_at``: a PENDING run to execute, or a SKIPPED run
    when one is already active. None when the schedule is gone or disabled, or when this instant
    was already recorded (a repeated fire: logged, never a second run)."""
    schedule = RetrainingSchedule.objects.filter(pk=schedule_id).first()
    if schedule is None or not schedule.is_enabled:
        return None
    try:
        try:
            return _create_pending(
                schedule, trigger=RetrainingRun.Trigger.SCHEDULE, fire_at=fire_at
            )
        except RunConflict as exc:
            now = db_now()
            _create(
                schedule,
                status=RunStatus.SKIPPED,
                trigger=RetrainingRun.Trigger.SCHEDULE,
                fire_at=fire_at,
                started_at=now,
                completed_at=now,
                skip_reason=(
                    f"Run #{exc.run_id} of this schedule was still active when the schedule fired."
                ),
            )
            return None
    except DuplicateFire:
        logger.warning(
            "schedule %s fired again for %s; that instant already has a run, nothing created",
            schedule_id,
            fire_at.isoformat(),
        )
        return None


# --- a run's life -----------------------------------------------------------------------------


def run_start(*, run_id: int, task_id: str = "") -> RetrainingRun | None:
    """PENDING → RUNNING with a fresh lease, exactly once: a duplicate message finds the row
    taken and backs off (None). (Disabling a schedule cancels its pending retries, so a retry
    queued before that never gets here.)"""
    run = RetrainingRun.objects.select_related("schedule").filter(pk=run_id).first()
    if run is None or run.status != RunStatus.PENDING:
        return None
    lease = uuid.uuid4().hex
    if not transition(
        RetrainingRun,
        run_id,
        expected=RunStatus.PENDING,
        status=RunStatus.RUNNING,
        started_at=Now(),
        heartbeat_at=Now(),
        lease=lease,
        send_pending=False,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        **({"celery_task_id": task_id} if task_id else {}),
    ):
        return None
    run = RetrainingRun.objects.select_related("schedule", "schedule__project").get(pk=run_id)
    RetrainingSchedule.objects.filter(pk=run.schedule_id).update(last_run_status=RunStatus.RUNNING)
    return run


def _mine(run: RetrainingRun) -> Q:
    """The rows this attempt may write: still RUNNING under its own lease."""
    return Q(pk=run.pk, status=RunStatus.RUNNING, lease=run.lease)


def run_save(run: RetrainingRun, **fields: Any) -> None:
    """Record progress on a RUNNING run; raises RunFenced if this attempt no longer owns it."""
    if RetrainingRun.objects.filter(_mine(run)).update(**fields) != 1:
        raise RunFenced(f"run #{run.pk} was ended by someone else")
    for key, value in fields.items():
        setattr(run, key, value)


def run_heartbeat(run: RetrainingRun) -> str:
    """Stamp the heartbeat (database time): "ok", "cancel" (somebody asked to cancel) or "lost"."""
    if RetrainingRun.objects.filter(_mine(run)).update(heartbeat_at=Now()) != 1:
        return "lost"
    cancel = RetrainingRun.objects.filter(pk=run.pk).values_list("cancel_requested_at", flat=True)
    return "cancel" if cancel.first() is not None else "ok"


def run_finish(
    *,
    run: RetrainingRun,
    status: str,
    fenced: bool = True,
    on_finish: Callable[[], dict[str, Any]] | None = None,
    **fields: Any,
) -> bool:
    """RUNNING → a final status in one transaction; False when the run was already ended.

    The run row is locked first; ``fenced`` (the worker's own finish) also requires this
    attempt's lease — the reaper and cancel pass ``fenced=False``. ``on_finish`` runs inside the
    transaction after the checks (the deploy, so a run that was ended never deploys) and returns
    more fields to record.
    """
    with transaction.atomic():
        rows = RetrainingRun.objects.select_for_update().filter(pk=run.pk, status=RunStatus.RUNNING)
        if fenced:
            rows = rows.filter(lease=run.lease)
        if not rows.exists():
            return False
        if on_finish is not None:
            fields.update(on_finish())
        now = db_now()
        rows.update(status=status, completed_at=now, stage="", send_pending=False, **fields)
        RetrainingSchedule.objects.filter(pk=run.schedule_id).update(
            last_run_at=now, last_run_status=status
        )
    for key, value in fields.items():
        setattr(run, key, value)
    run.status, run.completed_at = status, now
    return True


def backoff_seconds(schedule: RetrainingSchedule, attempt: int) -> int:
    """Delay before attempt ``attempt + 1``: base, doubling per attempt, capped at 1 h."""
    return int(min(schedule.retry_backoff_seconds * 2 ** max(attempt - 1, 0), MAX_BACKOFF_SECONDS))


def _retry_of(run: RetrainingRun, schedule: RetrainingSchedule) -> RetrainingRun | None:
    """The retry of a failed run (called inside the failing transaction), or None."""
    if not run.retryable or run.attempt > schedule.max_retries:
        return None
    first = run.retry_of if run.retry_of_id else run
    if (
        not schedule.is_enabled
        and first is not None
        and first.trigger == RetrainingRun.Trigger.SCHEDULE
    ):
        return None  # the schedule was switched off: its fires are not retried either
    delay = backoff_seconds(schedule, run.attempt)
    try:
        retry = _create_pending(
            schedule,
            trigger=RetrainingRun.Trigger.RETRY,
            force=run.force,
            attempt=run.attempt + 1,
            retry_of_id=run.retry_of_id or run.pk,
            not_before=db_now() + timedelta(seconds=delay),
        )
    except RunConflict:
        return None  # someone already queued a run; it will do the work
    logger.info(
        "run %s failed; retry %s (attempt %s) in %s s", run.pk, retry.pk, retry.attempt, delay
    )
    return retry


def run_fail(
    *,
    run: RetrainingRun,
    message: str,
    retryable: bool,
    fenced: bool = True,
    before_retry: Callable[[], None] | None = None,
) -> bool:
    """RUNNING → FAILED and, in the same transaction, its retry (when the error can change);
    then the notification, which may fail without losing anything. False if already ended.

    ``before_retry`` runs inside the transaction once the run is failed (the reaper fails the
    run's model / tuning job there).
    """
    schedule = RetrainingSchedule.objects.get(pk=run.schedule_id)
    run.retryable = retryable
    with transaction.atomic():

        def then() -> dict[str, Any]:
            if before_retry is not None:
                before_retry()
            return {}

        if not run_finish(
            run=run,
            status=RunStatus.FAILED,
            fenced=fenced,
            on_finish=then,
            error_message=message,
            retryable=retryable,
        ):
            return False
        _retry_of(run, schedule)  # sent by the outbox once its not_before has come
    try:
        notify_failure(run=run)
    except Exception:  # a notification must never lose the retry or the failure record
        logger.exception("could not notify about failed run %s", run.pk)
    return True


def run_cancel(*, run: RetrainingRun) -> RetrainingRun:
    """Cancel a run: a PENDING one at once, a RUNNING one at its worker's next step (within
    seconds). Raises RunEnded for a run that already ended. No deploy, no retry."""
    if transition(
        RetrainingRun,
        run.pk,
        expected=RunStatus.PENDING,
        status=RunStatus.CANCELLED,
        completed_at=Now(),
        send_pending=False,
        cancel_requested_at=Now(),
        skip_reason="Cancelled before it started.",
    ):
        RetrainingSchedule.objects.filter(pk=run.schedule_id).update(
            last_run_status=RunStatus.CANCELLED
        )
    elif not RetrainingRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        cancel_requested_at=Now()
    ):
        run.refresh_from_db()
        raise RunEnded(run)
    run.refresh_from_db()
    return run


def cancel_pending(*, schedule_id: int, reason: str) -> int:
    """Cancel the schedule's runs that have not started (a disabled or deleted schedule)."""
    return RetrainingRun.objects.filter(schedule_id=schedule_id, status=RunStatus.PENDING).update(
        status=RunStatus.CANCELLED,
        completed_at=Now(),
        send_pending=False,
        cancel_requested_at=Now(),
        skip_reason=reason,
    )
