"""Validation rules of a project, shared by the REST serializer and the web form."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError


def validate_project_fields(
    *,
    owner: Any,
    name: str | None,
    user_column: str | None,
    item_column: str | None,
    time_column: str | None,
    instance: Any = None,
) -> None:
    """A name unique per owner, three distinct column names, columns fixed once data exists.

    Raises `ValidationError({field: [message]})` listing every problem.
    """
    from recotem.projects.models import Project

    errors: dict[str, list[str]] = {}
    if name:
        clash = Project.objects.filter(owner=owner, name=name)
        if instance is not None and instance.pk is not None:
            clash = clash.exclude(pk=instance.pk)
        if clash.exists():
            errors["name"] = ["You already have a project with this name."]
    if user_column and item_column and user_column == item_column:
        errors["item_column"] = ["Must differ from the user column."]
    if time_column and time_column in (user_column, item_column):
        errors["time_column"] = ["Must differ from the user and item columns."]
    if instance is not None and instance.pk is not None and instance.training_data.exists():
        new_values = {
            "user_column": user_column,
            "item_column": item_column,
            "time_column": time_column,
        }
        for column, value in new_values.items():
            if (value or "") != (getattr(instance, column) or ""):
                errors[column] = [
                    "Columns cannot change once training data is uploaded; create a new project."
                ]
    if errors:
        raise ValidationError(errors)


# An event type: the built-in impression / click / purchase, or a custom lower-case name. The one
# home of the rule: the events API (experiments, a higher room) and events data sources use it.
EVENT_TYPE_RE = re.compile(r"[a-z_]{1,32}")
MAX_WINDOW_DAYS = 3650


def event_types_errors(value: Any) -> list[str]:
    """Messages for an ``event_types`` value: null, or a non-empty list of distinct type names."""
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        return ["A non-empty list of event types, or null for every type but impression."]
    bad = [t for t in value if not isinstance(t, str) or not EVENT_TYPE_RE.fullmatch(t)]
    if bad:
        return [f"{bad[0]!r} is not an event type (1-32 characters of a-z and _)."]
    if len(set(value)) != len(value):
        return ["Event types are listed once each."]
    return []


def window_days_errors(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_WINDOW_DAYS:
        return [f"A whole number of days from 1 to {MAX_WINDOW_DAYS}, or null for all events."]
    return []
