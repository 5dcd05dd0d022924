"""The rule model: what a tenant's incentive rules say. Immutable, no I/O.

This is the skeleton every rule file has (tenants, rule sets, actions, the
points of each credit). What a mechanic adds (caps, a throttle, boards, ...)
is stored in `parts`, under the mechanic's own key, as the mechanic parsed
it (service/pointsd/service/rules/mechanics/); `part(KEY)` reads it back typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast
from zoneinfo import ZoneInfo

from pointsd.service.domain import Role
from pointsd.service.rules.calendar import WEEKDAYS_CALENDAR, BusinessCalendar

if TYPE_CHECKING:
    from pointsd.service.rules.mechanics.base import Mechanic

__all__ = ["ActionRule", "CreditRule", "PartKey", "RuleBook", "TenantRules"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PartKey(Generic[T]):
    """Names one mechanic's part of a credit or a rule set, and its type."""

    name: str
    default: T


def _part(parts: Mapping[str, Any], key: PartKey[T]) -> T:
    return cast(T, parts.get(key.name, key.default))


@dataclass(frozen=True, slots=True)
class CreditRule:
    """Points for one party of an event, and what mechanics say of them."""

    role: Role
    points: int
    parts: Mapping[str, Any] = field(default_factory=dict)

    def part(self, key: PartKey[T]) -> T:
        return _part(self.parts, key)


@dataclass(frozen=True, slots=True)
class ActionRule:
    key: str
    description: str
    # The actor's credit first when there is one.
    credits: tuple[CreditRule, ...]
    target_required: bool = False
    attributes_required: tuple[str, ...] = ()
    # The actor's credit is a budget for giving (a thanks card): when it is
    # refused (capped, throttled) the event's other credits are not applied.
    actor_gates: bool = False

    def credit(self, role: Role) -> CreditRule | None:
        return next((c for c in self.credits if c.role is role), None)


@dataclass(frozen=True, slots=True)
class TenantRules:
    tenant_id: str
    timezone: ZoneInfo
    shards: int
    rule_set: str
    actions: Mapping[str, ActionRule] = field(default_factory=dict)
    # Rule-set blocks of mechanics (e.g. "boards"), as they parsed them.
    parts: Mapping[str, Any] = field(default_factory=dict)
    # Which local dates are working days (streaks, working-day tasks).
    calendar: BusinessCalendar = WEEKDAYS_CALENDAR

    def part(self, key: PartKey[T]) -> T:
        return _part(self.parts, key)


@dataclass(frozen=True, slots=True)
class RuleBook:
    tenants: Mapping[str, TenantRules]
    # The mechanics the book was read with, which the engine compiles it with
    # (empty: the standard ones, mechanics.MECHANICS).
    mechanics: tuple[Mechanic, ...] = ()

    def tenant(self, tenant_id: str) -> TenantRules | None:
        return self.tenants.get(tenant_id)
