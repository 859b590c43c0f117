from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from recotem.core.auth import ProjectScopedCredential


class ApiKey(ProjectScopedCredential, models.Model):
    """A project-scoped key. Only a keyed hash of the secret is stored; the key is shown once."""

    class Scope(models.TextChoices):
        READ = "read"
        WRITE = "write"
        PREDICT = "predict"
        EVENTS = "events"

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=128)
    prefix = models.CharField(
        max_length=16, help_text="First characters of the key, for recognition."
    )
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_usable(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now
