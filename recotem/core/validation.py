"""Field validation shared by every app's serializers, forms and services.

Each validator raises `django.core.exceptions.ValidationError({field: [message, ...]})`; the API
exception handler turns that into a 400 of the same shape and the forms attach it to their fields.
"""

from __future__ import annotations

import math
from typing import Any

from recotem.core.exceptions import InvalidInput

INT32_MAX = 2**31 - 1
RANDOM_SEED = (0, INT32_MAX)
MAX_TIMEOUT_SECONDS = 30 * 86400


class Errors:
    """Collects field errors so a form shows every problem at once, not one per submit."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.errors.setdefault(field, []).append(message)

    def has(self, field: str) -> bool:
        return field in self.errors

    def int_in(
        self, field: str, value: Any, bounds: tuple[int, int], *, optional: bool = False
    ) -> None:
        if value is None:
            if not optional:
                self.add(field, "This field is required.")
            return
        low, high = bounds
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.add(field, f"Must be a whole number between {low} and {high}.")

    def float_in(
        self,
        field: str,
        value: Any,
        low: float,
        high: float,
        *,
        open_low: bool = False,
        open_high: bool = False,
        message: str | None = None,
    ) -> None:
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        if ok:
            ok = (value > low if open_low else value >= low) and (
                value < high if open_high else value <= high
            )
        if not ok:
            left, right = "(" if open_low else "[", ")" if open_high else "]"
            self.add(field, message or f"Must be a number in {left}{low}, {high}{right}.")

    def raise_if_any(self) -> None:
        if self.errors:
            raise InvalidInput(self.errors)
