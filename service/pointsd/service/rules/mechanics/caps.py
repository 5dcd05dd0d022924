"""Caps: at most N events or N points per day, week, month or ever; per
colleague ("at most 5 a day from the same colleague") or per attribute value
("once ever per feature").

Rule file, in an actor/target credit: `daily_count_max`, `daily_points_max`,
`pair_daily_count_max`, `once_per_day`, `once_ever`, and `limits: [{per,
count | points, per_counterpart, by_attribute}]`. Two limits on one counter
collapse to the stricter.

Compiles to one Check (refuse at a count cap, clip at a points cap) and one
Bump per limit. Rebuild replays the Bumps, so caps hold after a rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pointsd.service.domain import SEP, Event, Metric, Period, PeriodRef, StoreCode
from pointsd.service.domain.steps import Amount, Bump, Check, Step
from pointsd.service.rules.checker import ATTRIBUTE_RE, Checker
from pointsd.service.rules.mechanics.base import CompileContext, Compiled, Mechanic, Rank, Refs
from pointsd.service.rules.model import ActionRule, CreditRule, PartKey

__all__ = ["LIMITS", "Caps", "LimitRule"]

_PERIOD_WORDS = {
    Period.DAY: "a day",
    Period.WEEK: "a week",
    Period.MONTH: "a month",
    Period.EVER: "ever",
}
_AMOUNT = {Metric.COUNT: Amount.COUNT, Metric.POINTS: Amount.POINTS}


@dataclass(frozen=True, slots=True)
class LimitRule:
    """At most `max` events (COUNT) or points (POINTS) per period.

    `per_counterpart`: counted separately for each other user ("at most 5 a
    day from the same colleague"). `by_attribute`: counted separately for each
    value of that event attribute ("once ever per feature").
    """

    period: Period
    metric: Metric
    max: int
    per_counterpart: bool = False
    by_attribute: str = ""

    def label(self) -> str:
        if self.metric is Metric.COUNT and self.max == 1:
            text = "once " + _PERIOD_WORDS[self.period]
        else:
            if self.metric is Metric.POINTS:
                unit = "point" if self.max == 1 else "points"
            else:
                unit = "times"
            text = f"at most {self.max} {unit} {_PERIOD_WORDS[self.period]}"
        if self.per_counterpart:
            text += " from the same colleague"
        if self.by_attribute:
            text += f" per {self.by_attribute}"
        return text


# A credit's limits, in the order the rule file gives them.
LIMITS: PartKey[tuple[LimitRule, ...]] = PartKey("caps", ())

_SHORTHANDS: list[tuple[str, Period, Metric, bool]] = [
    ("daily_count_max", Period.DAY, Metric.COUNT, False),
    ("daily_points_max", Period.DAY, Metric.POINTS, False),
    ("pair_daily_count_max", Period.DAY, Metric.COUNT, True),
]
_LIMIT_KEYS = {"per", "count", "points", "per_counterpart", "by_attribute"}


def _limit(c: Checker, raw: Any, path: str) -> LimitRule | None:
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, _LIMIT_KEYS, path)
    per = m.get("per")
    try:
        period = Period(str(per))
    except ValueError:
        c.fail(f"{path}.per", f"must be one of day, week, month, ever, got {per!r}")
        return None
    if ("count" in m) == ("points" in m):
        c.fail(path, "needs exactly one of `count` or `points`")
        return None
    metric = Metric.COUNT if "count" in m else Metric.POINTS
    maximum = c.integer(m[metric.value], f"{path}.{metric.value}", 1, 10**9)
    by_attribute = m.get("by_attribute", "")
    if by_attribute and not (isinstance(by_attribute, str) and ATTRIBUTE_RE.match(by_attribute)):
        c.fail(f"{path}.by_attribute", f"must be an attribute name, got {by_attribute!r}")
    return LimitRule(
        period=period,
        metric=metric,
        max=maximum,
        per_counterpart=c.boolean(m.get("per_counterpart", False), f"{path}.per_counterpart"),
        by_attribute=str(by_attribute or ""),
    )


@dataclass(slots=True)
class _Limit:
    rule: LimitRule
    counter: str
    label: str
    number: int


class _CompiledCaps(Compiled):
    rank = Rank.LIMIT

    def __init__(self, limits: list[_Limit]) -> None:
        self.limits = limits
        self.kinds = tuple(dict.fromkeys(lim.rule.period for lim in limits))
        self.per_event = any(lim.rule.per_counterpart or lim.rule.by_attribute for lim in limits)
        # Steps of the limits that are the same for every event, per period.
        self._fixed: dict[PeriodRef, tuple[Check, Bump]] = {}

    def _pair(self, lim: _Limit, period: PeriodRef, counter: str) -> tuple[Check, Bump]:
        check = Check(period, counter, lim.rule.metric, lim.rule.max, lim.label, lim.number)
        return check, Bump(period, counter, _AMOUNT[lim.rule.metric])

    def steps(self, refs: Refs, *, restore: bool) -> tuple[Step, ...]:
        pairs = [self._pair(lim, refs[lim.rule.period], lim.counter) for lim in self.limits]
        return _program(pairs, restore)

    def event_steps(
        self, refs: Refs, event: Event, counterpart: str, *, restore: bool
    ) -> tuple[Step, ...]:
        pairs = []
        for lim in self.limits:
            period = refs[lim.rule.period]
            if not (lim.rule.by_attribute or lim.rule.per_counterpart):
                pair = self._fixed.get(period)
                if pair is None:
                    if len(self._fixed) > 16:  # periods turned over: forget old ones
                        self._fixed.clear()
                    pair = self._fixed[period] = self._pair(lim, period, lim.counter)
                pairs.append(pair)
                continue
            counter = lim.counter
            if lim.rule.by_attribute:
                value = event.attributes.get(lim.rule.by_attribute, "")
                counter += f"{SEP}@{lim.rule.by_attribute}={value}"
            if lim.rule.per_counterpart:
                counter += f"{SEP}~{counterpart}"
            pairs.append(self._pair(lim, period, counter))
        return _program(pairs, restore)

    def _label(self, limit: int) -> str:
        # The number is the first recording's: rules reloaded since may have
        # fewer limits (then the text says "a limit").
        return self.limits[limit - 1].label if 0 < limit <= len(self.limits) else ""

    def award_note(self, points: int, limit: int) -> str:
        label = self._label(limit)
        return f" (clipped by limit: {label})" if label and points else ""

    def refusal_text(self, code: StoreCode, limit: int) -> str | None:
        if code is StoreCode.CAPPED:
            return f"limit reached ({self._label(limit) or 'a limit'})"
        return None


def _program(pairs: list[tuple[Check, Bump]], restore: bool) -> tuple[Step, ...]:
    """Checks first (their order decides which cap is named), then the bumps;
    a rebuild replays only the bumps."""
    bumps = tuple(b for _, b in pairs)
    return bumps if restore else (*(c for c, _ in pairs), *bumps)


class Caps(Mechanic):
    name = "caps"
    credit_keys = frozenset(
        {"daily_count_max", "daily_points_max", "pair_daily_count_max", "once_per_day",
         "once_ever", "limits"}
    )  # fmt: skip

    def parse_credit(self, c: Checker, m: Mapping[str, Any], path: str) -> Any:
        limits: list[LimitRule] = []
        for key, period, metric, pair in _SHORTHANDS:
            if key in m:
                limits.append(
                    LimitRule(period, metric, c.integer(m[key], f"{path}.{key}", 1, 10**9), pair)
                )
        if c.boolean(m.get("once_per_day", False), f"{path}.once_per_day"):
            limits.append(LimitRule(Period.DAY, Metric.COUNT, 1))
        if c.boolean(m.get("once_ever", False), f"{path}.once_ever"):
            limits.append(LimitRule(Period.EVER, Metric.COUNT, 1))
        raw_limits = m.get("limits", [])
        if not isinstance(raw_limits, list):
            c.fail(f"{path}.limits", "must be a list")
            raw_limits = []
        for i, item in enumerate(raw_limits):
            limit = _limit(c, item, f"{path}.limits[{i}]")
            if limit is not None:
                limits.append(limit)
        return tuple(limits) or None

    def review_action(self, c: Checker, rule: ActionRule, path: str) -> ActionRule:
        limits = [lim for cr in rule.credits for lim in cr.part(LIMITS)]
        if any(lim.per_counterpart for lim in limits) and not rule.target_required:
            c.fail(path, "a per_counterpart limit needs target_required: true")
        keyed = {lim.by_attribute for lim in limits if lim.by_attribute}
        missing = sorted(keyed - set(rule.attributes_required))
        if not missing:
            return rule
        return replace(rule, attributes_required=(*rule.attributes_required, *missing))

    def describe(self, credit: CreditRule) -> str:
        return ", ".join(lim.label() for lim in credit.part(LIMITS)) or "no limits"

    def compile(self, ctx: CompileContext) -> Compiled | None:
        strictest: dict[tuple[Period, Metric, bool, str], LimitRule] = {}
        for lim in ctx.credit.part(LIMITS):
            key = (lim.period, lim.metric, lim.per_counterpart, lim.by_attribute)
            known = strictest.get(key)
            # Two limits on one counter: the stricter one decides.
            if known is None or lim.max < known.max:
                strictest[key] = lim
        if not strictest:
            return None
        limits = [
            _Limit(lim, SEP.join((ctx.base, lim.metric.value[0])), lim.label(), number)
            for number, lim in enumerate(strictest.values(), 1)
        ]
        return _CompiledCaps(limits)
