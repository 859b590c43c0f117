from __future__ import annotations

import os
import socket

from celery import shared_task


@shared_task(name="recotem.core.tasks.ping")
def ping() -> dict[str, object]:
    """Round-trip check: proves a worker consumed a message from the configured broker."""
    return {"pong": True, "hostname": socket.gethostname(), "pid": os.getpid()}
