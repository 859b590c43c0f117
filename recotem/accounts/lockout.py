"""Login lockout (django-axes) as Recotem configures it: where a client's address comes from,
what a locked-out client is told, and the one authentication door that checks the lock.

The counting and the lock itself are django-axes' (``AccessAttempt`` rows, visible and
deletable in the admin). Settings: ``AXES_*`` in ``recotem/settings.py``.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Any

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.cache import add_never_cache_headers

from recotem.lib.clientaddr import TrustedProxies, client_address, parse_trusted_proxies

LOCKED_MESSAGE = (
    "Too many failed sign-in attempts for this account or from this address. "
    "Try again in {minutes} minutes, or ask an administrator to clear the lock."
)


@lru_cache(maxsize=4)
def _trusted(value: str) -> TrustedProxies:
    return parse_trusted_proxies(value)


def client_ip(request: HttpRequest) -> str:
    """The client's address: the socket's peer unless RECOTEM_TRUSTED_PROXIES trusts proxies."""
    return client_address(
        request.META.get("REMOTE_ADDR"),
        request.META.get("HTTP_X_FORWARDED_FOR"),
        _trusted(settings.RECOTEM_TRUSTED_PROXIES),
    )


def cool_off() -> timedelta:
    value = settings.AXES_COOLOFF_TIME
    return value if isinstance(value, timedelta) else timedelta(minutes=15)


def lockout_response(request: HttpRequest, *_: Any, **__: Any) -> HttpResponse:
    """429 for a locked username or address: JSON on the API, a page everywhere else.

    Takes and ignores whatever else django-axes passes (its sync and async middleware differ).
    """
    seconds = int(cool_off().total_seconds())
    message = LOCKED_MESSAGE.format(minutes=max(1, round(seconds / 60)))
    response: HttpResponse
    if request.path.startswith("/api/") or request.headers.get("X-Requested-With") == (
        "XMLHttpRequest"
    ):
        response = JsonResponse({"detail": message, "retry_after_seconds": seconds}, status=429)
    else:
        response = render(request, "accounts/locked_out.html", {"message": message}, status=429)
    response["Retry-After"] = str(seconds)
    add_never_cache_headers(response)
    return response


class LockoutBackend(AxesStandaloneBackend):  # type: ignore[misc]  # axes ships no types
    """django-axes' lock check, for requests only.

    Every network door (the UI, the admin and the API login) passes the request, so each is
    checked; code that authenticates without one (a shell, a management command) is not a
    door an attacker can reach and is not refused for lacking it.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        super().authenticate(request, username=username, password=password, **kwargs)
        return None
