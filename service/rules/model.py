"""The rule model: what a tenant's incentive rules say. Immutable, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from service.domain import Metric, Period, Role

__all__ = [
    "ActionRule",
    "BoardFeed",
    "BoardMember",
    "BoardRule",
    "BoardScope",
    "CreditRule",
    "LimitRule",
    "RuleBook",
    "TenantRules",
]

_PERIOD_WORDS = {
    Period.DAY: "a day",
    Period.WEEK: "a week",
    Period.MONTH: "a month",
    Period.EVER: "ever",
}


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


@dataclass(frozen=True, slots=True)
class CreditRule:
    """Points for one party of an event.

    `per_quantity` = 0: the event's quantity is ignored, each event earns
    `points`. `per_quantity` = N: `points` per N units of quantity, collected
    per day (e.g. 1 point per 30 online minutes, reported in any chunks).
    """

    role: Role
    points: int
    per_quantity: int = 0
    limits: tuple[LimitRule, ...] = ()
    min_interval_ms: int = 0


@dataclass(frozen=True, slots=True)
class ActionRule:
    key: str
    description: str
    # The actor's credit first when there is one.
    credits: tuple[CreditRule, ...]
    target_required: bool = False
    attributes_required: tuple[str, ...] = ()

    def credit(self, role: Role) -> CreditRule | None:
        return next((c for c in self.credits if c.role is role), None)


@dataclass(frozen=True, slots=True)
class TenantRules:
    tenant_id: str
    timezone: ZoneInfo
    shards: int
    rule_set: str
    actions: Mapping[str, ActionRule] = field(default_factory=dict)
    boards: Mapping[str, BoardRule] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RuleBook:
    tenants: Mapping[str, TenantRules]

    def tenant(self, tenant_id: str) -> TenantRules | None:
        return self.tenants.get(tenant_id)


class BoardMember(enum.StrEnum):
    USER = "user"
    GROUP = "group"


class BoardScope(enum.StrEnum):
    TENANT = "tenant"
    DEPARTMENT = "department"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class BoardFeed:
    """Credits of `action` ("*" = any) to `role` (None = either) feed the board."""

    action: str
    role: Role | None = None

    def matches(self, action: str, role: Role) -> bool:
        return (self.action in ("*", action)) and (self.role is None or self.role is role)


@dataclass(frozen=True, slots=True)
class BoardRule:
    """A leaderboard: who is ranked, by what, over which periods and scopes.

    score "points": the points of each awarded credit; "count": 1 per awarded
    credit. member "group": the event's group is ranked (its members' credits
    add up). newcomer_days > 0: only credits within that many days of the
    user's first activity (or attributes["join_date"], YYYY-MM-DD) count.
    keep_periods: how many past periods stay readable. winners: top N per
    closed week/month written to the hall of fame (0 = none).
    """

    name: str
    description: str
    score: Metric
    member: BoardMember
    feeds: tuple[BoardFeed, ...]
    periods: tuple[Period, ...]
    scopes: tuple[BoardScope, ...]
    newcomer_days: int = 0
    keep_periods: int = 3
    winners: int = 10

    def feeds_credit(self, action: str, role: Role) -> bool:
        return any(f.matches(action, role) for f in self.feeds)
