"""The suite's clock: the one place tests learn what "now" is.

Every test runs at an instant: by default the real time when it starts;
tests marked `calendar` (their outcome involves days, weeks, months or a
zone's midnight) also run at each of INSTANTS; `--at NAME|ISO` pins every
test of the run to one instant. The clock starts there and runs at real
speed; the service under test reads the same clock (App.open(clock=...), or
POINTS_CLOCK_OFFSET_MS in a child process), so a test never meets a date it did
not choose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from pointsd.service.clock import StartedClock, parse_instant

__all__ = [
    "INSTANTS",
    "Instant",
    "TestClock",
    "current",
    "instant_named",
    "now_ms",
    "system_now",
    "use",
]

DEFAULT_ZONE = "Asia/Shanghai"


def system_now() -> datetime:
    """The machine's real time, for what code outside the service checks
    against it (OpenSSL and certificate validity); never for the service."""
    from datetime import UTC

    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Instant:
    """A moment to run tests at, and the zone test tenants live in then.
    `at` empty: the real time when the test starts."""

    name: str
    at: str
    zone: str = DEFAULT_ZONE
    why: str = ""

    def start_ms(self) -> int:
        return parse_instant(self.at) if self.at else time.time_ns() // 1_000_000

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)


NOW = Instant("now", "", why="the real time")

# Each names what a calendar bug would get wrong there. The ISO facts are
# written out by hand (tests/test_clock.py checks them against the calendar).
INSTANTS = (
    Instant("month-first", "2026-12-01T10:00:00+08:00",
            why="Tuesday 1 Dec: last Sunday (and its week) lies in the previous month"),
    Instant("month-last", "2028-02-29T18:00:00+08:00",
            why="Tuesday 29 Feb of a leap year: the last day of a month"),
    Instant("w53-dec31", "2026-12-31T12:00:00+08:00",
            why="Thursday 31 Dec 2026 is in ISO week 2026-W53"),
    Instant("w53-jan1", "2027-01-01T12:00:00+08:00",
            why="Friday 1 Jan 2027 is still in ISO week 2026-W53, year 2027"),
    Instant("w01-dec31", "2029-12-31T12:00:00+08:00",
            why="Monday 31 Dec 2029 is in ISO week 2030-W01"),
    Instant("shanghai-2359", "2027-06-15T23:59:00+08:00",
            why="a minute before midnight in Asia/Shanghai (15:59 UTC)"),
    Instant("shanghai-0000", "2027-06-16T00:00:00+08:00",
            why="midnight in Asia/Shanghai (16:00 UTC the day before)"),
    Instant("dst-spring", "2027-03-28T01:30:00+01:00", "Europe/Berlin",
            why="30 min before Berlin skips 02:00-03:00: a 23-hour day"),
    Instant("dst-autumn", "2027-11-07T01:30:00-04:00", "America/New_York",
            why="the first 01:30 of a New York night that repeats 01:00-02:00: a 25-hour day"),
)  # fmt: skip


def instant_named(text: str, zone: str = "") -> Instant:
    """A standard instant by name, or any ISO-8601 instant with its offset."""
    for known in (NOW, *INSTANTS):
        if text == known.name:
            return Instant(known.name, known.at, zone or known.zone, known.why)
    parse_instant(text)  # ValueError names what is wrong
    return Instant(text, text, zone or DEFAULT_ZONE)


class TestClock(StartedClock):
    """The service's StartedClock, with what tests need besides: it starts
    at an instant and runs at real speed; `set` moves it (it keeps running
    from there). Callable: it is the service clock of the apps a test
    starts."""

    __test__ = False  # not a test class
    __slots__ = ()

    def datetime(self, tz: tzinfo) -> datetime:
        return datetime.fromtimestamp(self() / 1000, tz)


_current = TestClock(NOW.start_ms())
_zone = ZoneInfo(DEFAULT_ZONE)


def use(instant: Instant) -> TestClock:
    """Make `instant` the current test's clock and zone (conftest does this)."""
    global _current, _zone
    _current = TestClock(instant.start_ms())
    _zone = instant.tz
    return _current


def current() -> TestClock:
    return _current


def zone() -> ZoneInfo:
    """The zone test tenants live in at the current instant."""
    return _zone


def now_ms() -> int:
    return _current()
