"""Levels, badges and tasks in the rule file: every refusal names its path,
and the engine's task periods (ISO week 53, a 25-hour day, working days).
Pure: documents in, problems or plans out; instants are fixed, never today."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pointsd.service.domain import Event
from pointsd.service.domain.steps import Bump, Cross
from pointsd.service.rules import (
    RuleBook,
    RuleError,
    RulesEngine,
    load_rule_file,
    parse_rule_book,
    task_counter,
)

SET = "$.rule_sets.default"
DAY_S = 86_400

ACTIONS: dict[str, Any] = {
    "login": {"actor": {"points": 5, "once_per_day": True}},
    "message.text": {"actor": {"points": 2}},
    "file": {"actor": {"points": 10}},
    "like": {"actor": {"points": 1}, "target": {"points": 1}},
    "group.members": {"actor": {"points": 0}},
    "feature.use": {"attributes_required": ["feature"], "actor": {"points": 1}},
}
LEVELS: list[dict[str, Any]] = [
    {"id": "newcomer", "name": "新人小白", "name_en": "Newcomer", "from": 0},
    {"id": "communicator", "name": "沟通达人", "name_en": "Communicator", "from": 500},
    {"id": "team-star", "name": "团队之星", "name_en": "Team star", "from": 2000},
]
BADGES: dict[str, Any] = {"chatterbox": {"name": "沟通能手", "name_en": "Chatterbox"}}
TASK: dict[str, Any] = {
    "name": "发送 3 条消息",
    "name_en": "Send 3 messages",
    "period": "day",
    "count": ["message.text"],
    "at_least": 3,
    "reward": {"points": 5},
}


def document(
    *,
    levels: Any = None,
    badges: Any = None,
    tasks: dict[str, Any] | None = None,
    tenant: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One tenant on one rule set with the actions above and these blocks
    (the valid ones above by default)."""
    rule_set: dict[str, Any] = {
        "actions": copy.deepcopy(ACTIONS),
        "levels": copy.deepcopy(LEVELS) if levels is None else levels,
        "badges": copy.deepcopy(BADGES) if badges is None else badges,
        "tasks": {"t": copy.deepcopy(TASK)} if tasks is None else tasks,
    }
    return {
        "version": 1,
        "tenants": [tenant or {"id": "acme", "timezone": "Asia/Shanghai"}],
        "calendars": load_rule_file(None)["calendars"],
        "rule_sets": {"default": rule_set},
    }


def task(**changes: Any) -> dict[str, Any]:
    """The valid task above with keys changed (None: removed)."""
    t = copy.deepcopy(TASK)
    for key, value in changes.items():
        if value is None:
            t.pop(key, None)
        else:
            t[key] = value
    return t


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(RuleError) as info:
        parse_rule_book(doc)
    return info.value.problems


def test_the_valid_document_parses() -> None:
    book = parse_rule_book(document())
    assert [lv.id for lv in book.tenants["acme"].parts["levels"].levels] == [
        "newcomer", "communicator", "team-star",
    ]  # fmt: skip
    assert list(book.tenants["acme"].parts["tasks"]) == ["t"]


# --------------------------------------------------------------------------
# Levels


def levels_with(**changes: Any) -> list[dict[str, Any]]:
    """The levels above with `l<index>__<key>=value` changed (None: removed)."""
    found = copy.deepcopy(LEVELS)
    for where, value in changes.items():
        index, key = where.split("__")
        if value is None:
            found[int(index.removeprefix("l"))].pop(key)
        else:
            found[int(index.removeprefix("l"))][key] = value
    return found


