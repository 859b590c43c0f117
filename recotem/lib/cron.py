"""Cron expressions for retraining schedules: the single source of truth.

Every cron string a user types goes through :func:`validate_cron` before it is
stored, previewed or handed to django-celery-beat. The rules are chosen so that
the preview (:func:`next_runs`, :func:`describe_cron`) always shows exactly what
Celery beat's ``crontab`` schedule will fire:

* Exactly five fields: ``minute hour day-of-month month day-of-week``.
  Lists (``1,15``), ranges (``1-5``), stepped ranges (``1-30/5``, ``*/15``) and
  names (``jan``..``dec``, ``sun``..``sat``) are accepted. ``L``, ``W``, ``#``,
  ``?`` and ``5/15`` (a step without a range) are rejected because Celery's
  parser refuses them even though many cron libraries accept them.
* Day-of-week ``7`` means Sunday in cron but Celery refuses it, so
  :func:`normalize_cron` rewrites it to ``0`` (``5-7`` becomes ``5-6,0``).
* Celery ANDs day-of-month with day-of-week; standard cron ORs them when both
  are restricted (celery/celery#4307). Rather than show a preview beat would not
  honour, at least one of the two fields must be exactly ``*``.
* Wrap-around ranges (``22-2``) are rejected: Celery would accept them but
  cronsim and most crons do not, and the two would disagree.
* Macros are translated, not rejected: ``@yearly``/``@annually``, ``@monthly``,
  ``@weekly``, ``@daily``/``@midnight`` and ``@hourly`` become their 5-field
  equivalents. ``@reboot`` has no schedule and is rejected.

Daylight-saving transitions follow Celery beat, not Debian cron: a wall-clock
time that does not exist (spring forward) fires shifted forward by the gap
(02:30 in Berlin on the change day fires at 03:30 CEST), and a time that occurs
twice (fall back) fires once, at its first occurrence.
"""

from __future__ import annotations

import bisect
import calendar
import functools
import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Final

from celery.schedules import ParseException, crontab
from cron_descriptor import ExpressionDescriptor, FormatException, Options
from cronsim import CronSim, CronSimError

__all__ = [
    "CronError",
    "TimezoneError",
    "celery_crontab_fields",
    "describe_cron",
    "next_runs",
    "normalize_cron",
    "validate_cron",
    "validate_timezone",
]


class CronError(ValueError):
    """A cron expression that Recotem will not schedule; ``str()`` is for users."""


class TimezoneError(ValueError):
    """An unknown IANA time zone name; ``str()`` is for users."""


FIELD_NAMES: Final = ("minute", "hour", "day-of-month", "month", "day-of-week")
# Keyword names of celery.schedules.crontab and django-celery-beat's CrontabSchedule.
CELERY_KEYS: Final = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
# Day-of-week accepts 7 on input only; normalize_cron maps it to 0 before parsing.
_BOUNDS: Final = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTH_NAMES: Final = {
    name: i for i, name in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)
}
_DAY_NAMES: Final = {name: i for i, name in enumerate("sun mon tue wed thu fri sat".split())}
_NAMES: Final[tuple[dict[str, int], ...]] = ({}, {}, {}, _MONTH_NAMES, _DAY_NAMES)
_MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_TERM_RE: Final = re.compile(
    r"^(?:(?P<star>\*)|(?P<lo>[a-z0-9]+)(?:-(?P<hi>[a-z0-9]+))?)(?:/(?P<step>[0-9]+))?$"
)
# Quartz/Debian extensions that cronsim understands but Celery's parser refuses.
_UNSUPPORTED_RE: Final = re.compile(r"^(?:[0-9]*(?:l|w|lw)|\?|[0-9a-z]+#[0-9]+)$")
_DOW, _DOM, _MONTH = 4, 2, 3
# Leap years count: "0 0 29 2 *" is a valid (rare) schedule in cron and Celery.
_MAX_DAYS: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# UTC offsets span at most -12..+14 h, so a wall-clock time never maps more than
# this far from another; next_runs relies on it to know when it has seen enough.
_MAX_OFFSET_SPREAD: Final = timedelta(hours=26)


def normalize_cron(expr: str) -> str:
    """Return ``expr`` in canonical form without validating it.

    Steps: trim and collapse whitespace, lower-case (names like ``MON``),
    translate ``@daily``-style macros, and rewrite day-of-week ``7`` (Sunday) to
    ``0`` because Celery refuses 7. Anything that does not look like a
    5-field expression is returned collapsed so :func:`validate_cron` can say
    what is wrong with it.
    """
    collapsed = " ".join(expr.split()).lower()
    collapsed = _MACROS.get(collapsed, collapsed)
    fields = collapsed.split(" ")
    if len(fields) != 5:
        return collapsed
    fields[_DOW] = ",".join(_sunday_as_zero(term) for term in fields[_DOW].split(","))
    return " ".join(fields)


