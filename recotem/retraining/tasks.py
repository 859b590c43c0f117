"""Celery tasks of retraining: thin, take ids, call the run, reaper and notify modules."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from recotem.core.jobs import db_now
from recotem.retraining import canary, notify, reaper, runner, runs
from recotem.retraining.models import RetrainingSchedule
from recotem.retraining.names import CANARY_TASK, REAP_TASK, RUN_TASK, WEBHOOK_TASK
from recotem.retraining.schedules import beat_rows_remove
from recotem.retraining.selectors import due_fire


@shared_task(bind=True, name=RUN_TASK, acks_late=True)
def run_retraining(self: Any, schedule_id: int, run_id: int | None = None) -> dict[str, Any]:
    """Execute run ``run_id``; a fire of the stock beat scheduler passes only ``schedule_id``
    and gets a run here, for the latest cron instant not recorded yet.

    That run is sent again as its own message rather than executed here: beat cannot put the
    schedule's time limit on its message, and every run must carry one.
    """
    if run_id is None:
        fire_at, _ = due_fire(schedule_id, db_now())
        created = None
        if fire_at is not None:
            created = runs.run_for_beat_fire(schedule_id=schedule_id, fire_at=fire_at)
        elif not RetrainingSchedule.objects.filter(pk=schedule_id).exists():
            beat_rows_remove(schedule_id)  # fired for a schedule deleted behind beat's back
        if created is None:
            return {"schedule_id": schedule_id, "run_id": None, "status": "not started"}
        runs.RUN_OUTBOX.send(created.pk)
        return {"schedule_id": schedule_id, "run_id": created.pk, "status": "queued"}
    run = runner.run_execute(run_id=run_id, task_id=self.request.id or "")
    return {
        "schedule_id": schedule_id,
        "run_id": run_id,
        "status": run.status if run else "duplicate",
    }


@shared_task(name=REAP_TASK)
def reap_runs() -> dict[str, int]:
    """Periodic: fail dead or over-time runs, models and tuning jobs; queue retries; flag overdue."""
    return reaper.runs_reap()


@shared_task(name=CANARY_TASK)
def decide_canaries() -> dict[str, int]:
    """Periodic: promote or roll back the canaries whose window has ended."""
    return canary.canaries_decide()


@shared_task(name=WEBHOOK_TASK)
def deliver_webhook(
    schedule_id: int, payload: dict[str, Any], run_id: int | None = None
) -> bool | None:
    """POST one signed notification (default queue) and record the outcome on the run."""
    delivery = notify.webhook_notify(schedule_id=schedule_id, payload=payload, run_id=run_id)
    return None if delivery is None else delivery.delivered
