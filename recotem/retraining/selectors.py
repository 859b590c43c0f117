"""Reads for retraining: previews of fire times, overdue schedules."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Max
from django.utils import timezone

from recotem.lib import cron
from recotem.retraining.models import RetrainingRun, RetrainingSchedule

OVERDUE_AFTER = timedelta(minutes=5)


def schedule_next_runs(
    schedule: RetrainingSchedule, n: int = 5, after: datetime | None = None
) -> list[datetime]:
    """The next ``n`` fire times in the schedule's timezone; empty when disabled or invalid."""
    if not schedule.is_enabled:
        return []
    try:
        return cron.next_runs(schedule.cron_expression, schedule.timezone, n=n, after=after)
    except (cron.CronError, cron.TimezoneError):
        return []


def schedule_description(schedule: RetrainingSchedule) -> str:
    try:
        return cron.describe_cron(schedule.cron_expression)
    except cron.CronError as exc:
        return str(exc)


def overdue_schedules(*, now: datetime | None = None) -> list[tuple[RetrainingSchedule, datetime]]:
    """Enabled schedules with a fire time more than 5 minutes past and no run since.

    For each schedule the reference point is its newest run's queue time (or its last edit when
    that is later, since an edit restarts the clock); the first fire time after that reference is
    the one beat owed. One query for the schedules plus one aggregate for the newest runs.
    """
    now = now or timezone.now()
    schedules = list(RetrainingSchedule.objects.filter(is_enabled=True))
    if not schedules:
        return []
    newest = dict(
        RetrainingSchedule.objects.filter(pk__in=[s.pk for s in schedules])
        .annotate(newest=Max("runs__queued_at"))
        .values_list("pk", "newest")
    )
    result: list[tuple[RetrainingSchedule, datetime]] = []
    for schedule in schedules:
        reference = max(d for d in (newest.get(schedule.pk), schedule.updated_at) if d is not None)
        fires = schedule_next_runs(schedule, n=1, after=reference)
        if fires and now - fires[0] > OVERDUE_AFTER:
            result.append((schedule, fires[0]))
    return result


def due_fire(schedule_id: int, now: datetime) -> tuple[datetime | None, float]:
    """(the instant to fire now or None, seconds until the schedule's next instant)."""
    schedule = RetrainingSchedule.objects.filter(pk=schedule_id, is_enabled=True).first()
    if schedule is None:
        return None, 60.0
    last = RetrainingRun.objects.filter(schedule_id=schedule_id).aggregate(last=Max("fire_at"))
    after = max((d for d in (last["last"], schedule.fires_from) if d is not None), default=None)
    try:
        fire = cron.latest_run(schedule.cron_expression, schedule.timezone, now=now, after=after)
        upcoming = cron.next_runs(schedule.cron_expression, schedule.timezone, n=1, after=now)
    except (cron.CronError, cron.TimezoneError):
        return None, 60.0  # reconcile disables such a schedule; never crash the caller
    wait = (upcoming[0] - now).total_seconds() if upcoming else 60.0
    return fire, max(wait, 0.5)
