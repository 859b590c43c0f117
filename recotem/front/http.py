"""The request a UI view receives, as the type checker should see it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django_htmx.middleware import HtmxDetails


class AuthenticatedHttpRequest(HttpRequest):
    """A request that passed @login_required (so `user` is a real user), with django-htmx's
    `htmx` details (HtmxMiddleware sets them on every request). Used in annotations only."""

    user: User
    htmx: HtmxDetails
