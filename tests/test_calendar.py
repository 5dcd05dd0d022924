"""Business calendars: working weekdays, public holidays and make-up working
days (调休), read from the rule file with path-named errors. Pure: fixed
dates, never today's."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pointsd.service.rules import RuleError, load_rule_book, load_rule_file, parse_rule_book
from pointsd.service.rules.calendar import WEEKDAYS_CALENDAR, BusinessCalendar

D = date.fromisoformat


def _book(calendars: Any, calendar: Any = "office") -> Any:
    doc = load_rule_file(None)
    doc["calendars"] = calendars
    doc["tenants"] = [{"id": "t1", "timezone": "Asia/Shanghai", "calendar": calendar}]
    return parse_rule_book(doc)


OFFICE = {
    "office": {
        "holidays": {"National Day": ["2026-10-01", "2026-10-02", "2026-10-05"]},
        "working_days": ["2026-10-10"],
    }
}


def test_without_a_calendar_a_tenant_works_monday_to_friday() -> None:
    doc = load_rule_file(None)
    doc["tenants"] = [{"id": "t1"}]
    calendar = parse_rule_book(doc).tenants["t1"].calendar
    assert calendar is WEEKDAYS_CALENDAR
    assert [calendar.is_working_day(D(f"2026-11-{d:02}")) for d in range(2, 9)] == [
        True, True, True, True, True, False, False,
    ]  # fmt: skip


def test_holidays_and_make_up_days_decide_before_the_weekday() -> None:
    calendar = _book(OFFICE).tenants["t1"].calendar
    assert not calendar.is_working_day(D("2026-10-01"))  # a Thursday holiday
    assert not calendar.is_working_day(D("2026-10-05"))  # a Monday holiday
    assert calendar.is_working_day(D("2026-10-10"))  # a Saturday worked (调休)
    assert not calendar.is_working_day(D("2026-10-11"))  # an ordinary Sunday
    assert calendar.is_working_day(D("2026-10-06"))


def test_missed_working_days_skip_weekends_and_holidays() -> None:
    calendar = _book(OFFICE).tenants["t1"].calendar
    # Friday to Monday: the weekend is not missed.
    assert calendar.working_days_between(D("2026-11-06"), D("2026-11-09")) == 0
    # Wednesday 30 September to Tuesday 6 October: Thu, Fri and Mon are
    # holidays, the weekend is a weekend; nothing was missed.
    assert calendar.working_days_between(D("2026-09-30"), D("2026-10-06")) == 0
    # Tuesday to Thursday: Wednesday was missed.
    assert calendar.working_days_between(D("2026-11-03"), D("2026-11-05")) == 1
    # The make-up Saturday counts as a working day missed.
    assert calendar.working_days_between(D("2026-10-09"), D("2026-10-12")) == 1
    assert calendar.working_days_between(D("2026-11-05"), D("2026-11-03")) == 0


def test_the_previous_and_next_working_day_cross_holidays() -> None:
    calendar = _book(OFFICE).tenants["t1"].calendar
    assert calendar.previous_working_day(D("2026-10-06")) == D("2026-09-30")
    assert calendar.next_working_day(D("2026-09-30")) == D("2026-10-06")
    assert calendar.next_working_day(D("2026-10-09")) == D("2026-10-10")
    weekend_shop = BusinessCalendar("shop", frozenset({5, 6}))
    assert weekend_shop.next_working_day(D("2026-11-02")) == D("2026-11-07")
    nothing = BusinessCalendar("never", frozenset())
    assert nothing.next_working_day(D("2026-11-02")) is None


def test_yaml_dates_quoted_or_not_are_read_alike() -> None:
    doc = load_rule_file(None)
    doc["calendars"] = {"c": {"holidays": {"h": [D("2026-12-25"), "2026-12-24"]}}}
    doc["tenants"] = [{"id": "t1", "calendar": "c"}]
    calendar = parse_rule_book(doc).tenants["t1"].calendar
    assert set(calendar.holidays) == {D("2026-12-24"), D("2026-12-25")}


@pytest.mark.parametrize(
    ("calendars", "calendar", "problem"),
    [
        ({"c": {"holidays": {"h": ["2026-13-01"]}}}, "c",
         "$.calendars.c.holidays.h[0]: 2026-13-01 is not a date (month must be in 1..12)"),
        ({"c": {"holidays": {"h": ["1 Oct"]}}}, "c",
         "$.calendars.c.holidays.h[0]: must be a date YYYY-MM-DD, got '1 Oct'"),
        ({"c": {"holidays": {"h": ["2026-10-01", "2026-10-01"]}}}, "c",
         "$.calendars.c.holidays.h[1]: 2026-10-01 is listed twice"),
        ({"c": {"holidays": {"a": ["2026-10-01"], "b": ["2026-10-01"]}}}, "c",
         "$.calendars.c.holidays.b: 2026-10-01 is also a"),
        ({"c": {"working_days": ["2026-10-12"]}}, "c",
         "$.calendars.c.working_days: 2026-10-12 is a mon, a working weekday already"),
        ({"c": {"holidays": {"h": ["2026-10-10"]}, "working_days": ["2026-10-10"]}}, "c",
         "$.calendars.c.working_days: 2026-10-10 is also a holiday (h)"),
        ({"c": {"working_weekdays": ["mon", "funday"]}}, "c",
         "$.calendars.c.working_weekdays: 'funday' is not one of mon, tue"),
        ({"c": {"working_weekdays": []}}, "c",
         "$.calendars.c.working_weekdays: must be a non-empty list"),
        ({"c": {"holiday": {}}}, "c", "$.calendars.c.holiday: unknown key"),
        ({"weekdays": {}}, "weekdays", "$.calendars.weekdays: `weekdays` is the built-in"),
        ({"c": {}}, "nope", "$.tenants[0].calendar: no calendar named 'nope' in $.calendars"),
        ({"c": {"description": "two\nlines"}}, "c", "$.calendars.c.description: must be one"),
    ],
    ids=["bad-date", "not-a-date", "twice", "two-holidays", "make-up-on-weekday", "make-up-holiday",
         "weekday-name", "no-weekdays", "unknown-key", "reserved-name", "unknown-calendar",
         "description"],
)  # fmt: skip
def test_calendar_errors_name_their_path(calendars: Any, calendar: str, problem: str) -> None:
    with pytest.raises(RuleError) as info:
        _book(calendars, calendar)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_the_shipped_example_calendar_is_valid_and_labelled_as_an_example() -> None:
    book = load_rule_book(None)
    calendar = book.tenants["demo"].calendar
    assert calendar.name.startswith("example-")
    assert not calendar.is_working_day(D("2026-10-01"))
    assert calendar.is_working_day(D("2026-10-10"))  # a make-up Saturday
    for day in calendar.working_days:
        assert day.weekday() >= 5  # make-up days fall on weekends
    raw = load_rule_file(None)["calendars"][calendar.name]
    assert raw["description"].lower().startswith("example only")


def test_a_date_that_does_not_exist_in_the_file_is_a_problem_with_its_path(tmp_path: Path) -> None:
    # Unquoted, YAML itself would read 2026-02-30 as a date and fail without a path.
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\ntenants: [{id: a, calendar: c1}]\ncalendars:\n  c1:\n"
        "    holidays:\n      X: [2026-02-30]\n"
        "rule_sets: {default: {actions: {login: {actor: {points: 1}}}}}\n"
    )
    with pytest.raises(RuleError) as info:
        load_rule_book(rules)
    assert info.value.problems == [
        "$.calendars.c1.holidays.X[0]: 2026-02-30 is not a date (day is out of range for month)"
    ]
