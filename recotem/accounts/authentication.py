from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from recotem.accounts.keys import KEY_PREFIX, key_hashes
from recotem.accounts.models import ApiKey

# last_used_at is written at most this often per key, so a busy key costs no write per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def touch_last_used(key: ApiKey) -> None:
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


def lookup_key(raw_key: str) -> ApiKey | None:
    """The usable key for a raw secret, under the current SECRET_KEY or a fallback.

    A key found under a fallback is re-hashed under the current secret on the spot.
    """
    if not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 200:
        return None
    hashes = key_hashes(raw_key)
    key = ApiKey.objects.select_related("project__owner").filter(key_hash__in=hashes).first()
    if key is None or not key.is_usable():
        return None
    if key.key_hash != hashes[0]:
        ApiKey.objects.filter(pk=key.pk, key_hash=key.key_hash).update(key_hash=hashes[0])
        key.key_hash = hashes[0]
    return key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`X-API-Key: rctm_...` → the key's project owner, with `request.auth` the ApiKey."""

    def authenticate(self, request: Request) -> tuple[object, ApiKey] | None:
        raw_key = request.headers.get("X-API-Key")
        if not raw_key:
            return None
        key = lookup_key(raw_key.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API key.")
        touch_last_used(key)
        return key.project.owner, key

    def authenticate_header(self, request: Request) -> str:
        return "X-API-Key"
