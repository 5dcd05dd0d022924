"""The rule model: what a tenant's incentive rules say. Immutable, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from service.domain import Metric, Period, Role

__all__ = ["ActionRule", "CreditRule", "LimitRule", "RuleBook", "TenantRules"]

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


@dataclass(frozen=True, slots=True)
class RuleBook:
    tenants: Mapping[str, TenantRules]

    def tenant(self, tenant_id: str) -> TenantRules | None:
        return self.tenants.get(tenant_id)
