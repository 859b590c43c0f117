"""Validation rules of a project, shared by the REST serializer and the web form."""

from __future__ import annotations

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
        new_values = {"user_column": user_column, "item_column": item_column, "time_column": time_column}
        for column, value in new_values.items():
            if (value or "") != (getattr(instance, column) or ""):
                errors[column] = ["Columns cannot change once training data is uploaded; create a new project."]
    if errors:
        raise ValidationError(errors)
