"""Beat scheduler: django-celery-beat's DatabaseScheduler that records a run at the fire instant.

With the stock scheduler a fire is a message, and the run row appears only when a worker picks
it up — after every retraining already occupying the pool. Here beat itself creates the run
(PENDING, or SKIPPED while one is active) and sends the run's own message with its time limit,
so `queued_at` is the fire time however busy the workers are. The stock DatabaseScheduler still
works (the task then creates the run in the worker); this one is what `recotem beat` and
`recotem up` use.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from django.db import close_old_connections
from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger(__name__)
RUN_TASK = "recotem.retraining.tasks.run_retraining"


class RetrainingScheduler(DatabaseScheduler):
    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        schedule_id = (entry.kwargs or {}).get("schedule_id") if entry.task == RUN_TASK else None
        if schedule_id is None or (entry.kwargs or {}).get("run_id"):
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        from recotem.retraining import services

        entry = self.reserve(entry) if advance else entry
        close_old_connections()
        try:
            run = services.run_for_beat_fire(schedule_id=int(schedule_id))
        except Exception:
            # The database hiccuped: hand the fire to a worker, which creates the run itself.
            logger.exception("could not record the fire of schedule %s in beat; sending it", schedule_id)
            return super().apply_async(entry, producer=producer, advance=False, **kwargs)
        if run is not None:
            services.enqueue_run(run)
        return SimpleNamespace(id=f"run-{run.pk}" if run is not None else f"schedule-{schedule_id}-skipped")
