"""How long events are kept: RECOTEM_EVENTS_KEEP_DAYS (0 or unset keeps them for ever).

Called by the retraining reaper (a periodic task) like every app's own retain function. Deletes
go project by project through the (project, timestamp) index and in bounded batches, so no single
statement scans the whole table or holds locks for long.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from recotem.core.jobs import db_now
from recotem.experiments.models import Event
from recotem.projects.models import Project

DELETE_BATCH = 10_000


def events_retain(*, keep_days: int | None = None, now: datetime | None = None) -> int:
    """Delete events whose timestamp is older than ``keep_days`` days; returns how many."""
    days = settings.RECOTEM_EVENTS_KEEP_DAYS if keep_days is None else keep_days
    if not days:
        return 0
    cutoff = (now or db_now()) - timedelta(days=days)
    deleted = 0
    # Projects, not DISTINCT over the events: a handful of rows instead of a scan of millions.
    for project_id in list(Project.objects.order_by().values_list("id", flat=True)):
        while True:
            ids = list(
                Event.objects.filter(project_id=project_id, timestamp__lt=cutoff)
                .order_by()
                .values_list("id", flat=True)[:DELETE_BATCH]
            )
            if not ids:
                break
            count, _ = Event.objects.filter(id__in=ids).delete()
            deleted += count
    return deleted
