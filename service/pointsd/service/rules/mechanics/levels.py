"""Levels: named ranks on lifetime earned points, with privileges.

Rule file, a rule-set block:

    levels:
      - {id: newcomer, name: 新人小白, name_en: Newcomer, from: 0, privileges: [...]}
      - {id: communicator, name: 沟通达人, name_en: Communicator, from: 500, ...}

The first level starts at 0; each next one at more points than the one
before (thresholds never overlap). A user's level is the last whose `from`
their lifetime earned points reach. Spending never lowers lifetime earned
points, so a level once reached stays (a negative adjustment, an operator's
correction, can lower it).

Compiles every credit to one Reach step: reaching a level during an award
(its bonuses included) writes a zero-point milestone row
"b:<user>:level.<id>" and reports the level-up. A rebuild replays nothing:
levels follow from the lifetime earned points the ledger restores, and the
milestone rows stay in the ledger.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pointsd.service.domain import Period, PeriodRef
from pointsd.service.domain.steps import Bonus, Reach, Step, Threshold
from pointsd.service.rules.checker import Checker, one_line
from pointsd.service.rules.mechanics.base import (
    BonusInfo,
    CompileContext,
    Compiled,
    Mechanic,
    Rank,
    Refs,
)
from pointsd.service.rules.model import ActionRule, PartKey, TenantRules
from pointsd.service.rules.periods import EVER_KEY

__all__ = ["LEVELS", "PRIVILEGE_RE", "TAG_ID_RE", "Level", "LevelRules", "Levels", "names"]

# Ids of levels, tasks and badges: they become part of bonus tags.
TAG_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
PRIVILEGE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_LEVEL_KEYS = {"id", "name", "name_en", "from", "privileges"}
_LEVELS_MAX = 50
_PRIVILEGES_MAX = 20
_POINTS_MAX = 10**12


@dataclass(frozen=True, slots=True)
class Level:
    number: int  # 1-based
    id: str
    name: str
    name_en: str
    min_points: int
    privileges: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        return f"level.{self.id}"

    @property
    def title(self) -> str:
        return f"{self.name_en} ({self.name})" if self.name != self.name_en else self.name


@dataclass(frozen=True, slots=True)
class LevelRules:
    levels: tuple[Level, ...]
    # The one step every credit of the rule set compiles to (programs share it).
    reach: Reach

    def at(self, earned: int) -> Level:
        """The level of a user with `earned` lifetime points."""
        found = self.levels[0]
        for level in self.levels:
            if earned >= level.min_points:
                found = level
        return found

    def after(self, level: Level) -> Level | None:
        return self.levels[level.number] if level.number < len(self.levels) else None

    def get(self, level_id: str) -> Level | None:
        return next((lv for lv in self.levels if lv.id == level_id), None)


LEVELS: PartKey[LevelRules | None] = PartKey("levels", None)


class _CompiledLevels(Compiled):
    rank = Rank.MILESTONE + 5

    def __init__(self, step: Reach) -> None:
        self.step = step

    def steps(self, refs: Refs, *, restore: bool) -> tuple[Step, ...]:
        return () if restore else (self.step,)


def names(c: Checker, m: Mapping[str, Any], path: str) -> tuple[str, str]:
    name = m.get("name")
    if not (one_line(name, 64) and name):
        c.fail(f"{path}.name", "must be one line of 1-64 characters")
        name = "?"
    name_en = m.get("name_en", name)
    if not (one_line(name_en, 64) and name_en):
        c.fail(f"{path}.name_en", "must be one line of 1-64 characters")
        name_en = str(name)
    return str(name), str(name_en)


def _level(c: Checker, item: Any, p: str, before: list[Level]) -> Level | None:
    m = c.mapping(item, p)
    if m is None:
        return None
    c.unknown(m, _LEVEL_KEYS, p)
    level_id = m.get("id")
    if not (isinstance(level_id, str) and TAG_ID_RE.match(level_id)):
        c.fail(f"{p}.id", "must be 1-48 chars of a-z 0-9 _ - starting with a letter or digit")
        return None
    if any(lv.id == level_id for lv in before):
        c.fail(f"{p}.id", f"level {level_id!r} is defined twice")
        return None
    name, name_en = names(c, m, p)
    if "from" not in m:
        c.fail(f"{p}.from", "is required (lifetime earned points)")
    low = c.integer(m.get("from", 0), f"{p}.from", 0, _POINTS_MAX)
    if not before and low != 0:
        c.fail(f"{p}.from", f"the first level starts at 0, got {low}")
    elif before and low <= before[-1].min_points:
        c.fail(
            f"{p}.from",
            f"must be above the previous level's {before[-1].min_points} "
            f"({before[-1].id!r}); thresholds must not overlap",
        )
    privileges = m.get("privileges", [])
    if not (
        isinstance(privileges, list)
        and len(privileges) <= _PRIVILEGES_MAX
        and all(isinstance(x, str) and PRIVILEGE_RE.match(x) for x in privileges)
    ):
        c.fail(
            f"{p}.privileges",
            f"must be a list of at most {_PRIVILEGES_MAX} ids (a-z 0-9 . _ -), "
            "e.g. tag.communicator",
        )
        privileges = []
    return Level(len(before) + 1, level_id, name, name_en, low, tuple(privileges))


class Levels(Mechanic):
    name = "levels"
    rule_set_key = "levels"

    def parse_rule_set(
        self, c: Checker, raw: Any, actions: Mapping[str, ActionRule], path: str
    ) -> Any:
        if raw == {} or raw is None:
            return None
        if not isinstance(raw, list) or not raw or len(raw) > _LEVELS_MAX:
            c.fail(path, f"must be a list of 1-{_LEVELS_MAX} levels")
            return None
        levels: list[Level] = []
        for i, item in enumerate(raw):
            level = _level(c, item, f"{path}[{i}]", levels)
            if level is not None:
                levels.append(level)
        if not levels:
            return None
        reach = Reach(
            tuple(
                Threshold(lv.min_points, Bonus(lv.tag, 0, f"Level up: {lv.title}"))
                for lv in levels[1:]
            ),
            paid=PeriodRef(Period.EVER, EVER_KEY, 0),
        )
        return LevelRules(tuple(levels), reach)

    def bonus_info(self, tenant: TenantRules, tag: str) -> BonusInfo | None:
        rules = tenant.part(LEVELS)
        if rules is None or not tag.startswith("level."):
            return None
        level = rules.get(tag.removeprefix("level."))
        if level is None:
            gone = tag.removeprefix("level.")
            return BonusInfo("level", gone, gone, gone, reason=f"Level up: {gone}")
        return BonusInfo(
            "level", level.id, level.name, level.name_en, reason=f"Level up: {level.title}"
        )

    def compile(self, ctx: CompileContext) -> Compiled | None:
        rules = ctx.tenant.part(LEVELS)
        if rules is None or len(rules.levels) < 2:
            return None
        return _CompiledLevels(rules.reach)

    def describe_rule_set(self, parts: Mapping[str, Any]) -> list[str]:
        rules: LevelRules | None = parts.get(self.name)
        if rules is None:
            return []
        return [
            f"level {lv.number:<2} {lv.id:<22} {lv.title}, from {lv.min_points} points"
            + (f"; {', '.join(lv.privileges)}" if lv.privileges else "")
            for lv in rules.levels
        ]
