"""Streaks: consecutive active working days on the tenant's business calendar.

Rule file, a rule-set block (docs/progression.md, "Streaks"):

    streak:
      name: 连续登录
      name_en: Login streak
      actions: [login]          # what makes a day active (default [login])
      freezes_max: 2            # streak freezes a user may hold (default 2)
      milestones:
        - {days: 5, points: 20, freezes: 1}
        - {days: 20, points: 100, badge: steady}

A day is active when the user was paid for one of the actions on it (in
the tenant's zone). Only working days count: a Saturday, a public holiday
neither breaks nor extends a streak; a make-up Saturday (调休) is a working
day like any other. A missed working day breaks the streak unless the user
holds a freeze, used up automatically when they are next active (one per
missed day). An event that arrives late marks its own day, so arrival order
never changes a streak (nor the freezes left: a late event for a day a
freeze covered gives the freeze back).

Compiles each fed credit to a Day step on the user's "streak" bitmap (bit =
the day's business-day number) with a "streak-cover" bitmap and the freeze
counter, a Cross paying each milestone once per run (bonus tag
"streak.<days>.<first day of the run>"; growth tasks on the streak cross
here too), and a Peak keeping the best streak. A rebuild marks the days
again and restores covers and freezes from the ledger's bonus rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from pointsd.service.domain import SEP, Period
from pointsd.service.domain.steps import Bonus, Cross, Day, Freezes, Peak, Step, Threshold
from pointsd.service.rules.checker import Checker
from pointsd.service.rules.mechanics.badges import BADGES
from pointsd.service.rules.mechanics.base import (
    BonusInfo,
    CompileContext,
    Compiled,
    Mechanic,
    Rank,
    Refs,
)
from pointsd.service.rules.mechanics.levels import names
from pointsd.service.rules.mechanics.tasks import (
    TASKS,
    Measure,
    TaskFeed,
    TaskRule,
    feeds_of,
    task_tag,
)
from pointsd.service.rules.model import ActionRule, PartKey, TenantRules
from pointsd.service.rules.periods import EVER_KEY

__all__ = [
    "BEST",
    "COVER",
    "DAYS",
    "FREEZES",
    "SCAN_DAYS",
    "STREAK",
    "Milestone",
    "StreakNow",
    "StreakRule",
    "Streaks",
    "streak_now",
]

# Bitmap names (storage keys them per user) and ever counters.
DAYS = "streak"
COVER = "streak-cover"
FREEZES = f"streak{SEP}freezes"
BEST = f"streak{SEP}best"
# Working days a run is followed either way (longer runs count this far).
SCAN_DAYS = 400
# A bitmap is dropped after this long without activity (the best streak,
# an ever counter, stays).
KEEP_S = 400 * 86_400
_KEYS = {"name", "name_en", "actions", "freezes_max", "milestones"}
_MILESTONE_KEYS = {"days", "points", "freezes", "badge"}


@dataclass(frozen=True, slots=True)
class Milestone:
    days: int
    points: int
    freezes: int = 0
    badge: str = ""

    def tag(self) -> str:
        return f"streak.{self.days}"


@dataclass(frozen=True, slots=True)
class StreakRule:
    name: str
    name_en: str
    feeds: tuple[TaskFeed, ...]
    freezes_max: int
    milestones: tuple[Milestone, ...]

    @property
    def title(self) -> str:
        return f"{self.name_en} ({self.name})" if self.name != self.name_en else self.name

    def next_milestone(self, current: int) -> Milestone | None:
        return next((m for m in self.milestones if m.days > current), None)


STREAK: PartKey[StreakRule | None] = PartKey("streaks", None)


class _CompiledStreak(Compiled):
    rank = Rank.RECORD

    def __init__(self, tenant: TenantRules, rule: StreakRule, tasks: tuple[TaskRule, ...]) -> None:
        self.calendar = tenant.calendar
        self.rule = rule
        self.kinds = (Period.DAY, Period.EVER)
        self.milestones = tuple(
            Threshold(m.days, Bonus(m.tag(), m.points, _milestone_reason(rule, m), m.badge),
                      per_run=True, freezes=m.freezes)
            for m in rule.milestones
        )  # fmt: skip
        # Growth tasks on the streak cross the best streak: once ever.
        self.tasks = tuple(
            Threshold(t.at_least, Bonus(task_tag(t, EVER_KEY), t.points, t.reason(), t.badge))
            for t in tasks
        )

    def steps(self, refs: Refs, *, restore: bool) -> tuple[Step, ...]:
        ordinal = self.calendar.ordinal(date.fromisoformat(refs[Period.DAY].key))
        if ordinal is None:
            return ()  # not a working day: neither breaks nor extends
        ever = refs[Period.EVER]
        best = Peak(ever, BEST, of_value=True)
        if restore:
            return (Day(DAYS, ordinal, SCAN_DAYS, KEEP_S, COVER), best)
        freezes = None
        if self.rule.freezes_max:
            n = self.rule.freezes_max
            freezes = Freezes(
                ever, FREEZES, n, _compact(self.calendar.day_of(ordinal)),
                tuple(_compact(self.calendar.day_of(ordinal - k)) for k in range(1, n + 1)
                      if ordinal - k >= 0),
                tuple(_compact(self.calendar.day_of(ordinal + k)) for k in range(1, n + 1)),
            )  # fmt: skip
        steps: list[Step] = [Day(DAYS, ordinal, SCAN_DAYS, KEEP_S, COVER, freezes)]
        if self.milestones:
            steps.append(Cross(self.milestones, paid=ever))
        steps.append(best)
        if self.tasks:
            steps.append(Cross(self.tasks, paid=ever))
        return tuple(steps)


def _compact(day: date) -> str:
    """A date as it appears in freeze tags: YYYYMMDD (tags are [a-z0-9._-])."""
    return day.strftime("%Y%m%d")


def freeze_day(text: str) -> date | None:
    """The date of a freeze tag's day (None if it is not one)."""
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _milestone_reason(rule: StreakRule, m: Milestone) -> str:
    return f"Streak: {m.days} working days in a row ({rule.title})"


