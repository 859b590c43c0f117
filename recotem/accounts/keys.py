"""API key secrets: generation and a fast keyed hash (keys are high-entropy, so no slow KDF)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

from django.conf import settings

KEY_PREFIX = "rctm_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw_key: str) -> str:
    pepper = hashlib.sha256(("recotem-api-key:" + settings.SECRET_KEY).encode()).digest()
    return hmac.new(pepper, raw_key.encode(), hashlib.sha256).hexdigest()


def key_hasher() -> Callable[[str], str]:
    """`hash_key` with the pepper derived once: what a hot path (the inference app) calls."""
    pepper = hashlib.sha256(("recotem-api-key:" + settings.SECRET_KEY).encode()).digest()

    def _hash(raw_key: str) -> str:
        return hmac.digest(pepper, raw_key.encode(), "sha256").hex()

    return _hash
