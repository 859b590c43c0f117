from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from celery import Celery
from celery.schedules import crontab
from cronsim import CronSim

from recotem.lib.cron import (
    CronError,
    TimezoneError,
    celery_crontab_fields,
    describe_cron,
    next_runs,
    normalize_cron,
    validate_cron,
    validate_timezone,
)


def _error(expr: str) -> str:
    with pytest.raises(CronError) as info:
        validate_cron(expr)
    return str(info.value)


def test_it_names_the_field_and_value_out_of_range() -> None:
    assert _error("99 * * * *") == "minute field: 99 is out of range 0-59."
    assert "hour field: 24 is out of range 0-23" in _error("0 24 * * *")
    assert "day-of-month field: 0 is out of range 1-31" in _error("0 0 0 * *")
    assert "day-of-week field: 8 is out of range 0-6" in _error("0 0 * * 8")


def test_it_normalizes_sunday_seven_to_zero() -> None:
    assert validate_cron("0 2 * * 7") == "0 2 * * 0"
    assert celery_crontab_fields("0 2 * * 7")["day_of_week"] == "0"


def test_it_rewrites_ranges_and_steps_ending_on_sunday_seven() -> None:
    assert normalize_cron("0 2 * * 5-7") == "0 2 * * 5-6,0"
    assert normalize_cron("0 2 * * 6-7") == "0 2 * * 6,0"
    assert normalize_cron("0 2 * * 0-7") == "0 2 * * 0-6"
    assert normalize_cron("0 2 * * 1,7") == "0 2 * * 1,0"
    assert normalize_cron("0 2 * * 1-7/2") == "0 2 * * 0,1,3,5"
    assert normalize_cron("0 2 * * mon-sun") == "0 2 * * mon-sat,sun"
    # Every rewrite must still pass Celery's parser.
    for expr in ("0 2 * * 5-7", "0 2 * * 6-7", "0 2 * * 1-7/2", "0 2 * * mon-sun"):
        validate_cron(expr)


def test_it_trims_collapses_whitespace_and_lowercases() -> None:
    assert normalize_cron("  0\t2  *  * SUN ") == "0 2 * * sun"


def test_it_accepts_day_and_month_names() -> None:
    assert validate_cron("0 2 * * sun") == "0 2 * * sun"
    assert validate_cron("0 0 1 JAN *") == "0 0 1 jan *"
    assert validate_cron("0 9 * jan-mar mon-fri") == "0 9 * jan-mar mon-fri"
    assert "not a number or one of jan" in _error("0 0 * foo *")


def test_it_accepts_steps_ranges_and_lists() -> None:
    for expr in ("*/15 * * * *", "0 9-17 * * *", "0,30 8,20 * * *", "1-30/5 */2 1,15 * *"):
        assert validate_cron(expr) == expr


def test_it_rejects_syntax_celery_does_not_support() -> None:
    assert "needs a range before the step" in _error("5/15 * * * *")
    assert "L, W, # or ?" in _error("0 0 L * *")
    assert "L, W, # or ?" in _error("0 0 * * 1#2")
    assert "goes backwards" in _error("0 22-2 * * *")
    assert "step 0" in _error("*/0 * * * *")


def test_it_rejects_both_day_fields_restricted() -> None:
    message = _error("0 0 1 * mon")
    assert "day-of-month (1) and day-of-week (mon) are both restricted" in message
    assert "Celery beat runs only when BOTH match" in message
    assert "two schedules" in message
    # A full-range value is still "restricted" for cron's OR rule, so only * counts.
    assert "both restricted" in _error("0 0 1-31 * 1")


def test_it_rejects_schedules_that_never_fire() -> None:
    assert "day 30 never occurs in February" in _error("0 0 30 2 *")
    assert "never occurs" in _error("0 0 31 4,6 *")
    # Leap days do fire.
    assert validate_cron("0 0 29 2 *") == "0 0 29 2 *"


def test_it_rejects_wrong_field_counts() -> None:
    assert "Expected 5 fields" in _error("* * * *")
    assert "got 4" in _error("* * * *")
    assert "seconds and year fields are not supported" in _error("0 0 2 * * *")
    assert "empty" in _error("   ")


def test_it_translates_macros_and_rejects_reboot() -> None:
    assert validate_cron("@daily") == "0 0 * * *"
    assert validate_cron("@WEEKLY") == "0 0 * * 0"
    assert validate_cron("@hourly") == "0 * * * *"
    assert "not a schedule" in _error("@reboot")


def test_it_describes_in_24_hour_words() -> None:
    assert describe_cron("0 2 * * 7") == "At 02:00, only on Sunday"
    assert describe_cron("0 2 * * sun") == "At 02:00, only on Sunday"
    assert describe_cron("30 14 1 * *") == "At 14:30, on day 1 of the month"
    with pytest.raises(CronError):
        describe_cron("99 * * * *")


def test_it_returns_store_ready_celery_fields() -> None:
    assert celery_crontab_fields(" */15  9-17 * * mon-fri ") == {
        "minute": "*/15",
        "hour": "9-17",
        "day_of_month": "*",
        "month_of_year": "*",
        "day_of_week": "mon-fri",
    }


def test_it_lists_next_runs_in_tokyo() -> None:
    after = datetime(2025, 1, 1, 0, 0, tzinfo=UTC)  # 09:00 in Tokyo
    runs = next_runs("0 2 * * *", "Asia/Tokyo", n=3, after=after)
    tokyo = ZoneInfo("Asia/Tokyo")
    assert runs == [datetime(2025, 1, d, 2, 0, tzinfo=tokyo) for d in (2, 3, 4)]
    assert all(r.tzinfo == tokyo for r in runs)
    assert runs[0].astimezone(UTC) == datetime(2025, 1, 1, 17, 0, tzinfo=UTC)


