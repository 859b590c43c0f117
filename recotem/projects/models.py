from __future__ import annotations

import secrets
from typing import TypedDict

from django.conf import settings
from django.db import models


class ColumnNames(TypedDict):
    """A project's column names, spelled as the keyword arguments of `recotem.ml` readers."""

    user_column: str
    item_column: str
    time_column: str | None


def new_assignment_salt() -> str:
    """A fresh random salt for sticky slot assignment (``recotem.lib.assignment``)."""
    return secrets.token_hex(16)


class Project(models.Model):
    """The root of ownership: every other object hangs off exactly one project."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="projects"
    )
    name = models.CharField(max_length=256)
    user_column = models.CharField(max_length=256)
    item_column = models.CharField(max_length=256)
    time_column = models.CharField(max_length=256, blank=True, default="")
    # Salts the hash that keeps each user on one deployment slot; random per project so that
    # projects' assignments are independent (changing it reshuffles the users).
    assignment_salt = models.CharField(max_length=32, default=new_assignment_salt, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="project_name_unique_per_owner")
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def columns(self) -> ColumnNames:
        return {
            "user_column": self.user_column,
            "item_column": self.item_column,
            "time_column": self.time_column or None,
        }


def _upload_to(instance: TrainingData | ItemMetaData, filename: str) -> str:
    return f"projects/{instance.project_id}/{type(instance).__name__.lower()}/{filename}"


class TrainingData(models.Model):
    """An immutable snapshot of interactions, validated on upload (or read from a data source)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="training_data")
    file = models.FileField(upload_to=_upload_to, max_length=512)
    original_name = models.CharField(max_length=512)
    filesize = models.BigIntegerField(help_text="Size of the stored file in bytes.")
    row_count = models.BigIntegerField()
    n_users = models.IntegerField()
    n_items = models.IntegerField()
    fingerprint = models.CharField(max_length=80, db_index=True)
    data_source = models.ForeignKey(
        "projects.DataSource",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="snapshots",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.row_count} rows)"


class ItemMetaData(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="item_meta_data")
    file = models.FileField(upload_to=_upload_to, max_length=512)
    original_name = models.CharField(max_length=512)
    filesize = models.BigIntegerField()
    row_count = models.BigIntegerField()
    columns = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.original_name


class DataSource(models.Model):
    """Where a scheduled run reads fresh interactions from, instead of an upload."""

    class Kind(models.TextChoices):
        SQL = "sql", "SQL query"
        URL = "url", "CSV/Parquet URL"
        EVENTS = "events", "Feedback events"

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="data_source")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    url = models.CharField(
        max_length=2048,
        blank=True,
        default="",
        help_text="SQLAlchemy URL or http(s) URL of a file (empty for events).",
    )
    query = models.TextField(blank=True, default="")
    # kind=events: which event types count as interactions (null: every type but impression,
    # which records what was shown, not what the user did) and how many days back (null: all).
    event_types = models.JSONField(null=True, blank=True, default=None)
    window_days = models.PositiveIntegerField(null=True, blank=True)
    last_read_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for {self.project}"
