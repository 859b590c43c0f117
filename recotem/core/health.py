"""Heartbeats of the background processes, kept in the database so any process can read them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

STALE_AFTER = timedelta(seconds=90)


def beat(kind: str) -> None:
    from recotem.core.models import ProcessHeartbeat

    ProcessHeartbeat.objects.update_or_create(kind=kind, defaults={"seen_at": timezone.now()})


def process_status() -> dict[str, Any]:
    from recotem.core.models import ProcessHeartbeat

    now = timezone.now()
    seen = {hb.kind: hb.seen_at for hb in ProcessHeartbeat.objects.all()}
    result: dict[str, Any] = {}
    for kind in ("worker", "beat"):
        at = seen.get(kind)
        result[kind] = {"alive": bool(at and now - at < STALE_AFTER), "last_seen_at": at}
    try:
        from recotem.retraining.selectors import overdue_schedules
    except ImportError:
        return result
    # Only a count: /ping/ is public, so it must not reveal whose schedules they are.
    result["retraining"] = {"overdue_schedules": len(overdue_schedules(now=now))}
    return result
