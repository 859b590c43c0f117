"""Rules for feedback events and experiments, shared by the events endpoint, the API and services.

Event errors name their place in the request body (``events[3].timestamp``) so a client can fix
the one bad event of a batch of 1,000.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from recotem.core.validation import Errors
from recotem.lib.signing import RequestTokens, ServedBy

MAX_EVENTS_PER_BATCH = 1000
MAX_ID_LENGTH = 256
MAX_ERRORS = 50  # a batch of garbage gets the first 50 problems, not a megabyte of them
EVENT_TYPE = re.compile(r"[a-z_]{1,32}")
BUILTIN_EVENT_TYPES = ("impression", "click", "purchase")
IMPRESSION = "impression"
EVENT_FIELDS = frozenset(
    {"type", "user_id", "item_id", "request_id", "timestamp", "event_id", "value"}
)
# Unix seconds accepted: 1970 up to (not including) the year 10000, what a datetime can hold.
MAX_UNIX_SECONDS = 253_402_300_800
EXPERIMENT_NAME_MAX = 128


@dataclass(frozen=True, slots=True)
class CleanEvent:
    event_type: str
    user_id: str
    item_id: str
    timestamp: datetime
    value: float | None
    event_id: str | None
    served_by: ServedBy | None


def event_type_error(value: Any) -> str | None:
    """Why ``value`` is not an event type name, or None when it is one."""
    if not isinstance(value, str) or EVENT_TYPE.fullmatch(value) is None:
        return (
            "Must be impression, click, purchase or a custom name of 1 to 32 characters a-z and _."
        )
    return None


def _id(errors: Errors, field: str, value: Any, *, required: bool) -> str | None:
    if value is None:
        if required:
            errors.add(field, "This field is required.")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        errors.add(field, "Must be a non-empty string.")
        return None
    if len(value) > MAX_ID_LENGTH:
        errors.add(field, f"Must be at most {MAX_ID_LENGTH} characters.")
        return None
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        errors.add(field, "Must not contain the NUL character.")
        return None
    return value


def _timestamp(errors: Errors, field: str, value: Any, now: datetime) -> datetime:
    if value is None:
        return now
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and 0 <= value < MAX_UNIX_SECONDS:
            return datetime.fromtimestamp(value, UTC)
        errors.add(field, "Unix seconds must be a finite number from 0 (1970) to the year 9999.")
        return now
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            # A time without an offset is read as UTC, the only zone every client agrees on.
            parsed = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
            try:
                in_utc = parsed.astimezone(UTC)
            except OverflowError:  # an offset that moves it past year 1 or 9999
                in_utc = None
            # The same range as unix seconds: every database stores and reads it back.
            if in_utc is not None and 0 <= in_utc.timestamp() < MAX_UNIX_SECONDS:
                return in_utc
            errors.add(field, "Must be a date-time from 1970 to the year 9999.")
            return now
    errors.add(field, "Must be an ISO 8601 date-time or unix seconds.")
    return now


def _fast(
    item: Any, project_id: int, verified: dict[str, ServedBy | None], now: datetime
) -> CleanEvent | None:
    """The common well-formed event, checked with as few calls as possible (a batch of 1,000
    must cost well under a millisecond per hundred events); None sends it to the slow path,
    which accepts the same events and names every problem of the others."""
    if type(item) is not dict or not item.keys() <= EVENT_FIELDS:
        return None
    event_type = item.get("type")
    if type(event_type) is not str or EVENT_TYPE.fullmatch(event_type) is None:
        return None
    user_id, item_id = item.get("user_id"), item.get("item_id")
    if type(user_id) is not str or not 0 < len(user_id) <= MAX_ID_LENGTH or "\x00" in user_id:
        return None
    if type(item_id) is not str or not 0 < len(item_id) <= MAX_ID_LENGTH or "\x00" in item_id:
        return None
    event_id = item.get("event_id")
    if event_id is not None and (
        type(event_id) is not str or not 0 < len(event_id) <= MAX_ID_LENGTH or "\x00" in event_id
    ):
        return None
    stamp = item.get("timestamp")
    if stamp is None:
        timestamp = now
    elif type(stamp) in (int, float) and 0 <= stamp < MAX_UNIX_SECONDS:
        timestamp = datetime.fromtimestamp(stamp, UTC)
    else:
        return None
    value = item.get("value")
    if value is not None:
        if type(value) not in (int, float) or not math.isfinite(value):
            return None
        value = float(value)
    served_by = None
    request_id = item.get("request_id")
    if request_id is not None:
        if type(request_id) is not str:
            return None
        served_by = verified.get(request_id)
        if served_by is None or served_by.project_id != project_id:
            return None
    return CleanEvent(event_type, user_id, item_id, timestamp, value, event_id, served_by)


def clean_events(
    raw: Any, *, project_id: int, tokens: RequestTokens, now: datetime
) -> list[CleanEvent]:
    """Validate a request's ``events`` list; raises InvalidInput naming every bad field.

    A ``request_id`` must be one this installation signed for this project: a forged, edited or
    foreign one is refused rather than stored unattributed, so a client bug shows up at once.
    Each distinct request id is verified once per batch (one prediction shows many items).
    """
    errors = Errors()
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_EVENTS_PER_BATCH:
        errors.add("events", f"Must be a list of 1 to {MAX_EVENTS_PER_BATCH} events.")
        errors.raise_if_any()
    verified: dict[str, ServedBy | None] = {}
    for item in raw:
        if type(item) is dict:
            request_id = item.get("request_id")
            if type(request_id) is str and request_id not in verified:
                verified[request_id] = tokens.verify(request_id)
    cleaned: list[CleanEvent] = []
    for index, item in enumerate(raw):
        fast = _fast(item, project_id, verified, now)
        if fast is not None:
            if not errors.errors:
                cleaned.append(fast)
            continue
        if len(errors.errors) >= MAX_ERRORS:
            break
        slow = _slow(errors, f"events[{index}]", item, project_id, verified, now)
        if slow is not None and not errors.errors:
            cleaned.append(slow)
    errors.raise_if_any()
    return cleaned


def _slow(
    errors: Errors,
    at: str,
    item: Any,
    project_id: int,
    verified: dict[str, ServedBy | None],
    now: datetime,
) -> CleanEvent | None:
    """One event checked field by field, every problem added to ``errors`` under ``at``."""
    if not isinstance(item, dict):
        errors.add(at, "Must be an object.")
        return None
    before = sum(len(v) for v in errors.errors.values())
    unknown = sorted(str(k) for k in item.keys() - EVENT_FIELDS)
    if unknown:
        errors.add(at, f"Unknown field(s) {unknown}; allowed: {sorted(EVENT_FIELDS)}.")
    event_type = item.get("type")
    if event_type is None:
        errors.add(f"{at}.type", "This field is required.")
    elif (problem := event_type_error(event_type)) is not None:
        errors.add(f"{at}.type", problem)
    user_id = _id(errors, f"{at}.user_id", item.get("user_id"), required=True)
    item_id = _id(errors, f"{at}.item_id", item.get("item_id"), required=True)
    event_id = _id(errors, f"{at}.event_id", item.get("event_id"), required=False)
    timestamp = _timestamp(errors, f"{at}.timestamp", item.get("timestamp"), now)
    value = item.get("value")
    if value is not None and (
        not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
    ):
        errors.add(f"{at}.value", "Must be a finite number.")
    served_by: ServedBy | None = None
    request_id = item.get("request_id")
    if request_id is not None:
        served_by = verified.get(request_id) if isinstance(request_id, str) else None
        if served_by is None:
            errors.add(f"{at}.request_id", "Not a request id issued by this server.")
        elif served_by.project_id != project_id:
            errors.add(f"{at}.request_id", "This request id belongs to another project.")
    if sum(len(v) for v in errors.errors.values()) > before:
        return None
    assert user_id is not None and item_id is not None and isinstance(event_type, str)
    return CleanEvent(
        event_type=event_type,
        user_id=user_id,
        item_id=item_id,
        timestamp=timestamp,
        value=None if value is None else float(value),
        event_id=event_id,
        served_by=served_by,
    )


def metric_error(value: Any) -> str | None:
    """Why ``value`` cannot be an experiment's metric (an event type other than impression),
    or None. Used by experiments and by a schedule's ``canary_metric``."""
    if (problem := event_type_error(value)) is not None:
        return problem
    if value == IMPRESSION:
        return "Impressions define who is in the experiment; pick the event that converts."
    return None


def experiment_errors(
    *,
    name: Any,
    metric: Any,
    alpha: Any,
    min_effect: Any,
) -> Errors:
    """Field rules of an experiment's own values (the slots are checked by the service)."""
    errors = Errors()
    if not isinstance(name, str) or not name.strip() or len(name) > EXPERIMENT_NAME_MAX:
        errors.add("name", f"Must be a non-empty name of at most {EXPERIMENT_NAME_MAX} characters.")
    if (problem := metric_error(metric)) is not None:
        errors.add("metric", problem)
    errors.float_in("alpha", alpha, 0.0, 1.0, open_low=True, open_high=True)
    if min_effect is not None:
        errors.float_in("min_effect", min_effect, 0.0, 1.0, open_low=True)
    return errors
