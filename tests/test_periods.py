"""Unit tests for pointsd.service.rules.periods: calendar periods in a tenant's
zone (G11).

Pure: fixed instants, no clock. Expected values are written out by hand
(calendar facts), not recomputed with the code under test.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from pointsd.service.domain import Period, PeriodRef
from pointsd.service.rules.periods import (
    local_date,
    period_bounds,
    period_key,
    period_ref,
    shift_period,
)

UTC_TZ = ZoneInfo("UTC")
SHANGHAI = ZoneInfo("Asia/Shanghai")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
NEW_YORK = ZoneInfo("America/New_York")

HOUR_S = 3600
DAY_S = 86_400


def utc_ms(text: str) -> int:
    """Unix milliseconds of a naive ISO date-time read as UTC."""
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def utc_s(text: str) -> int:
    return utc_ms(text) // 1000


# ---------------------------------------------------------------------------
# local_date / period_key: one instant, several zones


# 17:30Z is 01:30 the next day in Shanghai (UTC+8) and 09:30 the same day in
# Los Angeles (UTC-8 in November).
EVENING_UTC = utc_ms("2026-11-22T17:30:00")
# 03:00Z is 11:00 in Shanghai, 03:00 in UTC and 19:00 the previous day in LA.
EARLY_UTC = utc_ms("2026-11-23T03:00:00")


@pytest.mark.parametrize(
    ("at_ms", "tz", "expected"),
    [
        (EVENING_UTC, SHANGHAI, date(2026, 11, 23)),
        (EVENING_UTC, UTC_TZ, date(2026, 11, 22)),
        (EVENING_UTC, LOS_ANGELES, date(2026, 11, 22)),
        (EARLY_UTC, SHANGHAI, date(2026, 11, 23)),
        (EARLY_UTC, UTC_TZ, date(2026, 11, 23)),
        (EARLY_UTC, LOS_ANGELES, date(2026, 11, 22)),
    ],
)
def test_local_date_depends_on_the_zone(at_ms: int, tz: ZoneInfo, expected: date) -> None:
    assert local_date(at_ms, tz) == expected


@pytest.mark.parametrize(
    ("at_ms", "tz", "expected"),
    [
        # Shanghai midnight is 16:00Z the day before.
        (utc_ms("2026-11-22T15:59:59.999"), SHANGHAI, date(2026, 11, 22)),
        (utc_ms("2026-11-22T16:00:00"), SHANGHAI, date(2026, 11, 23)),
        # UTC midnight.
        (utc_ms("2026-11-22T23:59:59.999"), UTC_TZ, date(2026, 11, 22)),
        (utc_ms("2026-11-23T00:00:00"), UTC_TZ, date(2026, 11, 23)),
        # Los Angeles midnight is 08:00Z (PST).
        (utc_ms("2026-11-23T07:59:59.999"), LOS_ANGELES, date(2026, 11, 22)),
        (utc_ms("2026-11-23T08:00:00"), LOS_ANGELES, date(2026, 11, 23)),
        # ...and 07:00Z in summer (PDT).
        (utc_ms("2026-07-01T06:59:59.999"), LOS_ANGELES, date(2026, 6, 30)),
        (utc_ms("2026-07-01T07:00:00"), LOS_ANGELES, date(2026, 7, 1)),
    ],
)
def test_local_date_flips_exactly_at_local_midnight(
    at_ms: int, tz: ZoneInfo, expected: date
) -> None:
    assert local_date(at_ms, tz) == expected


@pytest.mark.parametrize(
    ("tz", "day", "week", "month"),
    [
        (SHANGHAI, "2026-11-23", "2026-W48", "2026-11"),
        (UTC_TZ, "2026-11-22", "2026-W47", "2026-11"),
        (LOS_ANGELES, "2026-11-22", "2026-W47", "2026-11"),
    ],
)
def test_period_keys_for_one_instant_in_three_zones(
    tz: ZoneInfo, day: str, week: str, month: str
) -> None:
    assert period_key(Period.DAY, EVENING_UTC, tz) == day
    assert period_key(Period.WEEK, EVENING_UTC, tz) == week
    assert period_key(Period.MONTH, EVENING_UTC, tz) == month
    assert period_key(Period.EVER, EVENING_UTC, tz) == "all"


def test_month_key_differs_between_zones_at_a_month_boundary() -> None:
    # 2026-11-30T20:00Z is already December 1st in Shanghai.
    at = utc_ms("2026-11-30T20:00:00")
    assert period_key(Period.MONTH, at, SHANGHAI) == "2026-12"
    assert period_key(Period.MONTH, at, UTC_TZ) == "2026-11"
    assert period_key(Period.MONTH, at, LOS_ANGELES) == "2026-11"


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2026-01-05T10:00:00", "2026-01-05"),
        ("2026-11-09T00:00:00", "2026-11-09"),
        ("2026-12-31T23:59:59", "2026-12-31"),
    ],
)
def test_day_keys_are_iso_dates(local: str, expected: str) -> None:
    assert period_key(Period.DAY, utc_ms(local), UTC_TZ) == expected


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2026-01-05T10:00:00", "2026-01"),
        ("2026-09-30T23:59:59", "2026-09"),
        ("2026-10-01T00:00:00", "2026-10"),
        ("2026-12-31T23:59:59", "2026-12"),
        ("2027-01-01T00:00:00", "2027-01"),
    ],
)
def test_month_keys_are_zero_padded(local: str, expected: str) -> None:
    assert period_key(Period.MONTH, utc_ms(local), UTC_TZ) == expected


# ---------------------------------------------------------------------------
# ISO weeks


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2026-11-22T23:59:59", "2026-W47"),  # a Sunday ends week 47
        ("2026-11-23T00:00:00", "2026-W48"),  # Monday starts week 48
        ("2026-01-05T12:00:00", "2026-W02"),  # zero-padded week number
        # 2026 starts on a Thursday, so it has 53 ISO weeks; Jan 1-3 2027 still
        # belong to 2026's week 53.
        ("2026-12-31T12:00:00", "2026-W53"),
        ("2027-01-01T12:00:00", "2026-W53"),
        ("2027-01-03T23:59:59", "2026-W53"),
        ("2027-01-04T00:00:00", "2027-W01"),
        # Week 1 of 2026 starts on Monday 2025-12-29.
        ("2025-12-28T23:59:59", "2025-W52"),
        ("2025-12-29T00:00:00", "2026-W01"),
        ("2025-12-31T12:00:00", "2026-W01"),
        ("2026-01-01T12:00:00", "2026-W01"),
        # Week 1 of 2025 starts on Monday 2024-12-30.
        ("2024-12-31T12:00:00", "2025-W01"),
    ],
)
def test_iso_week_keys_at_year_boundaries(local: str, expected: str) -> None:
    assert period_key(Period.WEEK, utc_ms(local), UTC_TZ) == expected


def test_week_bounds_across_the_year_end_span_monday_to_monday() -> None:
    start, end = period_bounds(Period.WEEK, utc_ms("2027-01-01T12:00:00"), UTC_TZ)
    assert start == utc_s("2026-12-28T00:00:00")
    assert end == utc_s("2027-01-04T00:00:00")


def test_week_1_starting_in_december_has_december_bounds() -> None:
    start, end = period_bounds(Period.WEEK, utc_ms("2026-01-01T12:00:00"), UTC_TZ)
    assert start == utc_s("2025-12-29T00:00:00")
    assert end == utc_s("2026-01-05T00:00:00")


def test_week_starts_at_local_monday_midnight() -> None:
    start, end = period_bounds(Period.WEEK, EVENING_UTC, SHANGHAI)
    # Monday 2026-11-23 00:00 in Shanghai is Sunday 16:00Z.
    assert start == utc_s("2026-11-22T16:00:00")
    assert end == utc_s("2026-11-29T16:00:00")


# ---------------------------------------------------------------------------
# period_bounds: lengths of days and months


@pytest.mark.parametrize(
    ("month_start", "next_month_start", "days"),
    [
        ("2026-01-01", "2026-02-01", 31),
        ("2026-02-01", "2026-03-01", 28),
        ("2024-02-01", "2024-03-01", 29),  # leap year
        ("2000-02-01", "2000-03-01", 29),  # divisible by 400: leap
        ("2100-02-01", "2100-03-01", 28),  # divisible by 100 only: not leap
        ("2026-04-01", "2026-05-01", 30),
        ("2026-11-01", "2026-12-01", 30),
        ("2026-12-01", "2027-01-01", 31),  # rolls over the year
    ],
)
def test_month_bounds_and_lengths(month_start: str, next_month_start: str, days: int) -> None:
    start_s = utc_s(month_start + "T00:00:00")
    end_s = utc_s(next_month_start + "T00:00:00")
    for at_ms in (start_s * 1000, (start_s + 15 * DAY_S) * 1000, end_s * 1000 - 1):
        assert period_bounds(Period.MONTH, at_ms, UTC_TZ) == (start_s, end_s)
    assert end_s - start_s == days * DAY_S


def test_february_29_is_in_february_of_a_leap_year() -> None:
    at = utc_ms("2024-02-29T23:00:00")
    assert period_key(Period.MONTH, at, UTC_TZ) == "2024-02"
    assert period_key(Period.DAY, at, UTC_TZ) == "2024-02-29"
    assert period_key(Period.MONTH, at + HOUR_S * 1000, UTC_TZ) == "2024-03"


@pytest.mark.parametrize(
    ("at", "start", "end", "hours"),
    [
        # Spring forward: 2026-03-08 02:00 EST -> 03:00 EDT, a 23-hour day.
        (
            "2026-03-08T12:00:00",
            "2026-03-08T05:00:00",
            "2026-03-09T04:00:00",
            23,
        ),
        # Fall back: 2026-11-01 02:00 EDT -> 01:00 EST, a 25-hour day.
        (
            "2026-11-01T12:00:00",
            "2026-11-01T04:00:00",
            "2026-11-02T05:00:00",
            25,
        ),
        # An ordinary day just after, 24 hours.
        (
            "2026-11-02T12:00:00",
            "2026-11-02T05:00:00",
            "2026-11-03T05:00:00",
            24,
        ),
    ],
)
def test_dst_days_in_new_york(at: str, start: str, end: str, hours: int) -> None:
    bounds = period_bounds(Period.DAY, utc_ms(at), NEW_YORK)
    assert bounds == (utc_s(start), utc_s(end))
    assert bounds[1] - bounds[0] == hours * HOUR_S


def test_instant_inside_the_repeated_hour_belongs_to_the_fall_back_day() -> None:
    # 05:30Z on 2026-11-01 is 01:30 EST, the second 01:30 of that day.
    bounds = period_bounds(Period.DAY, utc_ms("2026-11-01T05:30:00"), NEW_YORK)
    assert bounds == (utc_s("2026-11-01T04:00:00"), utc_s("2026-11-02T05:00:00"))


def test_dst_week_and_month_in_new_york_lose_an_hour() -> None:
    at = utc_ms("2026-03-10T12:00:00")
    w_start, w_end = period_bounds(Period.WEEK, at, NEW_YORK)
    assert (w_start, w_end) == (utc_s("2026-03-09T04:00:00"), utc_s("2026-03-16T04:00:00"))
    # The week of the switch itself (Mon 2026-03-02 .. Mon 2026-03-09).
    prev = period_bounds(Period.WEEK, utc_ms("2026-03-05T12:00:00"), NEW_YORK)
    assert prev == (utc_s("2026-03-02T05:00:00"), utc_s("2026-03-09T04:00:00"))
    assert prev[1] - prev[0] == 7 * DAY_S - HOUR_S
    m_start, m_end = period_bounds(Period.MONTH, at, NEW_YORK)
    assert (m_start, m_end) == (utc_s("2026-03-01T05:00:00"), utc_s("2026-04-01T04:00:00"))
    assert m_end - m_start == 31 * DAY_S - HOUR_S


@pytest.mark.parametrize("kind", [Period.DAY, Period.WEEK, Period.MONTH])
@pytest.mark.parametrize("tz", [UTC_TZ, SHANGHAI, LOS_ANGELES, NEW_YORK])
def test_bounds_contain_the_instant_and_are_contiguous(kind: Period, tz: ZoneInfo) -> None:
    at = EVENING_UTC
    start, end = period_bounds(kind, at, tz)
    assert start * 1000 <= at < end * 1000
    # The next period starts where this one ends, the previous ends where it starts.
    assert period_bounds(kind, end * 1000, tz)[0] == end
    assert period_bounds(kind, start * 1000 - 1, tz)[1] == start
    # Key is constant across the period and changes at its edges.
    key = period_key(kind, at, tz)
    assert period_key(kind, start * 1000, tz) == key
    assert period_key(kind, end * 1000 - 1, tz) == key
    assert period_key(kind, end * 1000, tz) != key
    assert period_key(kind, start * 1000 - 1, tz) != key


def test_ever_has_no_calendar_bounds() -> None:
    with pytest.raises(ValueError, match="no calendar bounds"):
        period_bounds(Period.EVER, EVENING_UTC, UTC_TZ)


# ---------------------------------------------------------------------------
# period_ref: key and expiry


RETENTION_S = 8 * DAY_S


@pytest.mark.parametrize(
    ("kind", "tz", "key", "end"),
    [
        (Period.DAY, SHANGHAI, "2026-11-23", "2026-11-23T16:00:00"),
        (Period.DAY, UTC_TZ, "2026-11-22", "2026-11-23T00:00:00"),
        (Period.DAY, LOS_ANGELES, "2026-11-22", "2026-11-23T08:00:00"),
        (Period.WEEK, SHANGHAI, "2026-W48", "2026-11-29T16:00:00"),
        (Period.WEEK, UTC_TZ, "2026-W47", "2026-11-23T00:00:00"),
        (Period.MONTH, SHANGHAI, "2026-11", "2026-11-30T16:00:00"),
        (Period.MONTH, LOS_ANGELES, "2026-11", "2026-12-01T08:00:00"),
    ],
)
def test_period_ref_expires_retention_after_the_period_ends(
    kind: Period, tz: ZoneInfo, key: str, end: str
) -> None:
    ref = period_ref(kind, EVENING_UTC, tz, RETENTION_S)
    assert ref == PeriodRef(kind, key, utc_s(end) + RETENTION_S)


def test_period_ref_with_zero_retention_expires_at_period_end() -> None:
    ref = period_ref(Period.DAY, EVENING_UTC, UTC_TZ, 0)
    assert ref.expires_at_s == utc_s("2026-11-23T00:00:00")
    assert ref.expires_at_s == period_bounds(Period.DAY, EVENING_UTC, UTC_TZ)[1]


def test_period_ref_expiry_follows_a_25_hour_dst_day() -> None:
    ref = period_ref(Period.DAY, utc_ms("2026-11-01T12:00:00"), NEW_YORK, 60)
    assert ref.key == "2026-11-01"
    assert ref.expires_at_s == utc_s("2026-11-02T05:00:00") + 60


@pytest.mark.parametrize("tz", [UTC_TZ, SHANGHAI, LOS_ANGELES])
@pytest.mark.parametrize("retention", [0, 3600, RETENTION_S])
def test_ever_is_all_and_never_expires(tz: ZoneInfo, retention: int) -> None:
    ref = period_ref(Period.EVER, EVENING_UTC, tz, retention)
    assert ref == PeriodRef(Period.EVER, "all", 0)


def test_ever_key_is_the_same_for_any_instant() -> None:
    assert period_key(Period.EVER, 0, UTC_TZ) == "all"
    assert period_key(Period.EVER, utc_ms("2099-12-31T23:00:00"), SHANGHAI) == "all"


# ---------------------------------------------------------------------------
# shift_period


@pytest.mark.parametrize(
    ("kind", "offset", "expected"),
    [
        (Period.DAY, 1, "2026-11-22"),
        (Period.DAY, 2, "2026-11-21"),
        (Period.DAY, 13, "2026-11-10"),
        (Period.WEEK, 1, "2026-W47"),
        (Period.WEEK, 2, "2026-W46"),
        (Period.WEEK, 13, "2026-W35"),
        (Period.MONTH, 1, "2026-10"),
        (Period.MONTH, 2, "2026-09"),
        (Period.MONTH, 13, "2025-10"),
    ],
)
def test_shift_period_back_lands_in_the_expected_period(
    kind: Period, offset: int, expected: str
) -> None:
    # Day 2026-11-23, week 2026-W48, month 2026-11 in Shanghai.
    shifted = shift_period(kind, EVENING_UTC, SHANGHAI, offset)
    assert period_key(kind, shifted, SHANGHAI) == expected
    start, end = period_bounds(kind, shifted, SHANGHAI)
    assert start * 1000 <= shifted < end * 1000
    assert shifted < EVENING_UTC


@pytest.mark.parametrize(
    ("kind", "at", "tz", "offset", "expected"),
    [
        # Over a year end.
        (Period.DAY, "2027-01-01T12:00:00", UTC_TZ, 1, "2026-12-31"),
        (Period.WEEK, "2027-01-05T12:00:00", UTC_TZ, 1, "2026-W53"),
        (Period.WEEK, "2027-01-05T12:00:00", UTC_TZ, 2, "2026-W52"),
        (Period.MONTH, "2027-01-15T12:00:00", UTC_TZ, 1, "2026-12"),
        # From the last day of a long month into February (no day clamping bug).
        (Period.MONTH, "2026-03-31T12:00:00", UTC_TZ, 1, "2026-02"),
        (Period.MONTH, "2024-03-31T12:00:00", UTC_TZ, 1, "2024-02"),
        (Period.DAY, "2024-03-01T12:00:00", UTC_TZ, 1, "2024-02-29"),
        # Over DST changes in New York.
        (Period.DAY, "2026-03-09T14:00:00", NEW_YORK, 1, "2026-03-08"),
        (Period.DAY, "2026-03-09T14:00:00", NEW_YORK, 2, "2026-03-07"),
        (Period.DAY, "2026-11-02T14:00:00", NEW_YORK, 1, "2026-11-01"),
        (Period.DAY, "2026-11-02T14:00:00", NEW_YORK, 2, "2026-10-31"),
        # Local date differs from the UTC date.
        (Period.DAY, "2026-11-23T03:00:00", LOS_ANGELES, 1, "2026-11-21"),
    ],
)
def test_shift_period_edge_cases(
    kind: Period, at: str, tz: ZoneInfo, offset: int, expected: str
) -> None:
    assert period_key(kind, shift_period(kind, utc_ms(at), tz, offset), tz) == expected


@pytest.mark.parametrize("kind", [Period.DAY, Period.WEEK, Period.MONTH, Period.EVER])
def test_shift_period_by_zero_is_the_same_instant(kind: Period) -> None:
    assert shift_period(kind, EVENING_UTC, SHANGHAI, 0) == EVENING_UTC


@pytest.mark.parametrize("offset", [1, 5, 100])
def test_shift_period_ever_stays_put(offset: int) -> None:
    assert shift_period(Period.EVER, EVENING_UTC, SHANGHAI, offset) == EVENING_UTC


@pytest.mark.parametrize("kind", [Period.DAY, Period.WEEK, Period.MONTH])
def test_shift_period_steps_are_consecutive(kind: Period) -> None:
    """Shifting by n lands exactly one period before shifting by n - 1."""
    tz = NEW_YORK
    at = utc_ms("2026-11-10T15:00:00")
    previous = at
    for n in range(1, 15):
        shifted = shift_period(kind, at, tz, n)
        # The period just before `previous` ends where previous's period starts.
        assert period_bounds(kind, shifted, tz)[1] == period_bounds(kind, previous, tz)[0]
        previous = shifted
