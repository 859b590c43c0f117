"""Process heartbeats for /api/v1/ping/: every worker and beat reports in while it runs; and a
worker or beat started as plain `celery -A recotem worker|beat` checks the storage first, like
`recotem worker|beat` does (recotem.cli.storage_ready)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from celery.signals import beat_init, worker_init, worker_ready
from django.db import close_old_connections

from recotem.core import health
from recotem.core.storagecheck import storage_problem

logger = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 20


def _heartbeat_forever(kind: str) -> None:
    while True:
        try:
            health.beat(kind)
        except Exception:  # a busy database must not kill the process that reports on it
            logger.exception("could not record the %s heartbeat", kind)
        finally:
            close_old_connections()
        time.sleep(HEARTBEAT_SECONDS)


def start_heartbeat(kind: str) -> None:
    threading.Thread(
        target=_heartbeat_forever, args=(kind,), name=f"{kind}-heartbeat", daemon=True
    ).start()


@worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    start_heartbeat("worker")


@beat_init.connect
def _on_beat_init(**_: Any) -> None:
    start_heartbeat("beat")


@worker_init.connect
@beat_init.connect
def _refuse_unusable_storage(**_: Any) -> None:
    # Before taking any work: a worker that cannot reach the bucket would fail every task late.
    problem = storage_problem()
    if problem:
        print(f"recotem: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
