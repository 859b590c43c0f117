"""Sticky assignment of users to weighted slots: a stable hash, no stored state.

A user's position is a uniform number in [0, 1) derived from ``blake2b(salt, user_id)``; the
slots' weights cut [0, 1) into consecutive ranges (in slot order) and the user goes to the range
holding their position. So:

* the same user lands on the same slot on every request and every inference process, for as
  long as the slots and their weights stay the same (nothing is written per user);
* a project's salt makes its assignment independent of every other project's (a user who is in
  the variant of one project is not thereby in the variant of all of them), and changing the
  salt reshuffles everyone;
* with weights w_i, the share of distinct users on slot i converges to w_i / sum(w) (blake2b is
  uniform for this purpose; tested within 2 percentage points over 10,000 users).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Sequence

_SCALE = float(2**53)


def _hasher(salt: str) -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=8, key=salt.encode()[:64], person=b"recotem-assign")


def position(user_id: str, salt: str) -> float:
    """The user's stable position in [0, 1) for this salt."""
    return Positions(salt)(user_id)


class Positions:
    """:func:`position` for one salt, with the keyed hash set up once (the serving hot path
    copies a prepared state instead of keying blake2b on every request)."""

    __slots__ = ("_base",)

    def __init__(self, salt: str) -> None:
        self._base = _hasher(salt)

    def __call__(self, user_id: str) -> float:
        h = self._base.copy()
        h.update(user_id.encode())
        # 53 bits: exactly representable, so the position stays below 1.0 (64 bits could round up).
        return (int.from_bytes(h.digest(), "big") >> 11) / _SCALE


def cumulative(weights: Sequence[int]) -> list[int]:
    """Running totals of the weights (what :func:`pick` bisects)."""
    totals: list[int] = []
    total = 0
    for weight in weights:
        if weight < 0:
            raise ValueError("weights must not be negative")
        total += weight
        totals.append(total)
    return totals


def pick(totals: Sequence[int], at: float) -> int:
    """Index of the slot whose weight range holds ``at`` (a position in [0, 1)).

    ``totals`` are the running totals from :func:`cumulative`; slots of weight 0 are never
    chosen. Raises ValueError when every weight is 0.
    """
    if not totals or totals[-1] <= 0:
        raise ValueError("at least one weight must be positive")
    return bisect_right(totals, at * totals[-1])


def assign(user_id: str, salt: str, weights: Sequence[int]) -> int:
    """Index of the slot ``user_id`` is assigned to under ``weights``."""
    return pick(cumulative(weights), position(user_id, salt))
