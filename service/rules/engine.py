"""Turn a validated event into credit operations. Pure: no I/O, no clock.

The engine decides what each credited user may earn and which counters cap
it; storage applies the operations atomically. Counter names are opaque to
storage, which prefixes them with the user and files them per period.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from service.domain import (
    SEP,
    Accumulator,
    CounterIncrement,
    CreditOp,
    Event,
    LedgerFacts,
    LimitCheck,
    Metric,
    Period,
    PeriodRef,
    Role,
)
from service.rules.model import ActionRule, CreditRule, RuleBook, TenantRules
from service.rules.periods import period_ref

__all__ = ["EARNED", "SEP", "NoRule", "Plan", "Rejection", "RulesEngine", "fingerprint"]

# Points earned per day, the source of Balance.earned_today.
EARNED = "earned"


@dataclass(frozen=True, slots=True)
class Rejection:
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class NoRule:
    message: str


@dataclass(frozen=True, slots=True)
class Plan:
    rule: ActionRule
    # The anchor (first) op carries the event's identity check; the others are
    # applied only when the anchor is not a reused event id.
    ops: tuple[CreditOp, ...]


def fingerprint(event: Event) -> str:
    """Identity of an event's content, to tell a replay from a reused event id.

    occurred_at is left out: callers that leave it unset get "now" on each try.
    """
    content = [
        event.user_id,
        event.action,
        event.target_user_id,
        event.group_id,
        event.department_id,
        event.quantity,
        sorted(event.attributes.items()),
    ]
    # JSON keeps every part delimited: no two different events share an encoding.
    h = hashlib.blake2b(json.dumps(content, ensure_ascii=False).encode(), digest_size=8)
    return h.hexdigest()


class RulesEngine:
    """Plans events against a rule book.

    state_retention_s: how long after a period ends its counters are kept;
    must cover the oldest accepted event so late events still see their caps.
    dedup_retention_s: how long after occurred_at an event's outcome is kept;
    older events are rejected, so a replay either finds it or is refused.
    """

    def __init__(self, book: RuleBook, *, state_retention_s: int, dedup_retention_s: int) -> None:
        self.book = book
        self.state_retention_s = state_retention_s
        self.dedup_retention_s = dedup_retention_s

    def tenant(self, tenant_id: str) -> TenantRules | None:
        return self.book.tenant(tenant_id)

    def period(self, tenant: TenantRules, kind: Period, at_ms: int) -> PeriodRef:
        return period_ref(kind, at_ms, tenant.timezone, self.state_retention_s)

    def plan(self, event: Event, *, recorded_at_ms: int) -> Plan | NoRule | Rejection:
        tenant = self.book.tenant(event.tenant_id)
        if tenant is None:
            return Rejection("tenant_id", f"unknown tenant {event.tenant_id!r}")
        rule = tenant.actions.get(event.action)
        if rule is None:
            return NoRule(f"tenant {tenant.tenant_id!r} has no rule for action {event.action!r}")
        if rule.target_required:
            if not event.target_user_id:
                return Rejection(
                    "target_user_id", f"action {rule.key!r} needs target_user_id (who it was for)"
                )
            if event.target_user_id == event.user_id:
                return Rejection(
                    "target_user_id", f"must differ from user_id for action {rule.key!r}"
                )
        for attr in rule.attributes_required:
            if not event.attributes.get(attr):
                return Rejection(
                    f"attributes[{attr}]", f"action {rule.key!r} needs attributes[{attr!r}]"
                )
        fp = fingerprint(event)
        ops = tuple(
            self._credit_op(tenant, rule, credit, event, fp, recorded_at_ms)
            for credit in rule.credits
        )
        return Plan(rule=rule, ops=ops)

    def _credit_op(
        self,
        tenant: TenantRules,
        rule: ActionRule,
        credit: CreditRule,
        event: Event,
        fp: str,
        recorded_at_ms: int,
    ) -> CreditOp:
        role = credit.role
        if role is Role.ACTOR:
            user, counterpart = event.user_id, event.target_user_id
        else:
            user, counterpart = event.target_user_id, event.user_id
        at = event.occurred_at_ms
        periods: dict[Period, PeriodRef] = {}

        def period(kind: Period) -> PeriodRef:
            if kind not in periods:
                periods[kind] = self.period(tenant, kind, at)
            return periods[kind]

        base = SEP.join((rule.key, role.letter))
        limits: dict[tuple[Period, str], LimitCheck] = {}
        for lim in credit.limits:
            counter = SEP.join((base, lim.metric.value[0]))
            if lim.by_attribute:
                counter += f"{SEP}@{lim.by_attribute}={event.attributes.get(lim.by_attribute, '')}"
            if lim.per_counterpart:
                counter += f"{SEP}~{counterpart}"
            check = LimitCheck(period(lim.period), counter, lim.metric, lim.max, lim.label())
            known = limits.get((lim.period, counter))
            # Two limits on one counter: the stricter one decides.
            if known is None or check.max < known.max:
                limits[(lim.period, counter)] = check
        accumulator = None
        quantity = 1
        if credit.per_quantity >= 1:
            quantity = event.quantity
        if credit.per_quantity > 1:
            accumulator = Accumulator(
                period(Period.DAY), SEP.join((base, "q")), credit.per_quantity
            )
        return CreditOp(
            tenant_id=event.tenant_id,
            user_id=user,
            role=role,
            event_id=event.event_id,
            fingerprint=fp,
            points_per_unit=credit.points,
            quantity=quantity,
            occurred_at_ms=at,
            recorded_at_ms=recorded_at_ms,
            dedup_expires_at_s=at // 1000 + self.dedup_retention_s,
            limits=tuple(limits.values()),
            counters=(CounterIncrement(period(Period.DAY), EARNED, Metric.POINTS),),
            accumulator=accumulator,
            interval_ms=credit.min_interval_ms,
            interval_key=base,
            facts=LedgerFacts(
                action=rule.key,
                counterpart_id=counterpart,
                group_id=event.group_id,
                department_id=event.department_id,
                quantity=event.quantity,
                attributes=dict(event.attributes),
                reason=rule.description,
            ),
        )