def test_it_defaults_after_to_now() -> None:
    with time_machine.travel(datetime(2025, 6, 1, 12, 0, tzinfo=UTC), tick=False):
        assert next_runs("0 * * * *", "UTC", n=1) == [datetime(2025, 6, 1, 13, 0, tzinfo=UTC)]


def test_it_starts_strictly_after_the_given_time() -> None:
    after = datetime(2025, 6, 1, 2, 0, tzinfo=UTC)
    assert next_runs("0 2 * * *", "UTC", n=1, after=after)[0].day == 2


def test_it_handles_spring_forward_like_celery() -> None:
    # 2025-03-30 02:30 does not exist in Berlin; beat fires it at 03:30 CEST.
    berlin = ZoneInfo("Europe/Berlin")
    after = datetime(2025, 3, 29, 12, 0, tzinfo=berlin)
    runs = next_runs("30 2 * * *", "Europe/Berlin", n=3, after=after)
    assert [r.isoformat() for r in runs] == [
        "2025-03-30T03:30:00+02:00",
        "2025-03-31T02:30:00+02:00",
        "2025-04-01T02:30:00+02:00",
    ]


def test_it_handles_fall_back_like_celery() -> None:
    # 01:30 happens twice in New York on 2025-11-02; beat fires only the first.
    after = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)
    runs = next_runs("30 1 * * *", "America/New_York", n=2, after=after)
    assert [r.isoformat() for r in runs] == [
        "2025-11-02T01:30:00-04:00",
        "2025-11-03T01:30:00-05:00",
    ]
    hourly = next_runs(
        "0 * * * *", "America/New_York", n=3, after=datetime(2025, 11, 2, 4, 30, tzinfo=UTC)
    )
    assert [r.isoformat() for r in hourly] == [
        "2025-11-02T01:00:00-04:00",
        "2025-11-02T02:00:00-05:00",
        "2025-11-02T03:00:00-05:00",
    ]


def test_it_rejects_naive_after_and_bad_timezone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_runs("0 * * * *", "UTC", after=datetime(2025, 1, 1))
    with pytest.raises(TimezoneError):
        next_runs("0 * * * *", "Mars/Olympus")


def test_it_validates_timezones() -> None:
    assert validate_timezone("Asia/Tokyo") == "Asia/Tokyo"
    assert validate_timezone("UTC") == "UTC"
    with pytest.raises(TimezoneError) as info:
        validate_timezone("Mars/Olympus")
    assert str(info.value) == "Unknown time zone 'Mars/Olympus'"
    assert issubclass(TimezoneError, ValueError)


AGREEMENT_EXPRESSIONS = [
    "*/15 9-17 * * mon-fri",
    "0 2 * * 7",
    "30 2 * * *",
    "0 */6 1,15 * *",
    "5 4 * jan-mar 5-7",
    "0 0 29 2 *",
]


@pytest.mark.parametrize("expr", AGREEMENT_EXPRESSIONS)
def test_it_gives_celery_and_cronsim_the_same_field_sets(expr: str) -> None:
    fields = celery_crontab_fields(expr)
    schedule = crontab(**fields)
    sim = CronSim(validate_cron(expr), datetime(2000, 1, 1))
    assert schedule.minute == sim.minutes
    assert schedule.hour == sim.hours
    assert schedule.day_of_month == sim.days
    assert schedule.month_of_year == sim.months
    assert schedule.day_of_week == {d % 7 for d in sim.weekdays if isinstance(d, int)}


def _beat_fire_times(expr: str, tz: str, start: datetime, minutes: int) -> list[datetime]:
    """Step Celery's own is_due minute by minute, as beat's loop does."""
    zone = ZoneInfo(tz)
    app = Celery(set_as_current=False)
    app.conf.timezone = tz
    clock = {"now": start}
    schedule = crontab(app=app, nowfun=lambda: clock["now"], **celery_crontab_fields(expr))
    last = start.astimezone(zone)
    fired = []
    for minute in range(1, minutes):
        clock["now"] = (start + timedelta(minutes=minute)).astimezone(zone)
        due, _ = schedule.is_due(last)
        if due:
            fired.append(clock["now"])
            last = clock["now"]
    return fired


@pytest.mark.parametrize(
    ("expr", "tz", "start"),
    [
        ("30 2 * * *", "Europe/Berlin", datetime(2025, 3, 29, 12, tzinfo=UTC)),
        ("*/30 * * * *", "Europe/Berlin", datetime(2025, 3, 29, 12, tzinfo=UTC)),
        ("0 * * * *", "America/New_York", datetime(2025, 11, 1, 12, tzinfo=UTC)),
        ("15 1-3 * * *", "America/New_York", datetime(2025, 11, 1, 12, tzinfo=UTC)),
        ("0 2 * * 7", "Asia/Tokyo", datetime(2025, 1, 4, 0, tzinfo=UTC)),
    ],
)
def test_it_previews_exactly_what_celery_beat_fires(expr: str, tz: str, start: datetime) -> None:
    minutes = 60 * 24 * 2
    fired = _beat_fire_times(expr, tz, start, minutes)
    end = start + timedelta(minutes=minutes)
    preview = [r for r in next_runs(expr, tz, n=len(fired) + 1, after=start) if r < end]
    assert fired
    assert preview == fired
