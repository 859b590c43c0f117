"""What every background job shares: its status vocabulary, state transitions, heartbeats,
the task log the user reads, and how work is handed to the broker.

Trained models, tuning jobs, retraining runs and upload parsing are all rows that a worker moves
from state to state. The rules are the same for each of them, so they live here once:

* a transition is one ``UPDATE ... WHERE status IN (...)`` and counts only if it changed the row
  (rowcount 1): two workers, or a worker and the reaper, can never both win;
* a long RUNNING row is kept alive by a :class:`Heartbeat` thread stamping the *database's* time,
  so the reaper (which also uses database time) tells a slow job from a dead worker whatever the
  hosts' clocks say;
* work is sent to Celery by task *name* (:func:`enqueue`), so a service never imports the task
  module that imports it back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, connections, models, transaction
from django.db.models import Q
from django.db.models.functions import Coalesce, Now

from recotem.core.models import TaskLog

logger = logging.getLogger(__name__)


class JobStatus(models.TextChoices):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


ACTIVE_JOB_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING)


def transition(
    model: type[models.Model],
    pk: Any,
    *,
    expected: str | Iterable[str],
    **fields: Any,
) -> bool:
    """Write ``fields`` to row ``pk`` only while its status is one of ``expected``.

    The single home of "finish this row if it is still RUNNING" (and of every other claim): one
    conditional UPDATE, True when this caller changed the row. A caller that gets False lost the
    race (a duplicate message, the reaper, a cancel) and must not act as if it had won.
    """
    statuses = [expected] if isinstance(expected, str) else list(expected)
    manager = model._default_manager  # noqa: SLF001 - the public way to reach any model's rows
    return manager.filter(pk=pk, status__in=statuses).update(**fields) == 1


def db_now() -> datetime:
    """The database server's current time: the one clock every host agrees on."""
    sql = {
        "sqlite": "SELECT STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')",
        "postgresql": "SELECT STATEMENT_TIMESTAMP()",
    }.get(connection.vendor, "SELECT CURRENT_TIMESTAMP")
    with connection.cursor() as cursor:
        cursor.execute(sql)
        value: datetime | str = cursor.fetchone()[0]
    if isinstance(value, str):  # SQLite answers text, in UTC
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def reap_stale(
    model: type[models.Model],
    *,
    now: datetime,
    stale_after: timedelta,
    only: Q | None = None,
) -> list[tuple[Any, int, str]]:
    """Fail RUNNING rows of ``model`` whose heartbeat is older than ``stale_after`` at ``now``.

    Their worker was SIGKILLed, ran out of memory or lost its host: nothing else would ever end
    them. The row's last sign of life is its heartbeat, else its start, else its creation. Each
    update re-checks that condition, so a heartbeat landing meanwhile keeps the row alive.
    Returns ``(pk, project_id, message)`` for each row this call failed.
    """
    manager = model._default_manager  # noqa: SLF001
    last_seen = Coalesce("heartbeat_at", "started_at", "created_at")
    stale = manager.filter(status=JobStatus.RUNNING).annotate(last_seen=last_seen)
    stale = stale.filter(last_seen__lt=now - stale_after)
    if only is not None:
        stale = stale.filter(only)
    failed: list[tuple[Any, int, str]] = []
    for pk, project_id, seen in stale.values_list("pk", "project_id", "last_seen"):
        message = f"worker lost (no heartbeat for {int((now - seen).total_seconds())} s)"
        updated = (
            manager.filter(pk=pk, status=JobStatus.RUNNING)
            .annotate(last_seen=last_seen)
            .filter(last_seen__lte=seen)
            .update(status=JobStatus.FAILED, error=message, completed_at=now)
        )
        if updated:
            failed.append((pk, project_id, message))
    return failed


# --- heartbeats ---------------------------------------------------------------------------------


def heartbeat_interval() -> float:
    return float(getattr(settings, "RECOTEM_RUN_HEARTBEAT_SECONDS", 10))


def touch_heartbeat(model: type[models.Model], pk: Any) -> bool:
    """Stamp a RUNNING row's ``heartbeat_at`` with database time; False once it is not RUNNING."""
    return transition(model, pk, expected=JobStatus.RUNNING, heartbeat_at=Now())


