"""Who a request acts for, as the lowest layer needs to know it."""

from __future__ import annotations

from typing import Any


class ProjectScopedCredential:
    """Mixin for credentials bound to one project (API keys, defined in accounts).

    A request authenticated by such a credential sees only that project's objects; core checks
    for this type instead of importing the accounts app that defines the concrete credential.
    """

    project_id: int


def scoped_project_id(request: Any) -> int | None:
    """The project a request's credential is bound to, or None for a user's own login."""
    credential = getattr(request, "auth", None)
    return credential.project_id if isinstance(credential, ProjectScopedCredential) else None
