"""API key secrets: generation and a fast keyed hash (keys are high-entropy, so no slow KDF).

The hash is keyed by a pepper derived from SECRET_KEY. After SECRET_KEY changes, a key hashed
under an old secret (listed in RECOTEM_SECRET_KEY_FALLBACKS) still matches one of the fallback
hashes; its row is then re-hashed under the current secret (``upgrade``), so once every key was
used the fallbacks are no longer needed for keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

from django.conf import settings

KEY_PREFIX = "rctm_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _pepper(secret: str) -> bytes:
    return hashlib.sha256(("recotem-api-key:" + secret).encode()).digest()


def _peppers() -> list[bytes]:
    return [_pepper(settings.SECRET_KEY)] + [
        _pepper(s) for s in getattr(settings, "SECRET_KEY_FALLBACKS", None) or ()
    ]


def hash_key(raw_key: str) -> str:
    """The key's hash under the current SECRET_KEY (what a new or upgraded row stores)."""
    return hmac.new(_pepper(settings.SECRET_KEY), raw_key.encode(), hashlib.sha256).hexdigest()


def key_hashes(raw_key: str) -> list[str]:
    """The key's hash under the current SECRET_KEY, then under each fallback."""
    return [hmac.new(p, raw_key.encode(), hashlib.sha256).hexdigest() for p in _peppers()]


def key_hasher() -> Callable[[str], list[str]]:
    """`key_hashes` with the peppers derived once: what a hot path (the inference app) calls."""
    peppers = _peppers()

    def _hash(raw_key: str) -> list[str]:
        data = raw_key.encode()
        return [hmac.digest(p, data, "sha256").hex() for p in peppers]

    return _hash