class StopWhenEnded:
    """A cheap "should this loop stop?" for long work: True once row ``pk`` is no longer RUNNING
    (cancelled, reaped). Asks the database at most every ``every`` seconds."""

    def __init__(self, model: type[models.Model], pk: Any, *, every: float = 1.0) -> None:
        self.model, self.pk, self.every = model, pk, every
        self._checked = 0.0
        self._ended = False

    def __call__(self) -> bool:
        if not self._ended and time.monotonic() - self._checked >= self.every:
            self._checked = time.monotonic()
            manager = self.model._default_manager  # noqa: SLF001
            self._ended = not manager.filter(pk=self.pk, status=JobStatus.RUNNING).exists()
        return self._ended


class Heartbeat:
    """Call ``touch()`` every ``interval`` seconds until the block ends or ``touch`` returns False.

    ``touch`` returns False when the row is no longer RUNNING (finished, failed by the reaper,
    cancelled): there is nothing left to keep alive. Errors are logged and the loop goes on, since a
    missed beat is harmless while a dead heartbeat thread would get a healthy job reaped.
    """

    def __init__(
        self, touch: Callable[[], bool], *, name: str, interval: float | None = None
    ) -> None:
        self.touch = touch
        self.stop = threading.Event()
        self.interval = heartbeat_interval() if interval is None else interval
        self.thread = threading.Thread(target=self._loop, name=f"{name}-heartbeat", daemon=True)

    @classmethod
    def of_row(cls, model: type[models.Model], pk: Any, *, name: str) -> Heartbeat:
        return cls(lambda: touch_heartbeat(model, pk), name=name)

    def _loop(self) -> None:
        try:
            while not self.stop.wait(self.interval):
                try:
                    if not self.touch():
                        return
                except Exception:
                    logger.exception("heartbeat %s failed", self.thread.name)
                    # A broken connection (the database restarted, the connection was
                    # terminated) is replaced at the next beat instead of failing every beat.
                    connections.close_all()
        finally:
            # This thread's own connections (thread-local): never leave one open per finished job.
            connections.close_all()

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


# --- the task log -----------------------------------------------------------------------------


