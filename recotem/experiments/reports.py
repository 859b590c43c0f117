"""Reads of stored events for the UI: counts per day and type (the Data page's Events panel) and
an experiment's always-valid result day by day (the Experiments page's plot)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Count, Min, Q
from django.db.models.functions import TruncDate

from recotem.core.jobs import db_now
from recotem.experiments.models import Event, Experiment

PANEL_DAYS = 30
ARMS = ("control", "variant")  # Event.arm of an experiment's two slots


@dataclass(frozen=True)
class DailyEvents:
    days: list[date]  # oldest first, every day of the window (days without events count 0)
    counts: dict[str, list[int]]  # event type -> one count per day
    total: int  # every stored event of the project, whatever its age


def events_per_day(*, project_id: int, days: int = PANEL_DAYS) -> DailyEvents:
    """Events of the last ``days`` days (UTC) per day and type: one GROUP BY over the
    (project, timestamp) index, plus one COUNT for the total."""
    today = db_now().date()
    first = today - timedelta(days=days - 1)
    rows = (
        Event.objects.filter(
            project_id=project_id,
            timestamp__gte=datetime.combine(first, time.min, tzinfo=UTC),
        )
        .annotate(day=TruncDate("timestamp"))
        .values_list("day", "event_type")
        .annotate(n=Count("id"))
        .order_by()
    )
    window = [first + timedelta(days=n) for n in range(days)]
    index = {day: n for n, day in enumerate(window)}
    counts: dict[str, list[int]] = {}
    for day, event_type, n in rows:
        if day in index:
            counts.setdefault(event_type, [0] * days)[index[day]] += n
    total = Event.objects.filter(project_id=project_id).count()
    return DailyEvents(days=window, counts=dict(sorted(counts.items())), total=total)


@dataclass(frozen=True)
class TimelinePoint:
    """The experiment's always-valid result as it stood at the end of one day (UTC)."""

    day: date
    control_users: int
    variant_users: int
    difference: float | None
    lift: float | None
    ci_low: float
    ci_high: float
    p_value: float


def _first_days(experiment_id: int, arm: str, types: Q) -> dict[str, date]:
    rows = (
        Event.objects.filter(types, experiment_id=experiment_id, arm=arm)
        .values("user_id")
        .annotate(first=Min("timestamp"))
        .order_by()
        .values_list("user_id", "first")
    )
    return {user: first.astimezone(UTC).date() for user, first in rows}


def experiment_timeline(experiment: Experiment) -> list[TimelinePoint]:
    """Cumulative counts per day, each day judged like the results page judges now.

    Counted per user as the results are: a user counts from the day of their first impression
    attributed to the arm, and converts on the later of that day and their first ``metric``
    event attributed to the arm. Two GROUP BY user queries per arm (the experiment index), the
    rest in memory. Every point is always valid on its own: the interval covers the true
    difference at every day simultaneously, so the curve may be read however often.
    """
    from recotem.lib import abtest  # numpy: loaded where a timeline is drawn, not at start

    arms: dict[str, tuple[dict[str, date], dict[str, date]]] = {}
    for arm in ARMS:
        shown = _first_days(experiment.pk, arm, Q(event_type="impression"))
        acted = _first_days(experiment.pk, arm, Q(event_type=experiment.metric))
        converted = {u: max(d, acted[u]) for u, d in shown.items() if u in acted}
        arms[arm] = (shown, converted)
    all_days = sorted({d for shown, _ in arms.values() for d in shown.values()})
    if not all_days:
        return []
    points: list[TimelinePoint] = []
    day = all_days[0]
    while day <= all_days[-1]:
        counts = [
            (sum(d <= day for d in shown.values()), sum(d <= day for d in conv.values()))
            for shown, conv in (arms[a] for a in ARMS)
        ]
        (cu, cc), (vu, vc) = counts
        result = abtest.results(
            cu, cc, vu, vc, alpha=experiment.alpha, min_effect=experiment.min_effect
        )
        points.append(
            TimelinePoint(
                day=day,
                control_users=cu,
                variant_users=vu,
                difference=result.difference,
                lift=result.lift,
                ci_low=result.ci_low,
                ci_high=result.ci_high,
                p_value=result.p_value,
            )
        )
        day += timedelta(days=1)
    return points
