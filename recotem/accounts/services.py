"""Writes for API keys. Saving or deleting a key bumps the routing version (deployment signals),
so inference processes drop their cached copy of a revoked key within about a second."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from recotem.accounts.keys import generate_key, hash_key
from recotem.accounts.models import ApiKey
from recotem.core.exceptions import ApplicationError

VALID_SCOPES = tuple(ApiKey.Scope.values)


def normalize_scopes(scopes: Iterable[Any]) -> list[str]:
    """Deduplicated scopes in canonical order; ApplicationError on an unknown or empty set."""
    values = list(scopes)
    unknown = [s for s in values if s not in VALID_SCOPES]
    if unknown:
        raise ApplicationError(
            f"Unknown scope(s) {unknown}; choose from {list(VALID_SCOPES)}.", field="scopes"
        )
    if not values:
        raise ApplicationError("At least one scope is required.", field="scopes")
    return [s for s in VALID_SCOPES if s in values]


@transaction.atomic
def api_key_create(
    *,
    project: Any,
    name: str,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
    created_by: Any = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the raw secret, which is never stored or shown again."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("Must be in the future.", field="expires_at")
    raw = generate_key()
    key = ApiKey.objects.create(
        project=project,
        name=name,
        prefix=raw[:12],
        key_hash=hash_key(raw),
        scopes=normalize_scopes(scopes),
        expires_at=expires_at,
        created_by=created_by,
    )
    return key, raw


@transaction.atomic
def api_key_revoke(*, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key