def _milestone(c: Checker, raw: Any, path: str, before: list[Milestone]) -> Milestone | None:
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, _MILESTONE_KEYS, path)
    days = c.integer(m.get("days", 0), f"{path}.days", 2, SCAN_DAYS)
    if before and days <= before[-1].days:
        c.fail(f"{path}.days", f"must be above the previous milestone's {before[-1].days}")
        return None
    points = c.integer(m.get("points", 0), f"{path}.points", 0, 100_000)
    freezes = c.integer(m.get("freezes", 0), f"{path}.freezes", 0, 10)
    badge = m.get("badge", "")
    if not isinstance(badge, str):
        c.fail(f"{path}.badge", "must be a badge id")
        badge = ""
    if not (points or freezes or badge):
        c.fail(path, "needs points, freezes or a badge")
    return Milestone(days, points, freezes, badge)


class Streaks(Mechanic):
    name = "streaks"
    rule_set_key = "streak"

    def parse_rule_set(
        self, c: Checker, raw: Any, actions: Mapping[str, ActionRule], path: str
    ) -> Any:
        m = c.mapping(raw, path)
        if not m:
            return None
        c.unknown(m, _KEYS, path)
        name, name_en = names(c, {"name": "连续活跃", "name_en": "Streak", **m}, path)
        feeds = feeds_of(c, m.get("actions", ["login"]), actions, f"{path}.actions")
        freezes_max = c.integer(m.get("freezes_max", 2), f"{path}.freezes_max", 0, 10)
        raw_ms = m.get("milestones", [])
        milestones: list[Milestone] = []
        if not isinstance(raw_ms, list):
            c.fail(f"{path}.milestones", "must be a list of {days, points, freezes, badge}")
            raw_ms = []
        for i, item in enumerate(raw_ms):
            found = _milestone(c, item, f"{path}.milestones[{i}]", milestones)
            if found is not None:
                milestones.append(found)
        if any(ms.freezes for ms in milestones) and not freezes_max:
            c.fail(f"{path}.freezes_max", "is 0, but a milestone grants freezes")
        return StreakRule(name, name_en, feeds, freezes_max, tuple(milestones))

    def review_rule_set(self, c: Checker, parts: Mapping[str, Any], path: str) -> None:
        rule = parts.get(self.name)
        badges = parts.get(BADGES.name, {})
        for i, m in enumerate(rule.milestones if rule else ()):
            if m.badge and m.badge not in badges:
                c.fail(
                    f"{path}.milestones[{i}].badge",
                    f"no badge {m.badge!r} in this rule set's badges",
                )
        for task in parts.get(TASKS.name, {}).values():
            if task.measure is Measure.STREAK and rule is None:
                c.fail(f"{path}", f"task {task.id!r} counts the streak, and this rule set has none")

    def bonus_info(self, tenant: TenantRules, tag: str) -> BonusInfo | None:
        rule = tenant.part(STREAK)
        kind, _, rest = tag.partition(".")
        if kind == "streak" and rule is not None:
            days, _, start = rest.partition(".")
            first = _day_text(tenant, start)
            return BonusInfo(
                "streak", days, rule.name, rule.name_en, first,
                next((m.badge for m in rule.milestones if str(m.days) == days), ""),
                f"Streak: {days} working days in a row ({rule.title})",
            )  # fmt: skip
        if kind in ("freeze", "freeze-back"):
            covered = freeze_day(rest)
            day = covered.isoformat() if covered else ""
            used = kind == "freeze"
            return BonusInfo(
                "freeze", "used" if used else "returned", "补签卡" if used else "补签卡退回",
                "Streak freeze used" if used else "Streak freeze returned", day,
                reason=f"Streak freeze used for {day} (a missed working day)" if used else
                f"Streak freeze returned: {day} was active after all",
            )  # fmt: skip
        return None

    def describe_rule_set(self, parts: Mapping[str, Any]) -> list[str]:
        rule = parts.get(self.name)
        if rule is None:
            return []
        lines = [
            f"streak   {rule.title}: working days with {', '.join(f.action for f in rule.feeds)}; "
            f"at most {rule.freezes_max} freeze(s) held"
        ]
        for m in rule.milestones:
            reward = (
                ([f"{m.points} points"] if m.points else [])
                + ([f"{m.freezes} freeze(s)"] if m.freezes else [])
                + ([f"badge {m.badge}"] if m.badge else [])
            )
            lines.append(f"streak   {m.days} days in a row -> {' and '.join(reward)}, once per run")
        return lines

    def compile(self, ctx: CompileContext) -> Compiled | None:
        rule = ctx.tenant.part(STREAK)
        if rule is None or not any(f.matches(ctx.rule.key, ctx.credit.role) for f in rule.feeds):
            return None
        tasks = tuple(t for t in ctx.tenant.part(TASKS).values() if t.measure is Measure.STREAK)
        return _CompiledStreak(ctx.tenant, rule, tasks)


