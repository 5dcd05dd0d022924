"""Business calendars: which days of a tenant are working days.

A day is a working day when it is a make-up working day (调休: a Saturday
worked in exchange for a holiday), else when it is not a public holiday and
falls on one of the working weekdays (default Monday to Friday). Streaks and
working-day tasks count these days in the tenant's zone: an employee who
skips a Saturday, or a holiday, has not broken a work habit.

Pure: dates in, answers out (the caller turns an instant into the tenant's
local date).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from pointsd.service.rules.checker import Checker, one_line

__all__ = [
    "ORDINAL_EPOCH",
    "WEEKDAYS",
    "WEEKDAYS_CALENDAR",
    "BusinessCalendar",
    "parse_calendars",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# No calendar has more than a year between two working days (a search for the
# next one gives up there instead of looping over a calendar with none).
_SEARCH_DAYS = 366
_NAME_MAX = 64
# Business days are numbered from this Monday (the first day of ISO week
# 2026-W01): streak bitmaps hold one bit per working day since, so they stay
# small (about 33 bytes a year).
ORDINAL_EPOCH = date(2025, 12, 29)


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    name: str
    # date.weekday() numbers: 0 = Monday.
    working_weekdays: frozenset[int] = frozenset(range(5))
    # Public holidays, each with its name.
    holidays: Mapping[date, str] = field(default_factory=dict)
    # Make-up working days: worked although they fall on a non-working weekday.
    working_days: frozenset[date] = frozenset()

    def is_working_day(self, day: date) -> bool:
        if day in self.working_days:
            return True
        if day in self.holidays:
            return False
        return day.weekday() in self.working_weekdays

    def previous_working_day(self, day: date) -> date | None:
        """The last working day before `day` (None if none within a year)."""
        return self._step(day, -1)

    def next_working_day(self, day: date) -> date | None:
        """The first working day after `day` (None if none within a year)."""
        return self._step(day, 1)

    def working_days_between(self, first: date, last: date) -> int:
        """Working days strictly between `first` and `last` (0 if adjacent or
        reversed): the working days missed between two active days."""
        count = 0
        day = first + timedelta(days=1)
        while day < last:
            count += self.is_working_day(day)
            day += timedelta(days=1)
        return count

    def ordinal(self, day: date) -> int | None:
        """The business-day number of a working day: consecutive working days
        have consecutive numbers (a streak is a run of them); 0 is the first
        working day on or after ORDINAL_EPOCH. None for a non-working day or
        one before the epoch."""
        if day < ORDINAL_EPOCH or not self.is_working_day(day):
            return None
        return self._working_before(day)

    def day_of(self, ordinal: int) -> date:
        """The working day numbered `ordinal` (the inverse of `ordinal`)."""
        lo = ORDINAL_EPOCH + timedelta(days=ordinal)
        hi = lo + timedelta(days=ordinal * 7 + _SEARCH_DAYS)
        # The first day with more than `ordinal` working days up to it.
        while lo < hi:
            mid = lo + (hi - lo) // 2
            if self._working_before(mid + timedelta(days=1)) > ordinal:
                hi = mid
            else:
                lo = mid + timedelta(days=1)
        return lo

    def _working_before(self, day: date) -> int:
        """Working days in [ORDINAL_EPOCH, day): whole weeks by arithmetic,
        then the listed exceptions (a few dozen) one by one."""
        weeks, rest = divmod((day - ORDINAL_EPOCH).days, 7)
        # The epoch is a Monday: offset i of a week is weekday i.
        count = weeks * len(self.working_weekdays)
        count += sum(1 for i in range(rest) if i in self.working_weekdays)
        for holiday in self.holidays:
            if ORDINAL_EPOCH <= holiday < day and holiday.weekday() in self.working_weekdays:
                count -= 1
        for extra in self.working_days:
            if ORDINAL_EPOCH <= extra < day and extra.weekday() not in self.working_weekdays:
                count += 1
        return count

    def describe(self) -> str:
        weekdays = ", ".join(WEEKDAYS[d] for d in sorted(self.working_weekdays))
        named = len(set(self.holidays.values()))
        return (
            f"calendar {self.name}: works {weekdays}; {named} holiday(s) on "
            f"{len(self.holidays)} day(s), {len(self.working_days)} make-up working day(s)"
        )

    def _step(self, day: date, direction: int) -> date | None:
        for n in range(1, _SEARCH_DAYS + 1):
            candidate = day + timedelta(days=n * direction)
            if self.is_working_day(candidate):
                return candidate
        return None


# Every tenant without a calendar of its own: Monday to Friday, no holidays.
WEEKDAYS_CALENDAR = BusinessCalendar("weekdays")


def parse_calendars(c: Checker, raw: Any, path: str) -> dict[str, BusinessCalendar]:
    """The `calendars` block of a rule file: name -> calendar; every problem
    goes to `c` under its path."""
    calendars: dict[str, BusinessCalendar] = {"weekdays": WEEKDAYS_CALENDAR}
    block = c.mapping(raw, path) or {}
    for name, body in block.items():
        where = f"{path}.{name}"
        if not isinstance(name, str) or not 0 < len(name) <= _NAME_MAX:
            c.fail(where, f"a calendar name must be 1-{_NAME_MAX} characters")
            continue
        if name == "weekdays":
            c.fail(where, "`weekdays` is the built-in Monday-to-Friday calendar; pick another name")
            continue
        calendar = _calendar(c, name, body, where)
        if calendar is not None:
            calendars[name] = calendar
    return calendars


def _calendar(c: Checker, name: str, raw: Any, path: str) -> BusinessCalendar | None:
    body = c.mapping(raw, path)
    if body is None:
        return None
    c.unknown(body, {"description", "working_weekdays", "holidays", "working_days"}, path)
    if "description" in body and not one_line(body["description"]):
        c.fail(f"{path}.description", "must be one line of at most 200 characters")
    weekdays = _weekdays(c, body.get("working_weekdays"), f"{path}.working_weekdays")
    holidays = _holidays(c, body.get("holidays", {}), f"{path}.holidays")
    working = _dates(c, body.get("working_days", []), f"{path}.working_days")
    for day in sorted(working):
        if day in holidays:
            c.fail(f"{path}.working_days", f"{day} is also a holiday ({holidays[day]})")
        elif day.weekday() in weekdays:
            c.fail(
                f"{path}.working_days",
                f"{day} is a {WEEKDAYS[day.weekday()]}, a working weekday already: "
                "make-up days are days that would not be worked",
            )
    return BusinessCalendar(name, frozenset(weekdays), holidays, frozenset(working))


def _weekdays(c: Checker, raw: Any, path: str) -> set[int]:
    if raw is None:
        return set(range(5))
    if not isinstance(raw, list) or not raw:
        c.fail(path, f"must be a non-empty list of {', '.join(WEEKDAYS)}")
        return set(range(5))
    chosen: set[int] = set()
    for value in raw:
        if value not in WEEKDAYS:
            c.fail(path, f"{value!r} is not one of {', '.join(WEEKDAYS)}")
        else:
            chosen.add(WEEKDAYS.index(value))
    return chosen or set(range(5))


def _date(c: Checker, raw: Any, path: str) -> date | None:
    # YAML reads an unquoted 2027-01-01 as a date; a quoted one is a string.
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        try:
            return date.fromisoformat(raw)
        except ValueError as exc:
            c.fail(path, f"{raw} is not a date ({exc})")
            return None
    c.fail(path, f"must be a date YYYY-MM-DD, got {str(raw)[:40]!r}")
    return None


def _dates(c: Checker, raw: Any, path: str) -> set[date]:
    if not isinstance(raw, list):
        c.fail(path, "must be a list of dates YYYY-MM-DD")
        return set()
    out: set[date] = set()
    for i, value in enumerate(raw):
        day = _date(c, value, f"{path}[{i}]")
        if day is not None:
            if day in out:
                c.fail(f"{path}[{i}]", f"{day} is listed twice")
            out.add(day)
    return out


def _holidays(c: Checker, raw: Any, path: str) -> dict[date, str]:
    """`{name: [dates]}`: each holiday's days under its name."""
    block = c.mapping(raw, path) or {}
    out: dict[date, str] = {}
    for holiday, days in block.items():
        where = f"{path}.{holiday}"
        if not isinstance(holiday, str) or not 0 < len(holiday) <= _NAME_MAX:
            c.fail(where, f"a holiday name must be 1-{_NAME_MAX} characters")
            continue
        for day in sorted(_dates(c, days, where)):
            if day in out:
                c.fail(where, f"{day} is also {out[day]}")
            out[day] = holiday
    return out
