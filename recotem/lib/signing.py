"""Webhook signatures: HMAC-SHA256 over the timestamp and the raw body.

Header format (Stripe-style, so receivers find familiar examples)::

    Recotem-Signature: t=1767225600,v1=<hex hmac-sha256(secret, b"1767225600." + body)>

The timestamp is inside the MAC so a captured request cannot be replayed later
with a fresh ``t``; receivers reject timestamps outside a tolerance window.
Several ``v1=`` entries may appear (e.g. while a secret is being rotated); the
signature is valid if any of them matches.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

__all__ = ["HEADER_NAME", "sign_payload", "verify_signature"]

HEADER_NAME: Final = "Recotem-Signature"
_SCHEME: Final = "v1"


def _mac(body: bytes, secret: bytes, timestamp: int) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign_payload(body: bytes, secret: bytes, timestamp: int) -> str:
    """Return the header value ``t=<timestamp>,v1=<hex mac>`` for ``body``."""
    return f"t={int(timestamp)},{_SCHEME}={_mac(body, secret, int(timestamp))}"


def verify_signature(
    body: bytes,
    header: str,
    secret: bytes,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> bool:
    """Return True if ``header`` signs ``body`` with ``secret`` and is fresh.

    Malformed headers, a missing timestamp or signature, and timestamps more
    than ``tolerance_seconds`` away from ``now`` (either direction: clocks
    drift both ways) all return False rather than raising, so a receiver has
    one branch to handle. Comparison is constant-time.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isdigit():
                return False
            timestamp = int(value)
        elif key == _SCHEME:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = _mac(body, secret, timestamp)
    # Check every candidate so timing does not reveal which entry matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    return matched
