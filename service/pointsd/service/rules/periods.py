"""Calendar periods in a tenant's time zone. Pure functions, no I/O.

Keys are human-readable and sort in time order within a kind:
day "2026-11-23", ISO week "2026-W48", month "2026-11", ever "all".
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from pointsd.service.domain import Period, PeriodRef

__all__ = ["local_date", "period_bounds", "period_key", "period_ref", "shift_period"]

EVER_KEY = "all"


def local_date(at_ms: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(tz).date()


def _start_date(kind: Period, d: date) -> date:
    if kind is Period.DAY:
        return d
    if kind is Period.WEEK:
        return d - timedelta(days=d.weekday())
    if kind is Period.MONTH:
        return d.replace(day=1)
    raise ValueError(f"period {kind} has no calendar bounds")


def _next_start(kind: Period, start: date) -> date:
    if kind is Period.DAY:
        return start + timedelta(days=1)
    if kind is Period.WEEK:
        return start + timedelta(days=7)
    if kind is Period.MONTH:
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    raise ValueError(f"period {kind} has no calendar bounds")


def _key(kind: Period, start: date) -> str:
    if kind is Period.DAY:
        return start.isoformat()
    if kind is Period.WEEK:
        iso = start.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    if kind is Period.MONTH:
        return f"{start.year:04d}-{start.month:02d}"
    return EVER_KEY


def _midnight_s(d: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(d, time(0), tzinfo=tz).timestamp())


def period_key(kind: Period, at_ms: int, tz: ZoneInfo) -> str:
    if kind is Period.EVER:
        return EVER_KEY
    return _key(kind, _start_date(kind, local_date(at_ms, tz)))


def period_bounds(kind: Period, at_ms: int, tz: ZoneInfo) -> tuple[int, int]:
    """[start, end) of the period containing `at_ms`, in unix seconds."""
    start = _start_date(kind, local_date(at_ms, tz))
    return _midnight_s(start, tz), _midnight_s(_next_start(kind, start), tz)


def period_ref(kind: Period, at_ms: int, tz: ZoneInfo, retention_s: int) -> PeriodRef:
    """The period containing `at_ms`; its state may be dropped `retention_s`
    after the period ends."""
    if kind is Period.EVER:
        return PeriodRef(kind, EVER_KEY, 0)
    start = _start_date(kind, local_date(at_ms, tz))
    end_s = _midnight_s(_next_start(kind, start), tz)
    return PeriodRef(kind, _key(kind, start), end_s + retention_s)


def shift_period(kind: Period, at_ms: int, tz: ZoneInfo, offset: int) -> int:
    """A time (ms) inside the period `offset` periods before the one containing
    `at_ms` (offset 0 = the same period)."""
    if kind is Period.EVER or offset == 0:
        return at_ms
    start = _start_date(kind, local_date(at_ms, tz))
    for _ in range(offset):
        start = _start_date(kind, start - timedelta(days=1))
    # Noon avoids any DST-shifted midnight ambiguity.
    return int(datetime.combine(start, time(12), tzinfo=tz).timestamp() * 1000)
