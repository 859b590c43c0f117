"""API key secrets: generation and a fast keyed hash (keys are high-entropy, so no slow KDF)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings

KEY_PREFIX = "rctm_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw_key: str) -> str:
    pepper = hashlib.sha256(("recotem-api-key:" + settings.SECRET_KEY).encode()).digest()
    return hmac.new(pepper, raw_key.encode(), hashlib.sha256).hexdigest()