def _sunday_as_zero(term: str) -> str:
    m = _TERM_RE.match(term)
    if m is None or m["star"]:
        # "*/n" walks 0..6 in Celery and 0..7 in cronsim; 7 is Sunday again, so
        # both fire on the same days and no rewrite is needed.
        return term
    lo, hi, step = m["lo"], m["hi"], m["step"]
    if hi is None:
        return "0" if lo == "7" and step is None else term
    # People write "mon-sun" for Monday through Sunday, so "sun" at the end of a
    # range means 7 there, exactly like a numeric 7.
    end_is_sunday = hi == "7" or (hi == "sun" and lo not in ("0", "sun"))
    if not end_is_sunday:
        return term
    if step is not None:
        start = _DAY_NAMES[lo] if lo in _DAY_NAMES else int(lo) if lo.isdigit() else None
        if start is None or start > 7 or int(step) == 0:
            return term
        days = sorted({d % 7 for d in range(start, 8, int(step))})
        return ",".join(str(d) for d in days)
    names = lo in _DAY_NAMES
    if lo in ("0", "sun"):
        return "sun-sat" if names else "0-6"
    if lo == "7":
        return "0"
    if lo in ("6", "sat"):
        return "sat,sun" if names else "6,0"
    return f"{lo}-sat,sun" if names else f"{lo}-6,0"


def validate_cron(expr: str) -> str:
    """Return the normalized expression, or raise :class:`CronError`.

    Steps: normalize; check the field count; parse each field with messages
    that name the field and value; refuse day-of-month AND day-of-week both
    restricted; refuse schedules that never fire; then let cronsim and Celery's
    own ``crontab`` parser have the last word, since what they refuse cannot be
    previewed or scheduled.
    """
    normalized = normalize_cron(expr)
    if normalized == "":
        raise CronError("Cron expression is empty.")
    if normalized.startswith("@"):
        known = ", ".join(sorted(_MACROS))
        raise CronError(
            f"'{normalized}' is not a schedule Recotem can run; use 5 fields or one of {known}."
        )
    fields = normalized.split(" ")
    if len(fields) != 5:
        hint = " (seconds and year fields are not supported)" if len(fields) > 5 else ""
        raise CronError(
            f"Expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}{hint}."
        )

    sets = [_parse_field(i, value) for i, value in enumerate(fields)]

    if fields[_DOM] != "*" and fields[_DOW] != "*":
        raise CronError(
            f"day-of-month ({fields[_DOM]}) and day-of-week ({fields[_DOW]}) are both restricted. "
            "Standard cron runs when EITHER matches, but Celery beat runs only when BOTH match, "
            "so the schedule would not do what it says. Restrict only one of them (set the other "
            "to *), or create two schedules."
        )
    _check_day_exists(sets[_DOM], sets[_MONTH])

    try:
        next(CronSim(normalized, datetime(2000, 1, 1)))
    except (CronSimError, StopIteration) as exc:
        raise CronError(
            f"'{normalized}' is not a valid cron expression ({exc or 'it never fires'})."
        ) from exc
    try:
        crontab(**dict(zip(CELERY_KEYS, fields, strict=True)))
    except (ValueError, ParseException) as exc:
        raise CronError(f"Celery beat cannot run '{normalized}': {exc}") from exc
    return normalized


def _parse_field(index: int, value: str) -> set[int]:
    """Return the values a field matches, with a user-facing error otherwise."""
    name = FIELD_NAMES[index]
    lo_bound, hi_bound = _BOUNDS[index]
    if index == _DOW:
        hi_bound = 6  # normalize_cron has already turned every usable 7 into 0
    if value == "":
        raise CronError(f"{name} field is empty.")
    result: set[int] = set()
    for term in value.split(","):
        if _UNSUPPORTED_RE.match(term):
            raise CronError(
                f"{name} field: '{term}' uses L, W, # or ?, which Celery beat does not support."
            )
        m = _TERM_RE.match(term)
        if m is None:
            raise CronError(f"{name} field: '{term}' is not a number, name, range or step.")
        step = 1
        if m["step"] is not None:
            step = int(m["step"])
            if step == 0:
                raise CronError(f"{name} field: step 0 in '{term}' is not allowed.")
        if m["star"]:
            lo, hi = lo_bound, hi_bound
        else:
            if m["hi"] is None and m["step"] is not None:
                raise CronError(
                    f"{name} field: '{term}' needs a range before the step for Celery beat, "
                    f"e.g. {m['lo']}-{hi_bound}/{m['step']}."
                )
            lo = _parse_value(index, m["lo"], lo_bound, hi_bound)
            hi = lo if m["hi"] is None else _parse_value(index, m["hi"], lo_bound, hi_bound)
            if hi < lo:
                raise CronError(
                    f"{name} field: range {m['lo']}-{m['hi']} goes backwards; write it as two ranges."
                )
        result.update(range(lo, hi + 1, step))
    return result


