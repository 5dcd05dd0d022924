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

__all__ = ["Clock", "StartedClock", "parse_instant", "system_clock"]

# Milliseconds since the Unix epoch.
Clock = Callable[[], int]


def system_clock() -> int:
    return time.time_ns() // 1_000_000


class StartedClock:
    """A clock that reads `start_ms` when created and then runs at real
    speed (POINTS_CLOCK_START). Elapsed time comes from the monotonic clock,
    so a step of the system clock does not move it."""

    __slots__ = ("_origin_ns", "_start_ms")

    def __init__(self, start_ms: int) -> None:
        self.set(start_ms)

    def __call__(self) -> int:
        return self._start_ms + (time.monotonic_ns() - self._origin_ns) // 1_000_000

    def set(self, at_ms: int) -> None:
        """Read `at_ms` now, and run on from there."""
        self._start_ms = at_ms
        self._origin_ns = time.monotonic_ns()


def parse_instant(text: str) -> int:
    """An ISO-8601 instant with its UTC offset ("2026-12-31T23:59:00+08:00"),
    in ms. Without an offset the instant would depend on the machine's zone,
    so it is refused (ValueError)."""
    at = datetime.fromisoformat(text.strip())
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{text!r} has no UTC offset (write e.g. 2026-12-31T23:59:00+08:00)")
    return int(at.timestamp() * 1000)