def current_task_id() -> str:
    """The Celery task id when called inside a worker, else "sync" (tests, shell)."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    task_id = getattr(request, "id", None) if current_task else None
    return str(task_id) if task_id else "sync"


def task_log(
    *,
    project_id: int,
    contents: str,
    level: str = "INFO",
    tuning_job_id: int | None = None,
    trained_model_id: int | None = None,
) -> None:
    """Append one TaskLog row (what the user sees under "logs") and mirror it to the logger."""
    logger.log(logging.getLevelName(level), contents)
    TaskLog.objects.create(
        project_id=project_id,
        task=current_task_id(),
        tuning_job_id=tuning_job_id,
        trained_model_id=trained_model_id,
        level=level,
        contents=contents,
    )


def task_logs_delete(**subject: int) -> None:
    """Delete the log rows of one subject (``project_id=``, ``trained_model_id=``, ``tuning_job_id=``)."""
    TaskLog.objects.filter(**subject).delete()


# --- handing work to the broker -----------------------------------------------------------------

# A send gives up quickly when the broker is away: the row stays in its outbox and is sent later.
_SEND_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 0.5,
}


class BrokerUnavailable(Exception):
    """The broker could not be reached; the work stays recorded and is sent when it answers."""


def enqueue(
    name: str, *, kwargs: Mapping[str, Any], countdown: float | None = None, **options: Any
) -> str:
    """Send task ``name`` now and return its id; routing (queue) comes from CELERY_TASK_ROUTES.

    Raises BrokerUnavailable when the broker cannot be reached. In eager mode (tests that want a
    task to run in-process) the registered task runs here instead.
    """
    from kombu.exceptions import KombuError

    from recotem.celery import app

    if app.conf.task_always_eager:
        app.loader.import_default_modules()
        return str(app.tasks[name].apply(kwargs=dict(kwargs), **options).id)
    try:
        result = app.send_task(
            name,
            kwargs=dict(kwargs),
            countdown=countdown or None,
            retry=True,
            retry_policy=_SEND_RETRY_POLICY,
            **options,
        )
    except (KombuError, OSError) as exc:
        raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc
    return str(result.id or "")


@dataclass(frozen=True)
class Outbox:
    """A table whose rows are their own outbox: ``send_pending`` is True until the row's
    message was handed to the broker, so a broker outage loses nothing (the row is sent when
    the broker answers again) and a lost message is sent again (``resend_after``).

    ``message(row)`` gives the task's kwargs and send options; ``ready`` limits which pending
    rows may go now (a retry waits for its time). Registered by each app in ``ready()``.
    """

    model: type[models.Model]
    task: str
    message: Callable[[Any], tuple[dict[str, Any], dict[str, Any]]]
    ready: Q = field(default_factory=Q)
    on_sent: Callable[[Any, str], None] | None = None
    created_field: str = "created_at"

    def send(self, pk: Any, *, now: datetime | None = None) -> bool:
        """Claim the row's pending send and send it; False (and still pending) if the broker is
        away, or when another process claimed it first."""
        manager = self.model._default_manager  # noqa: SLF001
        if manager.filter(pk=pk, send_pending=True).update(send_pending=False) != 1:
            return False
        row = manager.get(pk=pk)
        kwargs, options = self.message(row)
        try:
            task_id = enqueue(self.task, kwargs=kwargs, **options)
        except BrokerUnavailable as exc:
            manager.filter(pk=pk).update(send_pending=True)
            _broker_outage_noticed(str(exc))
            return False
        manager.filter(pk=pk).update(sent_at=now or Now())
        if self.on_sent is not None:
            self.on_sent(row, task_id)
        return True

    def send_on_commit(self, pk: Any) -> None:
        """Send once the caller's transaction commits (a worker never looks for a row that is
        not there yet); when the broker is away the row simply stays pending."""
        transaction.on_commit(lambda: self.send(pk))


_outboxes: list[Outbox] = []


def register_outbox(outbox: Outbox) -> Outbox:
    _outboxes.append(outbox)
    return outbox


def resend_after() -> timedelta:
    return timedelta(seconds=getattr(settings, "RECOTEM_PENDING_RESEND_SECONDS", 120))


def outbox_flush(*, now: datetime | None = None) -> dict[str, int]:
    """Send every pending row of every outbox, and send again PENDING rows whose message may
    have been lost (sent more than ``resend_after()`` ago and still not started: a broker that
    restarted without persistence forgets its queue). Duplicates are harmless: only one message
    can move a row from PENDING to RUNNING. Cheap when there is nothing to do (one indexed query
    per outbox); beat calls it every few seconds, the reaper and starting workers too.
    Returns {"sent": n, "resent": n, "waiting": n (still pending: broker away)}.
    """
    report = {"sent": 0, "resent": 0, "waiting": 0}
    now = now or db_now()
    for outbox in list(_outboxes):
        manager = outbox.model._default_manager  # noqa: SLF001
        pending = manager.filter(send_pending=True).filter(outbox.ready)
        for pk in list(pending.values_list("pk", flat=True)[:500]):
            if outbox.send(pk, now=now):
                report["sent"] += 1
            elif manager.filter(pk=pk, send_pending=True).exists():
                report["waiting"] += 1
                return report  # the broker is away: the next flush tries again
        # Sent long ago (or lost between claim and send: never stamped) and still not started.
        lost = (
            manager.filter(status=JobStatus.PENDING, send_pending=False)
            .filter(outbox.ready)
            .annotate(last_sent=Coalesce("sent_at", outbox.created_field))
            .filter(last_sent__lt=now - resend_after())
        )
        for pk in list(lost.values_list("pk", flat=True)[:500]):
            # Re-marking it pending is the claim: a concurrent flush then finds nothing lost.
            stamp = lost.filter(pk=pk).update(send_pending=True)
            if stamp and outbox.send(pk, now=now):
                report["resent"] += 1
    return report


def _broker_outage_noticed(detail: str) -> None:
    logger.warning("work kept in its outbox until the broker answers again: %s", detail)