def _day_text(tenant: TenantRules, ordinal: str) -> str:
    """The date of a business-day number in a tag ("" when it is none)."""
    if not ordinal.isdigit():
        return ""
    return tenant.calendar.day_of(int(ordinal)).isoformat()


@dataclass(frozen=True, slots=True)
class StreakNow:
    current: int
    # Today is a working day without an active mark yet.
    today_needed: bool
    today_working: bool


def streak_now(
    tenant: TenantRules, today: date, held: int, marked: Callable[[int], bool]
) -> StreakNow:
    """The streak as it stands on `today` (tenant's local date): the run up
    to today, or up to the last working day when today is still to come; a
    gap the held freezes would bridge on the next active day does not break
    it yet. `marked(n)`: business day n is active or covered."""
    calendar = tenant.calendar
    ordinal = calendar.ordinal(today)
    if ordinal is not None and marked(ordinal):
        return StreakNow(_run(marked, ordinal), False, True)
    if ordinal is not None:
        last: int | None = ordinal - 1
    else:
        previous = calendar.previous_working_day(today)
        last = calendar.ordinal(previous) if previous is not None else None
    needed, working = ordinal is not None, ordinal is not None
    if last is None or last < 0:
        return StreakNow(0, needed, working)
    if marked(last):
        return StreakNow(_run(marked, last), needed, working)
    for missed in range(1, held + 1):
        if last - missed >= 0 and marked(last - missed):
            return StreakNow(_run(marked, last - missed), needed, working)
    return StreakNow(0, needed, working)


def _run(marked: Callable[[int], bool], end: int) -> int:
    n = 0
    while n < SCAN_DAYS and end - n >= 0 and marked(end - n):
        n += 1
    return n
