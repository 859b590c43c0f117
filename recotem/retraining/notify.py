"""Notifications of retraining: failed runs and overdue schedules, logged and sent as signed
webhooks (`recotem.lib.signing`) by a task of their own."""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction

from recotem.core import jobs
from recotem.lib import safehttp, signing
from recotem.retraining.models import RetrainingRun, RetrainingSchedule
from recotem.retraining.names import WEBHOOK_TASK

logger = logging.getLogger(__name__)


@dataclass
class Delivery:
    delivered: bool
    attempts: list[dict[str, Any]]


WEBHOOK_ATTEMPTS = 3


def webhook_deliver(
    *, url: str, secret: str, payload: dict[str, Any], attempts: int = WEBHOOK_ATTEMPTS
) -> Delivery:
    """POST ``payload`` as JSON with a fresh ``Recotem-Signature`` per attempt, retrying
    5xx/408/429/network errors with capped backoff (``recotem.lib.safehttp``).

    Each attempt checks the URL against RECOTEM_ALLOWED_SOURCE_HOSTS (DNS may change) and
    connects to the address it checked, never resolving the name a second time; redirects are
    not followed (a redirect could lead anywhere), and nothing the receiver sends is recorded.
    """
    body = json.dumps(payload, default=str).encode()

    def headers() -> dict[str, str]:
        return {
            "User-Agent": "Recotem-Webhook/1",
            signing.HEADER_NAME: signing.sign_payload(body, secret.encode(), int(time.time())),
        }

    outcome = safehttp.post_json_with_retries(
        url,
        body,
        headers=headers,
        allowed_hosts=settings.RECOTEM_ALLOWED_SOURCE_HOSTS,
        retry=safehttp.RetryPolicy(attempts=attempts),
        sleep=lambda seconds: time.sleep(seconds),
    )
    return Delivery(outcome.delivered, [a.as_dict() for a in outcome.attempts])


def notify_failure(*, run: RetrainingRun) -> None:
    """On FAILED with ``notify_on_failure``: a log record, then the signed webhook (recorded on the run)."""
    schedule = RetrainingSchedule.objects.select_related("project").get(pk=run.schedule_id)
    if not schedule.notify_on_failure:
        return
    logger.error(
        "retraining run %s of project %s (%s) failed: %s",
        run.pk,
        schedule.project_id,
        schedule.project.name,
        run.error_message,
    )
    record: dict[str, Any] = {"logged": True}
    payload: dict[str, Any] | None = None
    if schedule.webhook_url:
        payload = {
            "event": "retraining.run.failed",
            "project": {"id": schedule.project_id, "name": schedule.project.name},
            "schedule_id": schedule.pk,
            "run": {
                "id": run.pk,
                "status": run.status,
                "trigger": run.trigger,
                "attempt": run.attempt,
                "retry_of": run.retry_of_id,
                "error_message": run.error_message,
                "retryable": run.retryable,
                "will_retry": run.retryable and run.attempt <= schedule.max_retries,
            },
        }
        # "delivered" stays None until the delivery task records the outcome.
        record.update({"webhook_url": schedule.webhook_url, "delivered": None, "attempts": []})
    RetrainingRun.objects.filter(pk=run.pk).update(notification=record)
    run.notification = record
    if payload is not None:
        _enqueue_webhook(schedule_id=schedule.pk, payload=payload, run_id=run.pk)


def _enqueue_webhook(
    *, schedule_id: int, payload: dict[str, Any], run_id: int | None = None
) -> None:
    """Deliver in a task of its own (default queue): 3 tries × 10 s must not block the reaper or a worker."""
    kwargs = {
        "schedule_id": schedule_id,
        "payload": json.loads(json.dumps(payload, default=str)),
        "run_id": run_id,
    }
    transaction.on_commit(functools.partial(_send_webhook, kwargs))


