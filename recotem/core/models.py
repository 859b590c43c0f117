from __future__ import annotations

from django.db import models


class ProcessHeartbeat(models.Model):
    """Last time a worker or beat reported in (see recotem.core.health)."""

    kind = models.CharField(max_length=32, unique=True)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.kind} @ {self.seen_at:%Y-%m-%d %H:%M:%S}"
