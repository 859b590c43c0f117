"""Heartbeats of the background processes, kept in the database so any process can read them,
and what the apps add to `/api/v1/ping/` (they register a contributor in `AppConfig.ready`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from recotem.core.models import ProcessHeartbeat

STALE_AFTER = timedelta(seconds=90)

# name -> fn(now) returning a JSON-safe dict. /ping/ is public: contributors report counts, never
# whose objects they are.
_contributors: dict[str, Callable[[datetime], dict[str, Any]]] = {}


def register(name: str, contributor: Callable[[datetime], dict[str, Any]]) -> None:
    _contributors[name] = contributor


def beat(kind: str) -> None:
    ProcessHeartbeat.objects.update_or_create(kind=kind, defaults={"seen_at": timezone.now()})


def process_status() -> dict[str, Any]:
    now = timezone.now()
    seen = {hb.kind: hb.seen_at for hb in ProcessHeartbeat.objects.all()}
    result: dict[str, Any] = {}
    for kind in ("worker", "beat"):
        at = seen.get(kind)
        result[kind] = {"alive": bool(at and now - at < STALE_AFTER), "last_seen_at": at}
    for name, contributor in _contributors.items():
        result[name] = contributor(now)
    return result