def _send_webhook(kwargs: dict[str, Any]) -> None:
    try:
        jobs.enqueue(WEBHOOK_TASK, kwargs=kwargs)
    except jobs.BrokerUnavailable:
        # Kept on the run: the reaper sends it once the broker answers (webhooks_resend).
        logger.warning(
            "webhook of schedule %s kept until the broker answers", kwargs["schedule_id"]
        )
        if kwargs.get("run_id") is not None:
            RetrainingRun.objects.filter(pk=kwargs["run_id"]).update(
                notification={"logged": True, "delivered": None, "unsent": kwargs["payload"]}
            )


def webhooks_resend() -> int:
    """Send the failure webhooks that could not be queued while the broker was away."""
    sent = 0
    for run_id, schedule_id, record in RetrainingRun.objects.filter(
        notification__has_key="unsent"
    ).values_list("pk", "schedule_id", "notification")[:100]:
        payload = record["unsent"]
        RetrainingRun.objects.filter(pk=run_id).update(
            notification={"logged": True, "delivered": None, "attempts": []}
        )
        _send_webhook({"schedule_id": schedule_id, "payload": payload, "run_id": run_id})
        sent += 1
    return sent


def webhook_notify(
    *, schedule_id: int, payload: dict[str, Any], run_id: int | None = None
) -> Delivery | None:
    """POST ``payload`` to the schedule's webhook (URL and secret read now) and record it on the run."""
    schedule = RetrainingSchedule.objects.filter(pk=schedule_id).first()
    if schedule is None or not schedule.webhook_url:
        return None
    delivery = webhook_deliver(
        url=schedule.webhook_url, secret=schedule.webhook_secret, payload=payload
    )
    if run_id is not None:
        record = {
            "logged": True,
            "webhook_url": schedule.webhook_url,
            "delivered": delivery.delivered,
            "attempts": delivery.attempts,
        }
        RetrainingRun.objects.filter(pk=run_id).update(notification=record)
    return delivery


def notify_canary_rolled_back(*, experiment: Any, run: RetrainingRun | None, reason: str) -> None:
    """A canary rolled back is notified like a failed run (log record, then the signed webhook
    when ``notify_on_failure``), but recorded nowhere on the run: a finished run is never
    written again. ``experiment`` is the canary's Experiment (typed loosely: experiments is a
    lower room and this module is imported by it only through retraining.canary)."""
    schedule = (
        RetrainingSchedule.objects.select_related("project").filter(pk=run.schedule_id).first()
        if run is not None
        else None
    )
    run_id = run.pk if run is not None else experiment.retraining_run_id
    logger.error(
        "canary of retraining run %s (experiment %s, project %s) rolled back: %s",
        run_id,
        experiment.pk,
        experiment.project_id,
        reason,
    )
    if schedule is None or not schedule.notify_on_failure or not schedule.webhook_url:
        return
    payload = {
        "event": "retraining.canary.rolled_back",
        "project": {"id": schedule.project_id, "name": schedule.project.name},
        "schedule_id": schedule.pk,
        "run": {"id": run_id, "trained_model": run.trained_model_id if run else None},
        "experiment": {"id": experiment.pk, "decision": experiment.decision, "reason": reason},
    }
    _enqueue_webhook(schedule_id=schedule.pk, payload=payload)


def notify_overdue(*, schedule: RetrainingSchedule, fire_at: datetime) -> None:
    logger.error(
        "retraining schedule %s of project %s is overdue: it should have fired at %s",
        schedule.pk,
        schedule.project_id,
        fire_at.isoformat(),
    )
    if schedule.notify_on_failure and schedule.webhook_url:
        payload = {
            "event": "retraining.schedule.overdue",
            "project": {"id": schedule.project_id},
            "schedule_id": schedule.pk,
            "missed_fire_at": fire_at.isoformat(),
        }
        _enqueue_webhook(schedule_id=schedule.pk, payload=payload)