def _parse_value(index: int, token: str, lo: int, hi: int) -> int:
    name = FIELD_NAMES[index]
    names = _NAMES[index]
    if token in names:
        return names[token]
    if not token.isdigit():
        if names:
            allowed = ", ".join(names)
            raise CronError(f"{name} field: '{token}' is not a number or one of {allowed}.")
        raise CronError(f"{name} field: '{token}' is not a number.")
    number = int(token)
    if not lo <= number <= hi:
        sunday = " (use 0 for Sunday)" if index == _DOW and number == 7 else ""
        raise CronError(f"{name} field: {number} is out of range {lo}-{hi}{sunday}.")
    return number


def _check_day_exists(days: set[int], months: set[int]) -> None:
    # Catch "0 0 30 2 *" here so the message says why, not just "Bad day-of-month".
    longest = max(_MAX_DAYS[m - 1] for m in months)
    if min(days) > longest:
        month_names = ", ".join(calendar.month_name[m] for m in sorted(months))
        raise CronError(
            f"day-of-month field: day {min(days)} never occurs in {month_names}, so this schedule never fires."
        )


def describe_cron(expr: str) -> str:
    """Describe a valid expression in English with 24-hour times.

    Example: ``"0 2 * * 0"`` gives ``"At 02:00, only on Sunday"``.
    Raises :class:`CronError` for invalid input.
    """
    normalized = validate_cron(expr)
    options = Options()
    options.use_24hour_time_format = True
    options.day_of_week_start_index_zero = True
    try:
        return str(ExpressionDescriptor(normalized, options).get_description())
    except FormatException as exc:  # validate_cron accepted it, so this is a library gap
        raise CronError(f"Cannot describe '{normalized}': {exc}") from exc


def next_runs(expr: str, tz: str, n: int = 5, after: datetime | None = None) -> list[datetime]:
    """Return the next ``n`` fire times after ``after`` as aware datetimes in ``tz``.

    Celery beat compares naive wall-clock times and attaches the zone with
    ``fold=0`` (verified by stepping ``crontab.is_due`` minute by minute across
    Berlin and New York transitions), which differs from cronsim's Debian-cron
    DST handling. So the wall-clock matches come from cronsim on naive
    datetimes and are then converted the way Celery does:

    1. Start 26 h of wall-clock time before ``after``: a skipped wall time is
       pushed forward by the DST gap (or a whole day when a zone jumped the
       date line), so an earlier wall time can still fire after ``after``.
    2. Convert each match with ``replace(tzinfo=zone)`` and keep those later than
       ``after``; duplicates collapse (03:00 and skipped 02:00 are one run).
    3. Stop once a match maps more than 26 h past the n-th candidate: no later
       wall time can map before it.

    ``after`` defaults to now and must be timezone-aware.
    """
    normalized = validate_cron(expr)
    zone = zoneinfo.ZoneInfo(validate_timezone(tz))
    if n <= 0:
        return []
    if after is None:
        after = datetime.now(UTC)
    elif after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("after must be a timezone-aware datetime")
    after_utc = after.astimezone(UTC)

    start_wall = after_utc.astimezone(zone).replace(tzinfo=None) - _MAX_OFFSET_SPREAD
    # The n earliest fire times seen so far, kept sorted and capped at n.
    found: list[datetime] = []
    for wall in CronSim(normalized, start_wall):
        fire = wall.replace(tzinfo=zone).astimezone(UTC)
        if len(found) == n and fire > found[-1] + _MAX_OFFSET_SPREAD:
            break
        if fire > after_utc and fire not in found:
            bisect.insort(found, fire)
            del found[n:]
    return [fire.astimezone(zone) for fire in found]


def latest_run(
    expr: str, tz: str, *, now: datetime, after: datetime | None = None
) -> datetime | None:
    """The latest fire time in ``(after, now]`` (``after`` None: the last 24 hours), or None.

    What a scheduler owes after a pause: one run, for the most recent missed instant, not a
    burst of catch-up runs. Uses the same instants as :func:`next_runs` (so as the preview).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    floor = now - timedelta(days=1)
    cursor = floor if after is None or after < floor else after
    latest: datetime | None = None
    while True:
        batch = next_runs(expr, tz, n=64, after=cursor)
        for fire in batch:
            if fire > now:
                return latest
            latest = fire
        if len(batch) < 64:
            return latest
        cursor = batch[-1]


def celery_crontab_fields(expr: str) -> dict[str, str]:
    """Return the ``CrontabSchedule`` / ``celery.schedules.crontab`` keyword fields.

    Keys: minute, hour, day_of_month, month_of_year, day_of_week. Values are the
    normalized field strings (so ``7`` is already ``0``). Raises :class:`CronError`.
    """
    return dict(zip(CELERY_KEYS, validate_cron(expr).split(" "), strict=True))


@functools.cache
def _all_timezones() -> frozenset[str]:
    # available_timezones() walks the tzdata tree on every call; cache it.
    return frozenset(zoneinfo.available_timezones())


def validate_timezone(name: str) -> str:
    """Return ``name`` if it is an IANA time zone, else raise :class:`TimezoneError`."""
    stripped = name.strip()
    if stripped not in _all_timezones():
        raise TimezoneError(f"Unknown time zone '{name}'")
    return stripped
