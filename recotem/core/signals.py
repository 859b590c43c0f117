"""Process hooks: heartbeats for /api/v1/ping/ and a reconcile when a worker starts."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import beat_init, worker_ready

logger = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 20


def _heartbeat_forever(kind: str) -> None:
    from django.db import close_old_connections

    from recotem.core import health

    while True:
        try:
            health.beat(kind)
        except Exception:  # a busy database must not kill the process that reports on it
            logger.exception("could not record the %s heartbeat", kind)
        finally:
            close_old_connections()
        time.sleep(HEARTBEAT_SECONDS)


def start_heartbeat(kind: str) -> None:
    threading.Thread(target=_heartbeat_forever, args=(kind,), name=f"{kind}-heartbeat", daemon=True).start()


@worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    start_heartbeat("worker")
    try:
        from recotem.retraining.services import schedule_reconcile
    except ImportError:
        return
    try:
        report = schedule_reconcile()
        logger.info("reconcile on worker start: %s", report)
    except Exception:
        logger.exception("reconcile on worker start failed")


@beat_init.connect
def _on_beat_init(**_: Any) -> None:
    start_heartbeat("beat")