@pytest.mark.parametrize(
    ("levels", "problem"),
    [
        # Thresholds that do not increase overlap.
        (levels_with(l2__from=500), f"{SET}.levels[2].from: must be above the previous "
         "level's 500 ('communicator'); thresholds must not overlap"),
        (levels_with(l2__from=300), f"{SET}.levels[2].from: must be above the previous "
         "level's 500 ('communicator'); thresholds must not overlap"),
        (levels_with(l0__from=10), f"{SET}.levels[0].from: the first level starts at 0, got 10"),
        (levels_with(l1__from=None), f"{SET}.levels[1].from: is required (lifetime earned points)"),
        (levels_with(l1__from=-5), f"{SET}.levels[1].from: must be between 0 and "
         "1000000000000, got -5"),
        (levels_with(l2__id="communicator"), f"{SET}.levels[2].id: level 'communicator' is "
         "defined twice"),
        (levels_with(l1__id="Communicator"), f"{SET}.levels[1].id: must be 1-48 chars of a-z "
         "0-9 _ - starting with a letter or digit"),
        (levels_with(l1__name=""), f"{SET}.levels[1].name: must be one line of 1-64 characters"),
        (levels_with(l1__rank=2), f"{SET}.levels[1].rank: unknown key (allowed: from, id, name, "
         "name_en, privileges)"),
        ([], f"{SET}.levels: must be a list of 1-50 levels"),
        ({"newcomer": 0}, f"{SET}.levels: must be a list of 1-50 levels"),
    ],
)  # fmt: skip
def test_level_problems_name_their_path(levels: Any, problem: str) -> None:
    assert problem in problems(document(levels=levels))


@pytest.mark.parametrize(
    "privileges",
    ["frame.silver", ["Frame.Silver"], ["frame silver"], [1], [f"p{i}" for i in range(21)]],
)
def test_bad_privileges_are_refused_with_their_path(privileges: Any) -> None:
    assert (
        f"{SET}.levels[1].privileges: must be a list of at most 20 ids (a-z 0-9 . _ -), "
        "e.g. tag.communicator"
    ) in problems(document(levels=levels_with(l1__privileges=privileges)))


def test_good_privileges_are_kept() -> None:
    book = parse_rule_book(
        document(levels=levels_with(l1__privileges=["tag.communicator", "frame.silver"]))
    )
    level = book.tenants["acme"].parts["levels"].levels[1]
    assert level.privileges == ("tag.communicator", "frame.silver")


# --------------------------------------------------------------------------
# Badges


@pytest.mark.parametrize(
    ("badges", "problem"),
    [
        ({"Chatterbox": {"name": "x"}}, f"{SET}.badges.Chatterbox: badge ids are 1-48 chars of "
         "a-z 0-9 _ - starting with a letter or digit"),
        ({"chatterbox": {}}, f"{SET}.badges.chatterbox.name: must be one line of 1-64 "
         "characters"),
        ({"chatterbox": {"name": "x", "colour": "gold"}}, f"{SET}.badges.chatterbox.colour: "
         "unknown key (allowed: description, name, name_en)"),
        ({"chatterbox": {"name": "x", "description": "a\nb"}}, f"{SET}.badges.chatterbox."
         "description: must be one line of at most 200 characters"),
        ({"chatterbox": "x"}, f"{SET}.badges.chatterbox: must be a mapping, got str"),
    ],
)  # fmt: skip
def test_badge_problems_name_their_path(badges: Any, problem: str) -> None:
    assert problem in problems(document(badges=badges, tasks={}))


# --------------------------------------------------------------------------
# Tasks

