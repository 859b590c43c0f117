"""A background thread that touches a row's ``heartbeat_at`` while long work holds the main thread.

Shared by retraining runs, trained models and tuning jobs: the reaper tells a slow job from a dead
worker (SIGKILL, OOM, a lost host) only by this timestamp, so every long RUNNING row carries one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)


def heartbeat_interval() -> float:
    return float(getattr(settings, "RECOTEM_RUN_HEARTBEAT_SECONDS", 10))


class Heartbeat:
    """Call ``touch()`` every ``interval`` seconds until the block ends or ``touch`` returns False.

    ``touch`` returns False when the row is no longer RUNNING (finished, or failed by the reaper):
    there is nothing left to keep alive. Errors are logged and the loop goes on, since a missed beat
    is harmless while a dead heartbeat thread would get a healthy job reaped.
    """

    def __init__(self, touch: Callable[[], bool], *, name: str, interval: float | None = None) -> None:
        self.touch = touch
        self.stop = threading.Event()
        self.interval = heartbeat_interval() if interval is None else interval
        self.thread = threading.Thread(target=self._loop, name=f"{name}-heartbeat", daemon=True)

    def _loop(self) -> None:
        try:
            while not self.stop.wait(self.interval):
                try:
                    if not self.touch():
                        return
                except Exception:
                    logger.exception("heartbeat %s failed", self.thread.name)
        finally:
            # This thread's own connections (thread-local): never leave one open per finished job.
            connections.close_all()

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
