"""Retraining schedules and their beat rows.

Each enabled schedule owns one django-celery-beat ``CrontabSchedule`` (cron fields + ZoneInfo
timezone) and one ``PeriodicTask`` named ``recotem-retrain-{id}`` whose kwargs are
``{"schedule_id": id}``. They are written in the caller's transaction, so a schedule and its beat
row commit or roll back together. ``schedule_reconcile`` repairs drift in both directions.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from recotem.core.jobs import db_now
from recotem.core.ownership import check_same_project
from recotem.lib import cron
from recotem.projects.models import Project
from recotem.retraining.models import RetrainingSchedule
from recotem.retraining.names import CANARY_TASK, REAP_TASK, RUN_TASK
from recotem.retraining.runs import cancel_pending

logger = logging.getLogger(__name__)

REAPER_PERIODIC_NAME = "recotem-retraining-reaper"
CANARY_PERIODIC_NAME = "recotem-retraining-canaries"
PERIODIC_PREFIX = "recotem-retrain-"
# Fields whose change moves the fire times: beat then counts instants only from the edit on.
FIRE_FIELDS = ("cron_expression", "timezone", "is_enabled")
# Schedule fields that reference other objects of the project.
REFERENCES = (
    "training_data",
    "model_configuration",
    "split_config",
    "evaluation_config",
    "deploy_slot",
)


def periodic_task_name(schedule_id: int) -> str:
    return f"{PERIODIC_PREFIX}{schedule_id}"


def _reaper_seconds() -> int:
    return int(getattr(settings, "RECOTEM_REAPER_SECONDS", 30))


def _check_references(project_id: int, fields: dict[str, Any]) -> None:
    check_same_project(project_id, **{name: fields.get(name) for name in REFERENCES})


def schedule_create(*, project: Project, **fields: Any) -> RetrainingSchedule:
    """Create a schedule and its beat rows in one transaction (the secret is generated here)."""
    _check_references(project.pk, fields)
    with transaction.atomic():
        schedule = RetrainingSchedule(
            project=project, webhook_secret=secrets.token_hex(32), fires_from=db_now(), **fields
        )
        schedule.save()
        schedule_sync(schedule=schedule)
    return schedule


def schedule_rotate_webhook_secret(*, schedule: RetrainingSchedule) -> str:
    """Replace the webhook signing secret; returns the new one (shown to the caller once)."""
    secret = secrets.token_hex(32)
    RetrainingSchedule.objects.filter(pk=schedule.pk).update(webhook_secret=secret)
    schedule.webhook_secret = secret
    return secret


def schedule_update(*, schedule: RetrainingSchedule, **fields: Any) -> RetrainingSchedule:
    """Change a schedule and its beat rows together.

    An edit of the cron, the timezone or the enabled flag never makes beat fire early: instants
    up to the edit no longer count (``fires_from``), so the first fire is the preview's
    ``next_runs[0]``. Disabling cancels the runs that have not started (pending retries).
    """
    _check_references(schedule.project_id, fields)
    with transaction.atomic():
        moved = any(
            name in fields and fields[name] != getattr(schedule, name) for name in FIRE_FIELDS
        )
        for name, value in fields.items():
            setattr(schedule, name, value)
        # An edit restarts the overdue clock: the new cron is judged from now on.
        schedule.overdue_notified_for = None
        if moved:
            schedule.fires_from = db_now()
        schedule.save()
        schedule_sync(schedule=schedule)
        if not schedule.is_enabled:
            cancel_pending(schedule_id=schedule.pk, reason="The schedule was disabled.")
    return schedule


def schedule_delete(*, schedule: RetrainingSchedule) -> None:
    with transaction.atomic():
        beat_rows_remove(schedule.pk)
        schedule.delete()  # its runs go with it: a queued message then finds nothing to do


def schedule_sync(*, schedule: RetrainingSchedule) -> PeriodicTask | None:
    """Make beat match ``schedule``: upsert its crontab + periodic task, or remove them.

    Steps: disabled → delete the task (and its crontab if unused); enabled → get or create the
    crontab with the normalised fields and ZoneInfo timezone, upsert the task by name, point the
    schedule at it. ``PeriodicTask.save()`` bumps ``PeriodicTasks.last_update`` so a running beat
    picks the change up within its 5 s poll. Raises ``CronError``/``TimezoneError`` for values that
    bypassed the API's validation.
    """
    if not schedule.is_enabled:
        beat_rows_remove(schedule.pk)
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
        "task": RUN_TASK,
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
    # For the stock DatabaseScheduler (which decides from last_run_at): an edit counts as the
    # last fire, so a changed cron is never due at once. Our scheduler reads fires_from itself.
    stale_last_run = schedule.fires_from is not None and (
        task.last_run_at is None or task.last_run_at < schedule.fires_from
    )
    if stale_last_run:
        task.last_run_at = schedule.fires_from
    if stale_last_run or task.pk is None or any(getattr(task, k) != v for k, v in wanted.items()):
        for key, value in wanted.items():
            setattr(task, key, value)
        task.save()
    if old_crontab_id and old_crontab_id != crontab.pk:
        _delete_crontab_if_unused(old_crontab_id)
    if schedule.periodic_task_id != task.pk:
        RetrainingSchedule.objects.filter(pk=schedule.pk).update(periodic_task=task)
        schedule.periodic_task_id = task.pk
    return task


def beat_rows_remove(schedule_id: int) -> None:
    for task in PeriodicTask.objects.filter(name=periodic_task_name(schedule_id)):
        crontab_id = task.crontab_id
        task.delete()  # delete() bumps PeriodicTasks so beat stops firing it
        if crontab_id:
            _delete_crontab_if_unused(crontab_id)


def _delete_crontab_if_unused(crontab_id: int) -> None:
    if not PeriodicTask.objects.filter(crontab_id=crontab_id).exists():
        CrontabSchedule.objects.filter(pk=crontab_id).delete()


def _interval_task_ensure(*, name: str, task_name: str, description: str) -> PeriodicTask:
    """A periodic task every RECOTEM_REAPER_SECONDS on the default queue (created or repaired)."""
    interval, _ = IntervalSchedule.objects.get_or_create(
        every=_reaper_seconds(), period=IntervalSchedule.SECONDS
    )
    task = PeriodicTask.objects.filter(name=name).first()
    if task is None:
        task = PeriodicTask(name=name)
    if (
        task.pk is None
        or task.interval_id != interval.pk
        or not task.enabled
        or task.task != task_name
    ):
        task.task = task_name
        task.interval = interval
        task.crontab = None
        task.enabled = True
        task.queue = "celery"
        task.description = description
        task.save()
    return task


def reaper_ensure() -> PeriodicTask:
    """The periodic reaper task (every RECOTEM_REAPER_SECONDS) on the default queue."""
    return _interval_task_ensure(
        name=REAPER_PERIODIC_NAME,
        task_name=REAP_TASK,
        description="Fails runs whose worker died or ran out of time, queues their retries.",
    )


def canary_task_ensure() -> PeriodicTask:
    """The periodic task that decides canaries whose window ended (retraining.canary)."""
    return _interval_task_ensure(
        name=CANARY_PERIODIC_NAME,
        task_name=CANARY_TASK,
        description="Promotes or rolls back canary deploys whose window has ended.",
    )


def schedule_reconcile() -> dict[str, int]:
    """Repair drift between schedules and beat rows, both directions; returns counts.

    Steps: (1) every enabled schedule is re-synced (creates missing tasks, fixes changed cron,
    timezone, kwargs or disabled flags); (2) every disabled schedule loses its task; (3) every
    ``recotem-retrain-*`` task without an enabled schedule is deleted (orphans of a schedule
    deleted behind our back); (4) the reaper and canary tasks exist; (5) ``PeriodicTasks.update_changed()``.
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
                    beat_rows_remove(schedule.pk)
                    report["invalid_disabled"] += 1
                    continue
                enabled_ids.add(schedule.pk)
                report["synced"] += 1
            else:
                if PeriodicTask.objects.filter(name=periodic_task_name(schedule.pk)).exists():
                    report["removed"] += 1
                schedule_sync(schedule=schedule)
        for task in PeriodicTask.objects.filter(name__startswith=PERIODIC_PREFIX):
            suffix = task.name[len(PERIODIC_PREFIX) :]
            if not suffix.isdigit() or int(suffix) not in enabled_ids:
                crontab_id = task.crontab_id
                task.delete()
                if crontab_id:
                    _delete_crontab_if_unused(crontab_id)
                report["orphans_deleted"] += 1
        reaper_ensure()
        canary_task_ensure()
        PeriodicTasks.update_changed()
    return report