T = f"{SET}.tasks.t"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"count": ["nope"]}, f"{T}.count[0]: no action 'nope' in this rule set"),
        ({"count": ["Message Text"]}, f"{T}.count[0]: must be an action key or {{action, role}}"),
        ({"count": [{"action": "file", "role": "target"}]},
         f"{T}.count[0].role: action 'file' has no target credit"),
        ({"count": [{"action": "like", "role": "giver"}]},
         f"{T}.count[0].role: must be actor or target, got 'giver'"),
        ({"count": [{"action": "like", "who": "target"}]},
         f"{T}.count[0].who: unknown key (allowed: action, role)"),
        ({"count": []}, f"{T}.count: must be a non-empty list of actions"),
        ({"count": "*"}, f"{T}.count: must be a non-empty list of actions"),
        ({"points": "everything", "count": None},
         f"{T}.points: must be a non-empty list of actions or \"*\""),
        ({"period": "year"}, f"{T}.period: must be one of day, week, month, ever, got 'year'"),
        ({"period": None}, f"{T}.period: must be one of day, week, month, ever, got None"),
        ({"at_least": None}, f"{T}.at_least: is required"),
        ({"at_least": 0}, f"{T}.at_least: must be between 1 and 1000000000, got 0"),
        ({"at_least": "3"}, f"{T}.at_least: must be an integer, got '3'"),
        ({"reward": {}}, f"{T}.reward: needs points (1-100000) or a badge"),
        ({"reward": None}, f"{T}.reward: needs points (1-100000) or a badge"),
        ({"reward": {"points": 0}}, f"{T}.reward: needs points (1-100000) or a badge"),
        ({"reward": {"points": 100_001}},
         f"{T}.reward.points: must be between 0 and 100000, got 100001"),
        ({"reward": {"points": 5, "coins": 1}},
         f"{T}.reward.coins: unknown key (allowed: badge, points)"),
        ({"reward": {"badge": "gold-star"}},
         f"{T}.reward.badge: no badge 'gold-star' in this rule set's badges"),
        ({"reward": {"badge": 7}}, f"{T}.reward.badge: must be a badge id"),
        ({"peak": ["file"], "count": None},
         f"{T}.peak[0]: action 'file' pays 10 points per unit; a peak reads the event's "
         "quantity (a count), so its feeds must pay 0 points"),
        ({"values": ["video_meeting"]},
         f"{T}.values: needs per_attribute (the attribute the values are of)"),
        ({"per_attribute": "Feature!"}, f"{T}.per_attribute: must be an attribute name"),
        ({"per_attribute": "feature", "values": "video_meeting"},
         f"{T}.values: must be a list of at most 100 attribute values"),
        ({"distinct": {"feeds": ["like"], "of": "team"}, "count": None},
         f"{T}.distinct.of: must be one of group, target, department, got 'team'"),
        ({"distinct": {"feeds": ["nope"], "of": "target"}, "count": None},
         f"{T}.distinct.feeds[0]: no action 'nope' in this rule set"),
        ({"working_days_only": "yes"}, f"{T}.working_days_only: must be true or false, got 'yes'"),
        ({"name": ""}, f"{T}.name: must be one line of 1-64 characters"),
        ({"every": "day"}, f"{T}.every: unknown key (allowed: "),
    ],
)  # fmt: skip
def test_task_problems_name_their_path(changes: dict[str, Any], problem: str) -> None:
    found = problems(document(tasks={"t": task(**changes)}))
    assert any(p.startswith(problem) for p in found), found


@pytest.mark.parametrize(
    ("changes", "given"),
    [
        ({"distinct": {"feeds": ["like"], "of": "target"}}, 2),  # count and distinct
        ({"count": None}, 0),
    ],
)
def test_a_task_needs_exactly_one_condition(changes: dict[str, Any], given: int) -> None:
    found = problems(document(tasks={"t": task(**changes)}))
    # The list of conditions grows with the mechanics; the path and count do not.
    (problem,) = [p for p in found if p.startswith(f"{T}: needs exactly one condition of count, ")]
    assert problem.endswith(f", got {given}")


def test_bad_task_ids_are_refused() -> None:
    found = problems(document(tasks={"Send 3": task()}))
    assert (
        f"{SET}.tasks.Send 3: task ids are 1-48 chars of a-z 0-9 _ - starting with a letter or "
        "digit"
    ) in found


