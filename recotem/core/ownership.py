"""The same-project rule: an object may only reference objects of its own project."""

from __future__ import annotations

from typing import Any

from recotem.core.exceptions import ApplicationError

SAME_PROJECT_MESSAGE = "Must belong to the same project."


def check_same_project(project_id: int, **related: Any) -> None:
    """Raise ApplicationError on the first ``field=object`` whose ``project_id`` differs.

    ``None`` values are skipped (an optional reference left empty). Every service that stores a
    reference calls this, so the rule holds whichever door (API, form, admin, shell) a write
    comes through.
    """
    for field, obj in related.items():
        if obj is not None and obj.project_id != project_id:
            raise ApplicationError(SAME_PROJECT_MESSAGE, field=field)
