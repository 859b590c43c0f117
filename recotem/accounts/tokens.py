"""JWT pairs and their revocation.

* A login issues a refresh token (recorded as an ``OutstandingToken``) and an access token, both
  carrying a digest of the user's password hash (simplejwt's ``CHECK_REVOKE_TOKEN`` claim).
* A refresh rotates: the old refresh token is blacklisted, a new one is returned.
* Logout blacklists the refresh token it is given.
* A password change, by any path, blacklists every refresh token of the user
  (``recotem.accounts.signals``) — and since the password hash changed, the digest in every
  token issued before no longer matches: access tokens fail at once, not only when they expire
  (``RECOTEM_ACCESS_TOKEN_MINUTES``), even after a raw ``UPDATE`` that sends no signals.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from rest_framework import serializers
from rest_framework_simplejwt.exceptions import AuthenticationFailed
from rest_framework_simplejwt.serializers import TokenRefreshSerializer
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.utils import get_md5_hash_password

REVOKED = "This token was revoked (signed out, or the password changed). Sign in again."


def tokens_issue(*, user: AbstractBaseUser) -> dict[str, str]:
    """A new ``{"access", "refresh"}`` pair for ``user``."""
    refresh = RefreshToken.for_user(user)
    return {"access": str(refresh.access_token), "refresh": str(refresh)}


@transaction.atomic
def tokens_revoke_user(*, user_id: int) -> int:
    """Blacklist every unexpired refresh token of the user; returns how many were added."""
    pending = OutstandingToken.objects.filter(
        user_id=user_id, expires_at__gt=timezone.now(), blacklistedtoken__isnull=True
    )
    rows = [BlacklistedToken(token=token) for token in pending]
    BlacklistedToken.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def matches_password(payload: dict[str, Any] | Any, user: AbstractBaseUser) -> bool:
    """Whether a token was issued under the user's current password."""
    claim = payload.get(api_settings.REVOKE_TOKEN_CLAIM)
    return bool(claim) and claim == get_md5_hash_password(user.password)


class RefreshSerializer(TokenRefreshSerializer):
    """simplejwt's refresh (rotation + blacklist) that also refuses tokens of an old password
    or of a deleted user (simplejwt's own would answer 500 for the latter)."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        refresh = self.token_class(attrs["refresh"])
        user_id = refresh.payload.get(api_settings.USER_ID_CLAIM)
        user = (
            get_user_model().objects.filter(**{api_settings.USER_ID_FIELD: user_id}).first()
            if user_id is not None
            else None
        )
        if user is None or not user.is_active:
            raise AuthenticationFailed(
                "No active account found for the given token.", "no_active_account"
            )
        if not matches_password(refresh.payload, user):
            raise AuthenticationFailed(REVOKED, "token_revoked")
        return super().validate(attrs)


class LogoutSerializer(serializers.Serializer[Any]):
    refresh = serializers.CharField(write_only=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        RefreshToken(attrs["refresh"]).blacklist()
        return {}