def test_every_problem_is_reported_at_once() -> None:
    doc = document(
        levels=levels_with(l0__from=10, l2__id="communicator"),
        tasks={
            "a": task(period="year"),
            "b": task(reward={"badge": "gold-star"}),
            "c": task(values=["x"]),
        },
    )
    found = problems(doc)
    paths = sorted(p.split(": ", 1)[0] for p in found)
    assert paths == [
        f"{SET}.levels[0].from", f"{SET}.levels[2].id", f"{SET}.tasks.a.period",
        f"{SET}.tasks.b.reward.badge", f"{SET}.tasks.c.values",
    ]  # fmt: skip


def test_a_peak_on_a_zero_point_action_and_a_target_feed_are_accepted() -> None:
    book = parse_rule_book(
        document(
            tasks={
                "members": task(count=None, peak=["group.members"], period="ever", at_least=50),
                "liked": task(count=[{"action": "like", "role": "target"}], at_least=100,
                              period="ever", reward={"badge": "chatterbox"}),
            }
        )
    )  # fmt: skip
    tasks = book.tenants["acme"].parts["tasks"]
    assert tasks["members"].measure == "peak" and tasks["liked"].badge == "chatterbox"
    assert tasks["liked"].feeds[0].role.name == "TARGET"


# --------------------------------------------------------------------------
# The engine: which period a task's reward is for


def engine_for(book: RuleBook) -> RulesEngine:
    return RulesEngine(book, state_retention_s=8 * DAY_S, dedup_retention_s=3 * DAY_S)


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def plan_tags(engine: RulesEngine, action: str, at_ms: int, **fields: Any) -> list[str]:
    """The bonus tags the Cross steps of the event's first credit may pay."""
    event = Event(
        tenant_id="acme", event_id=f"e-{at_ms}", user_id="ann", action=action,
        occurred_at_ms=at_ms, **fields,
    )  # fmt: skip
    planned = engine.plan(event, recorded_at_ms=at_ms)
    ops = getattr(planned, "ops", None)
    assert ops, planned
    return [t.bonus.tag for step in ops[0].steps_of(Cross) for t in step.thresholds]


def task_bumps(engine: RulesEngine, action: str, at_ms: int, task_id: str) -> list[str]:
    """The period keys the event bumps the task's counter in."""
    event = Event(tenant_id="acme", event_id=f"e-{at_ms}", user_id="ann", action=action,
                  occurred_at_ms=at_ms)  # fmt: skip
    planned = engine.plan(event, recorded_at_ms=at_ms)
    ops = getattr(planned, "ops", None)
    assert ops, planned
    return [b.period.key for b in ops[0].steps_of(Bump) if b.counter == task_counter(task_id)]


@pytest.mark.parametrize(
    ("when", "tag"),
    [
        # Thursday 31 Dec 2026 and Friday 1 Jan 2027 are both ISO week 2026-W53.
        ("2026-12-31T12:00:00+08:00", "task.weekly.2026-w53"),
        ("2027-01-01T12:00:00+08:00", "task.weekly.2026-w53"),
        # Sunday 3 Jan 2027, 23:59 in Shanghai: still W53; Monday is 2027-W01.
        ("2027-01-03T23:59:00+08:00", "task.weekly.2026-w53"),
        ("2027-01-04T00:00:00+08:00", "task.weekly.2027-w01"),
        # Monday 31 Dec 2029 is in ISO week 2030-W01.
        ("2029-12-31T12:00:00+08:00", "task.weekly.2030-w01"),
        ("2029-12-30T23:59:00+08:00", "task.weekly.2029-w52"),
    ],
)
def test_a_weekly_reward_is_for_the_iso_week_of_the_tenant(when: str, tag: str) -> None:
    engine = engine_for(parse_rule_book(document(tasks={"weekly": task(period="week")})))
    assert plan_tags(engine, "message.text", at(when)) == [tag]


