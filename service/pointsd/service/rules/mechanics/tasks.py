"""Tasks: daily, weekly, monthly and growth goals that pay once per period.

Rule file, a rule-set block (docs/rules.md, "Tasks"):

    tasks:
      send-3-messages:
        name: 发送 3 条消息
        name_en: Send 3 messages
        period: day                 # day | week | month (tenant's zone) | ever
        count: [message.text, message.voice, message.video]
        at_least: 3
        reward: {points: 10}

The condition is one of
- `count: [feed, ...]`: paid credits of these actions;
- `distinct: {feeds: [...], of: group | target | department}`: distinct
  groups, colleagues or departments among them;
- `points: [feed, ...]` or `points: "*"`: points earned by them (any action);
with `at_least: N`. A feed is an action key (its actor credit, or its only
credit) or `{action, role}` ("likes received": `{action: like, role:
target}`). `per_attribute: feature` counts separately per value of that
attribute (the third use of each feature in a week; `values` may restrict
which), `working_days_only: true` only on the tenant's working days.

Only paid credits count (a capped or throttled event earns no progress:
caps bound what farming can complete). The reward (`points`, optionally a
`badge` of the rule set's `badges`) is a once-bonus: the counter only grows
within its period, so exactly one credit crosses `at_least`, atomically in
the call that counted it; its ledger row is "b:<user>:task.<id>.<period>".

Compiles each fed credit to a Bump (count, points) or a Distinct per task,
followed by a Cross; a rebuild replays the Bump or Distinct (progress of
open periods comes back; the reward is not paid again) and the ledger's
bonus rows restore the badges.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from pointsd.service.domain import SEP, Event, Period, PeriodRef, Role
from pointsd.service.domain.steps import (
    Amount,
    Bonus,
    Bump,
    Cross,
    Distinct,
    Member,
    Peak,
    Step,
    Threshold,
)
from pointsd.service.rules.checker import ACTION_RE, ATTRIBUTE_RE, Checker, one_line
from pointsd.service.rules.mechanics.badges import BADGES
from pointsd.service.rules.mechanics.base import (
    BonusInfo,
    CompileContext,
    Compiled,
    Mechanic,
    Rank,
    Refs,
)
from pointsd.service.rules.mechanics.levels import TAG_ID_RE, names
from pointsd.service.rules.model import ActionRule, PartKey, TenantRules
from pointsd.service.rules.periods import EVER_KEY

__all__ = [
    "TASKS",
    "Measure",
    "TaskFeed",
    "TaskRule",
    "Tasks",
    "feeds_of",
    "task_counter",
    "task_tag",
]

_CONDITIONS = ("count", "distinct", "points", "peak", "streak")
_TASK_KEYS = {"name", "name_en", "period", "at_least", "reward", "per_attribute", "values",
              "working_days_only", *_CONDITIONS}  # fmt: skip
_PERIODS = {"day": Period.DAY, "week": Period.WEEK, "month": Period.MONTH, "ever": Period.EVER}
_OF = {"group": Member.GROUP, "target": Member.COUNTERPART, "department": Member.DEPARTMENT}
_TASKS_MAX = 100
_TARGET_MAX = 10**9
_REWARD_MAX = 100_000
_VALUES_MAX = 100
# Distinct values one per-attribute task keeps programs for (a handful of
# features); more values still work, compiled per event.
_PER_VALUE_KEPT = 256
_KIND_LABEL = {Period.DAY: "Daily", Period.WEEK: "Weekly", Period.MONTH: "Monthly",
               Period.EVER: "Growth"}  # fmt: skip


class Measure(enum.StrEnum):
    COUNT = "count"
    DISTINCT = "distinct"
    POINTS = "points"
    # The highest quantity reported (a group's member count).
    PEAK = "peak"
    # The best streak of the rule set's `streak` (growth tasks only; the
    # streak mechanic compiles them).
    STREAK = "streak"


@dataclass(frozen=True, slots=True)
class TaskFeed:
    """Credits of `action` ("*" = any) to `role` feed the task."""

    action: str
    role: Role | None = None

    def matches(self, action: str, role: Role) -> bool:
        return self.action in ("*", action) and (self.role is None or self.role is role)


@dataclass(frozen=True, slots=True)
class TaskRule:
    id: str
    name: str
    name_en: str
    period: Period
    measure: Measure
    feeds: tuple[TaskFeed, ...]
    at_least: int
    points: int
    badge: str = ""
    of: Member | None = None
    per_attribute: str = ""
    values: frozenset[str] = frozenset()
    working_days_only: bool = False

    @property
    def kind(self) -> str:
        return _KIND_LABEL[self.period].lower()

    @property
    def title(self) -> str:
        return f"{self.name_en} ({self.name})" if self.name != self.name_en else self.name

    @property
    def counter(self) -> str:
        return task_counter(self.id)

    def reason(self) -> str:
        return f"{_KIND_LABEL[self.period]} task done: {self.title}"


TASKS: PartKey[Mapping[str, TaskRule]] = PartKey("tasks", {})


def task_counter(task_id: str, value: str = "") -> str:
    """The counter (per user, in the task's period hash) of a task's progress."""
    return f"task{SEP}{task_id}{SEP}{value}" if value else f"task{SEP}{task_id}"


def _tag_text(value: str) -> str:
    # Attribute values may hold any printable text; a tag keeps [A-Za-z0-9_-]
    # and percent-escapes the rest, so tags stay readable and unambiguous.
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_-") else
                   "".join(f"%{b:02X}" for b in ch.encode()) for ch in value)  # fmt: skip


def task_tag(task: TaskRule, period_key: str, value: str = "") -> str:
    """The bonus tag of a task done in one period (and attribute value)."""
    tag = f"task.{task.id}"
    if period_key != EVER_KEY:
        tag += f".{period_key.lower()}"
    if value:
        tag += f".{_tag_text(value)}"
    return tag


class _CompiledTasks(Compiled):
    rank = Rank.MILESTONE

    def __init__(self, tenant: TenantRules, tasks: tuple[TaskRule, ...]) -> None:
        self.tenant = tenant
        self.tasks = tasks
        kinds = {t.period for t in tasks}
        if any(t.working_days_only for t in tasks):
            kinds.add(Period.DAY)
        self.kinds = tuple(sorted(kinds))
        self.per_event = any(t.per_attribute for t in tasks)
        # A peak reads the event's quantity (its feeds pay 0 points).
        self.uses_quantity = any(t.measure is Measure.PEAK for t in tasks)
        self._per_value: dict[tuple[PeriodRef, ...], dict[tuple[str, ...], tuple[Step, ...]]] = {}

    def _working(self, refs: Refs) -> bool:
        return self.tenant.calendar.is_working_day(date.fromisoformat(refs[Period.DAY].key))

    def _task_steps(
        self, task: TaskRule, refs: Refs, restore: bool, value: str = ""
    ) -> tuple[Step, ...]:
        if task.working_days_only and not self._working(refs):
            return ()
        ref = refs[task.period]
        counter = task_counter(task.id, value)
        measure: Step
        if task.measure is Measure.DISTINCT:
            assert task.of is not None
            measure = Distinct(ref, counter, task.of, task.at_least)
        elif task.measure is Measure.PEAK:
            measure = Peak(ref, counter)
        else:
            by = Amount.POINTS if task.measure is Measure.POINTS else Amount.COUNT
            measure = Bump(ref, counter, by)
        if restore:
            return (measure,)
        bonus = Bonus(task_tag(task, ref.key, value), task.points, task.reason(), task.badge)
        return (measure, Cross((Threshold(task.at_least, bonus),), paid=ref))

    def steps(self, refs: Refs, *, restore: bool) -> tuple[Step, ...]:
        return tuple(s for t in self.tasks for s in self._task_steps(t, refs, restore))

    def event_steps(
        self, refs: Refs, event: Event, counterpart: str, *, restore: bool
    ) -> tuple[Step, ...]:
        values = tuple(
            event.attributes.get(t.per_attribute, "") if t.per_attribute else "" for t in self.tasks
        )
        key = (*values, "r" if restore else "")
        cached = self._per_value.setdefault(tuple(refs.values()), {})
        found = cached.get(key)
        if found is None:
            steps: list[Step] = []
            for task, value in zip(self.tasks, values, strict=True):
                if task.per_attribute and (not value or (task.values and value not in task.values)):
                    continue
                steps.extend(self._task_steps(task, refs, restore, value))
            found = tuple(steps)
            if len(self._per_value) > 4:  # periods turned over
                self._per_value = {tuple(refs.values()): cached}
            if len(cached) < _PER_VALUE_KEPT:
                cached[key] = found
        return found


def feeds_of(
    c: Checker, raw: Any, actions: Mapping[str, ActionRule], path: str, *, any_ok: bool = False
) -> tuple[TaskFeed, ...]:
    """Feeds named in a rule file: `[action | {action, role}, ...]`, or "*"
    (any action) when `any_ok`; problems go to `c`."""
    if any_ok and raw == "*":
        return (TaskFeed("*"),)
    if not isinstance(raw, list) or not raw:
        c.fail(path, "must be a non-empty list of actions" + (' or "*"' if any_ok else ""))
        return ()
    feeds: list[TaskFeed] = []
    for i, item in enumerate(raw):
        p = f"{path}[{i}]"
        action: Any = item if isinstance(item, str) else None
        role_name: Any = None
        if isinstance(item, Mapping):
            c.unknown(item, {"action", "role"}, p)
            action, role_name = item.get("action"), item.get("role")
        if not (isinstance(action, str) and ACTION_RE.match(action)):
            c.fail(p, "must be an action key or {action, role}")
            continue
        rule = actions.get(action)
        if rule is None:
            c.fail(p, f"no action {action!r} in this rule set")
            continue
        if role_name is None:
            role = rule.credits[0].role
        elif role_name in ("actor", "target"):
            role = Role.ACTOR if role_name == "actor" else Role.TARGET
            if rule.credit(role) is None:
                c.fail(f"{p}.role", f"action {action!r} has no {role_name} credit")
                continue
        else:
            c.fail(f"{p}.role", f"must be actor or target, got {role_name!r}")
            continue
        feeds.append(TaskFeed(action, role))
    return tuple(feeds)


def _reward(c: Checker, raw: Any, path: str) -> tuple[int, str]:
    reward = c.mapping(raw, path) or {}
    c.unknown(reward, {"points", "badge"}, path)
    badge = reward.get("badge", "")
    if not isinstance(badge, str):
        c.fail(f"{path}.badge", "must be a badge id")
        badge = ""
    points = c.integer(reward.get("points", 0), f"{path}.points", 0, _REWARD_MAX)
    if not points and not badge:
        c.fail(path, "needs points (1-100000) or a badge")
    return points, badge


def _per_attribute(c: Checker, m: Mapping[str, Any], path: str) -> tuple[str, list[str]]:
    per_attribute = m.get("per_attribute", "")
    if per_attribute and not (isinstance(per_attribute, str) and ATTRIBUTE_RE.match(per_attribute)):
        c.fail(f"{path}.per_attribute", "must be an attribute name")
        per_attribute = ""
    values = m.get("values", [])
    if not (
        isinstance(values, list)
        and len(values) <= _VALUES_MAX
        and all(isinstance(v, str) and one_line(v, 256) and v for v in values)
    ):
        c.fail(f"{path}.values", f"must be a list of at most {_VALUES_MAX} attribute values")
        values = []
    if values and not per_attribute:
        c.fail(f"{path}.values", "needs per_attribute (the attribute the values are of)")
    return str(per_attribute), values


def _condition(
    c: Checker, m: Mapping[str, Any], actions: Mapping[str, ActionRule], path: str
) -> tuple[Measure, tuple[TaskFeed, ...], Member | None] | None:
    given = [k for k in _CONDITIONS if k in m]
    if len(given) != 1:
        c.fail(path, f"needs exactly one condition of {', '.join(_CONDITIONS)}, got {len(given)}")
        return None
    measure = Measure(given[0])
    if measure is Measure.STREAK:
        if m["streak"] is not True:
            c.fail(f"{path}.streak", "must be true (the task counts the best streak)")
        if m.get("period") != "ever":
            c.fail(f"{path}.period", "a streak task is a growth task: period ever")
        return measure, (), None
    if measure is not Measure.DISTINCT:
        feeds = feeds_of(
            c, m[given[0]], actions, f"{path}.{given[0]}", any_ok=measure is Measure.POINTS
        )
        if measure is Measure.PEAK:
            for i, feed in enumerate(feeds):
                credit = actions[feed.action].credit(feed.role or Role.ACTOR)
                if credit is not None and credit.points:
                    c.fail(
                        f"{path}.peak[{i}]",
                        f"action {feed.action!r} pays {credit.points} points per unit; a peak "
                        "reads the event's quantity (a count), so its feeds must pay 0 points",
                    )
        return measure, feeds, None
    d = c.mapping(m["distinct"], f"{path}.distinct") or {}
    c.unknown(d, {"feeds", "of"}, f"{path}.distinct")
    feeds = feeds_of(c, d.get("feeds"), actions, f"{path}.distinct.feeds")
    raw_of = d.get("of")
    of = _OF.get(raw_of) if isinstance(raw_of, str) else None
    if of is None:
        c.fail(f"{path}.distinct.of", f"must be one of {', '.join(_OF)}, got {d.get('of')!r}")
    return measure, feeds, of


def _task(
    c: Checker, task_id: Any, raw: Any, actions: Mapping[str, ActionRule], path: str
) -> TaskRule | None:
    if not (isinstance(task_id, str) and TAG_ID_RE.match(task_id)):
        c.fail(path, "task ids are 1-48 chars of a-z 0-9 _ - starting with a letter or digit")
        return None
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, _TASK_KEYS, path)
    name, name_en = names(c, m, path)
    raw_period = m.get("period")
    period = _PERIODS.get(raw_period) if isinstance(raw_period, str) else None
    if period is None:
        c.fail(f"{path}.period", f"must be one of {', '.join(_PERIODS)}, got {m.get('period')!r}")
        period = Period.DAY
    condition = _condition(c, m, actions, path)
    if condition is None:
        return None
    measure, feeds, of = condition
    if "at_least" not in m:
        c.fail(f"{path}.at_least", "is required")
    at_least = c.integer(m.get("at_least", 1), f"{path}.at_least", 1, _TARGET_MAX)
    points, badge = _reward(c, m.get("reward", {}), f"{path}.reward")
    per_attribute, values = _per_attribute(c, m, path)
    return TaskRule(
        id=task_id,
        name=str(name),
        name_en=str(name_en),
        period=period,
        measure=measure,
        feeds=feeds,
        at_least=at_least,
        points=points,
        badge=badge,
        of=of,
        per_attribute=str(per_attribute),
        values=frozenset(values),
        working_days_only=c.boolean(m.get("working_days_only", False), f"{path}.working_days_only"),
    )


class Tasks(Mechanic):
    name = "tasks"
    rule_set_key = "tasks"

    def parse_rule_set(
        self, c: Checker, raw: Any, actions: Mapping[str, ActionRule], path: str
    ) -> Any:
        m = c.mapping(raw, path)
        if not m:
            return None
        if len(m) > _TASKS_MAX:
            c.fail(path, f"at most {_TASKS_MAX} tasks")
        tasks = {}
        for task_id, raw_task in m.items():
            task = _task(c, task_id, raw_task, actions, f"{path}.{task_id}")
            if task is not None:
                tasks[task.id] = task
        return tasks or None

    def review_rule_set(self, c: Checker, parts: Mapping[str, Any], path: str) -> None:
        badges = parts.get(BADGES.name, {})
        for task in parts.get(self.name, {}).values():
            if task.badge and task.badge not in badges:
                c.fail(
                    f"{path}.{task.id}.reward.badge",
                    f"no badge {task.badge!r} in this rule set's badges",
                )

    def bonus_info(self, tenant: TenantRules, tag: str) -> BonusInfo | None:
        if not tag.startswith("task."):
            return None
        parts = tag.split(".", 3)
        task = tenant.part(TASKS).get(parts[1])
        if task is None:
            return BonusInfo("task", parts[1], parts[1], parts[1], reason=f"Task done: {parts[1]}")
        # Period keys are upper-cased ISO text ("2026-W49") lowered in tags.
        key = parts[2].upper() if len(parts) > 2 and task.period is not Period.EVER else ""
        return BonusInfo("task", task.id, task.name, task.name_en, key, task.badge, task.reason())

    def compile(self, ctx: CompileContext) -> Compiled | None:
        tasks = tuple(
            t for t in ctx.tenant.part(TASKS).values()
            if any(f.matches(ctx.rule.key, ctx.credit.role) for f in t.feeds)
        )  # fmt: skip
        return _CompiledTasks(ctx.tenant, tasks) if tasks else None

    def describe_rule_set(self, parts: Mapping[str, Any]) -> list[str]:
        """One line a task: "send-3-messages  day: count message.text, ... >= 3 -> 5 points"."""
        period_names = {kind: name for name, kind in _PERIODS.items()}
        of_names = {Member.GROUP: "groups", Member.COUNTERPART: "colleagues",
                    Member.DEPARTMENT: "departments"}  # fmt: skip

        def feed(f: TaskFeed) -> str:
            if f.action == "*":
                return "any action"
            # An action key alone means its actor credit: name only the target.
            return f"{f.action} (target)" if f.role is Role.TARGET else f.action

        lines = []
        for t in parts.get(self.name, {}).values():
            period = period_names[t.period] + (", working days only" if t.working_days_only else "")
            condition = t.measure.value
            if t.of is not None:
                condition += f" {of_names.get(t.of, t.of.value)} of"
            if t.feeds:
                condition += " " + ", ".join(feed(f) for f in t.feeds)
            if t.per_attribute:
                condition += f", per {t.per_attribute}"
                if t.values:
                    condition += f" ({', '.join(sorted(t.values))})"
            reward = ([f"{t.points} points"] if t.points else []) + (
                [f"badge {t.badge}"] if t.badge else []
            )
            lines.append(
                f"task     {t.id:<22} {period}: {condition} >= {t.at_least} -> "
                + " and ".join(reward)
            )
        return lines
