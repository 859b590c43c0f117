"""Beat scheduler: django-celery-beat's DatabaseScheduler, with retraining fires decided from the
database instead of beat's memory.

For a retraining schedule an entry is due when a cron instant lies after both the newest instant
already recorded for it (``RetrainingRun.fire_at``) and the schedule's last edit
(``fires_from``), and not after now. Consequences:

* a beat killed right after a fire and restarted finds the instant recorded and fires nothing
  (and should it fire anyway, the database refuses a second run for the instant);
* an edit of the cron or the timezone never fires early: instants before the edit do not count,
  so the first fire is the preview's ``next_runs[0]`` (the preview and this decision use the same
  cron code, ``recotem.lib.cron``);
* after a pause beat fires once, for the most recent instant it missed.

Beat itself records the run at its fire instant (PENDING, or SKIPPED while one is active) and
hands it to the broker through the run outbox; every tick it also flushes the outboxes, so work
recorded while the broker was away is sent within seconds of its return. The stock
DatabaseScheduler still works (the worker then records the run when it picks the fire up).
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any

from django.db import close_old_connections
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from recotem.core.jobs import db_now, outbox_flush
from recotem.retraining import runs
from recotem.retraining.names import RUN_TASK
from recotem.retraining.selectors import due_fire

logger = logging.getLogger(__name__)
FLUSH_EVERY = 2.0  # seconds between outbox flushes (and the longest sleep of the beat loop)


class RetrainingEntry(ModelEntry):  # type: ignore[misc]  # django-celery-beat is untyped
    def _schedule_id(self) -> int | None:
        if self.task != RUN_TASK or (self.kwargs or {}).get("run_id"):
            return None
        value = (self.kwargs or {}).get("schedule_id")
        return int(value) if value is not None else None

    def is_due(self) -> tuple[bool, float]:
        schedule_id = self._schedule_id()
        if schedule_id is None:
            due, wait = super().is_due()
            return bool(due), float(wait)
        try:
            fire, wait = due_fire(schedule_id, db_now())
        except Exception:  # the database hiccuped: look again soon, never crash beat
            logger.exception("could not decide whether schedule %s is due", schedule_id)
            close_old_connections()
            return False, 5.0
        self.fire_at = fire
        return fire is not None, wait


class RetrainingScheduler(DatabaseScheduler):  # type: ignore[misc]  # untyped, as above
    Entry = RetrainingEntry

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_flush = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        wait = super().tick(*args, **kwargs)
        if time.monotonic() - self._last_flush >= FLUSH_EVERY:
            self._last_flush = time.monotonic()
            try:
                report = outbox_flush()
                if report["sent"] or report["resent"]:
                    logger.info("outbox: %s", report)
            except Exception:
                logger.exception("outbox flush failed; trying again at the next tick")
            finally:
                close_old_connections()
        return min(float(wait), FLUSH_EVERY)

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> object:
        schedule_id = entry._schedule_id() if isinstance(entry, RetrainingEntry) else None
        if schedule_id is None:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        fire_at = getattr(entry, "fire_at", None)  # decided by is_due; reserve() makes a new entry
        entry = self.reserve(entry) if advance else entry
        close_old_connections()
        try:
            fire_at = fire_at or due_fire(schedule_id, db_now())[0]
            run = None
            if fire_at is not None:
                run = runs.run_for_beat_fire(schedule_id=schedule_id, fire_at=fire_at)
        except Exception:
            # The database hiccuped: hand the fire to a worker, which records the run itself.
            logger.exception(
                "could not record the fire of schedule %s in beat; sending it", schedule_id
            )
            return super().apply_async(entry, producer=producer, advance=False, **kwargs)
        if run is not None:
            runs.RUN_OUTBOX.send(run.pk)  # the broker away: the next flush sends it
        return SimpleNamespace(
            id=f"run-{run.pk}" if run is not None else f"schedule-{schedule_id}-not-started"
        )