def test_a_monthly_and_a_growth_reward() -> None:
    engine = engine_for(
        parse_rule_book(
            document(tasks={"monthly": task(period="month"), "growth": task(period="ever")})
        )
    )
    # 31 Dec 2026 23:30 in Shanghai is 15:30 UTC: the tenant's month decides.
    assert plan_tags(engine, "message.text", at("2026-12-31T23:30:00+08:00")) == [
        "task.monthly.2026-12", "task.growth",
    ]  # fmt: skip
    assert plan_tags(engine, "message.text", at("2027-01-01T00:00:00+08:00"))[0] == (
        "task.monthly.2027-01"
    )


def test_a_daily_task_in_new_york_rolls_over_at_local_midnight_of_a_25_hour_day() -> None:
    doc = document(tenant={"id": "acme", "timezone": "America/New_York"})
    engine = engine_for(parse_rule_book(doc))
    start = at("2027-11-07T00:00:00-04:00")  # EDT; clocks go back at 02:00
    end = at("2027-11-08T00:00:00-05:00")  # EST
    assert end - start == 25 * 3600 * 1000
    day = "task.t.2027-11-07"
    assert plan_tags(engine, "message.text", start) == [day]
    # The repeated hour, and 24 hours after midnight: still the same local day.
    assert plan_tags(engine, "message.text", at("2027-11-07T01:30:00-05:00")) == [day]
    assert plan_tags(engine, "message.text", start + 24 * 3600 * 1000) == [day]
    assert plan_tags(engine, "message.text", end - 1) == [day]
    assert plan_tags(engine, "message.text", end) == ["task.t.2027-11-08"]
    assert plan_tags(engine, "message.text", start - 1) == ["task.t.2027-11-06"]
    # The day boundary is the zone's, not UTC's (05:00 UTC).
    assert datetime.fromtimestamp(end / 1000, ZoneInfo("UTC")).hour == 5


def test_a_per_attribute_reward_names_the_value() -> None:
    third = task(count=["feature.use"], period="week", per_attribute="feature",
                 values=["video_meeting", "文档"])  # fmt: skip
    engine = engine_for(parse_rule_book(document(tasks={"third": third})))
    monday = at("2026-12-07T10:00:00+08:00")

    def tags(feature: str) -> list[str]:
        return plan_tags(engine, "feature.use", monday, attributes={"feature": feature})

    assert tags("video_meeting") == ["task.third.2026-w50.video_meeting"]
    # Any printable value stays readable and unambiguous in the tag.
    assert tags("文档") == ["task.third.2026-w50.%E6%96%87%E6%A1%A3"]
    # A value not listed counts nothing.
    assert tags("doc_collab") == []


def test_working_days_only_skips_a_holiday_and_counts_a_make_up_saturday() -> None:
    logins = task(count=["login"], period="week", working_days_only=True, at_least=5)
    doc = document(
        tasks={"logins": logins},
        tenant={"id": "acme", "timezone": "Asia/Shanghai", "calendar": "example-cn-2026"},
    )
    engine = engine_for(parse_rule_book(doc))

    def counted(day: str) -> bool:
        keys = task_bumps(engine, "login", at(f"{day}T09:00:00+08:00"), "logins")
        assert keys in ([], ["2026-W41"] if day < "2026-10-12" else ["2026-W42"])
        return bool(keys)

    # Week 2026-W41: Monday 5 to Wednesday 7 October are National Day holidays,
    # Saturday 10 October is a make-up working day, Sunday 11 is a weekend.
    week = [f"2026-10-{d:02d}" for d in range(5, 12)]
    assert [counted(d) for d in week] == [False, False, False, True, True, True, False]
    # An ordinary Saturday is no working day.
    assert not counted("2026-10-17")
    # Without working_days_only the holiday counts like any day.
    every_day = engine_for(parse_rule_book(document(tasks={"logins": task(count=["login"])})))
    assert task_bumps(every_day, "login", at("2026-10-05T09:00:00+08:00"), "logins") == [
        "2026-10-05"
    ]
