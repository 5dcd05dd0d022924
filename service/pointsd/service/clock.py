"""The service clock: every "now" the service acts on comes from one of these.

Periods, accepted event ages, expiry of Redis state, item windows and the
hall of fame all read the clock they are given, never the system clock
directly, so tests (and demos) can run the whole service at any chosen
instant: the first of a month, 31 December in ISO week 53, 23:59 in the
tenant's zone, the night a zone changes to summer time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

__all__ = ["Clock", "StartedClock", "child_clock_env", "parse_instant", "system_clock"]

# Milliseconds since the Unix epoch.
Clock = Callable[[], int]


def system_clock() -> int:
    return time.time_ns() // 1_000_000


class StartedClock:
    """The system clock shifted so that it reads `start_ms` now
    (POINTS_CLOCK_START), running at the system clock's speed. The shift,
    `offset_ms`, is what child processes inherit (POINTS_CLOCK_OFFSET_MS):
    every process of a service, and one restarted an hour later, reads the
    same time."""

    __slots__ = ("offset_ms",)

    def __init__(self, start_ms: int | None = None, *, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms
        if start_ms is not None:
            self.set(start_ms)

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def set(self, at_ms: int) -> None:
        """Read `at_ms` now, and run on from there."""
        self.offset_ms = at_ms - time.time_ns() // 1_000_000


def child_clock_env(clock: Clock) -> dict[str, str]:
    """The environment that gives a child process this clock."""
    if isinstance(clock, StartedClock):
        return {"POINTS_CLOCK_OFFSET_MS": str(clock.offset_ms)}
    return {}


def parse_instant(text: str) -> int:
    """An ISO-8601 instant with its UTC offset ("2026-12-31T23:59:00+08:00"),
    in ms. Without an offset the instant would depend on the machine's zone,
    so it is refused (ValueError)."""
    at = datetime.fromisoformat(text.strip())
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{text!r} has no UTC offset (write e.g. 2026-12-31T23:59:00+08:00)")
    return int(at.timestamp() * 1000)
