"""Celery tasks of retraining: thin, take ids, call services."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(bind=True, name="recotem.retraining.tasks.run_retraining", acks_late=True)
def run_retraining(self: Any, schedule_id: int, run_id: int | None = None) -> dict[str, Any]:
    """Execute run ``run_id``; a beat fire passes only ``schedule_id`` and gets a new run here.

    A beat fire's run is sent again as its own message rather than executed here: beat cannot put
    the schedule's time limit on its message, and every run must carry one.
    """
    from recotem.retraining import runner, services

    if run_id is None:
        created = services.run_for_beat_fire(schedule_id=schedule_id)
        if created is None:
            return {"schedule_id": schedule_id, "run_id": None, "status": "not started"}
        services.enqueue_run(created)
        return {"schedule_id": schedule_id, "run_id": created.pk, "status": "queued"}
    run = runner.run_execute(run_id=run_id, task_id=self.request.id or "")
    return {"schedule_id": schedule_id, "run_id": run_id, "status": run.status if run else "duplicate"}


@shared_task(name="recotem.retraining.tasks.reap_runs")
def reap_runs() -> dict[str, int]:
    """Periodic: fail dead or over-time runs, models and tuning jobs; queue retries; flag overdue."""
    from recotem.retraining.services import runs_reap

    return runs_reap()


@shared_task(name="recotem.retraining.tasks.deliver_webhook")
def deliver_webhook(schedule_id: int, payload: dict[str, Any], run_id: int | None = None) -> bool | None:
    """POST one signed notification (default queue) and record the outcome on the run."""
    from recotem.retraining.services import webhook_notify

    delivery = webhook_notify(schedule_id=schedule_id, payload=payload, run_id=run_id)
    return None if delivery is None else delivery.delivered
