"""Turn a validated event into credit operations. Pure: no I/O, no clock.

The engine decides what each credited user may earn and which counters cap
it; storage applies the operations atomically. Counter names are opaque to
storage, which prefixes them with the user and files them per period.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from service.domain import (
    SEP,
    Accumulator,
    BoardPlan,
    BoardSlot,
    BoardTemplate,
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
from service.rules.model import (
    ActionRule,
    BoardMember,
    BoardRule,
    BoardScope,
    CreditRule,
    LimitRule,
    RuleBook,
    TenantRules,
)
from service.rules.periods import period_bounds, period_ref

__all__ = [
    "BOARD_PERIOD_S",
    "EARNED",
    "SEP",
    "NoRule",
    "Plan",
    "Rejection",
    "RulesEngine",
    "fingerprint",
]

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
    parts = [
        event.user_id,
        event.action,
        event.target_user_id,
        event.group_id,
        event.department_id,
        str(event.quantity),
        "\x1e".join(f"{k}\x1d{v}" for k, v in sorted(event.attributes.items())),
    ]
    # Validated ids, attribute keys and values hold no control characters, so
    # these separators keep every part delimited: different events never
    # share an encoding.
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8)
    return h.hexdigest()


@dataclass(slots=True)
class _Limit:
    """A limit with its counter name prepared; the per-event part (the other
    user, the attribute value) is appended when planning."""

    rule: LimitRule
    counter: str
    label: str
    # The check of the last period seen, reused while the period is the same.
    period: PeriodRef | None = None
    check: LimitCheck | None = None


@dataclass(slots=True)
class _Credit:
    rule: CreditRule
    base: str
    limits: list[_Limit]
    accumulator_counter: str
    boards: list[BoardRule]
    earned_period: PeriodRef | None = None
    earned: tuple[CounterIncrement, ...] = ()
    # Period kinds the boards use, and templates per tuple of their periods.
    board_kinds: tuple[Period, ...] = ()
    templates: dict[tuple[PeriodRef, ...], BoardTemplate] = field(default_factory=dict)


# Upper bounds of period lengths, for board key expiry.
# A board key lives keep_periods of these past its period's state retention.
BOARD_PERIOD_S = {Period.DAY: 86_400, Period.WEEK: 7 * 86_400, Period.MONTH: 31 * 86_400}
_DAY_MS = 86_400_000
_SCOPE_LETTER = {BoardScope.TENANT: "t", BoardScope.DEPARTMENT: "d", BoardScope.GROUP: "g"}


class _Periods:
    """Period refs of one tenant, cached per kind while events fall in the
    same period (almost always: periods change at local midnight)."""

    __slots__ = ("_recent", "retention_s", "tz")

    def __init__(self, tz: ZoneInfo, retention_s: int) -> None:
        self.tz = tz
        self.retention_s = retention_s
        self._recent: dict[Period, list[tuple[int, int, PeriodRef]]] = {}

    def join_ms(self, text: str) -> int:
        """attributes["join_date"] (YYYY-MM-DD, tenant's zone) in ms, or 0."""
        if not text:
            return 0
        try:
            day = date.fromisoformat(text)
        except ValueError:
            return 0
        return int(datetime.combine(day, time(0), tzinfo=self.tz).timestamp() * 1000)

    def get(self, kind: Period, at_ms: int) -> PeriodRef:
        recent = self._recent.setdefault(kind, [])
        for start_ms, end_ms, ref in recent:
            if start_ms <= at_ms < end_ms:
                return ref
        ref = period_ref(kind, at_ms, self.tz, self.retention_s)
        if kind is Period.EVER:
            start_ms, end_ms = -(2**62), 2**62
        else:
            start_s, end_s = period_bounds(kind, at_ms, self.tz)
            start_ms, end_ms = start_s * 1000, end_s * 1000
        recent.insert(0, (start_ms, end_ms, ref))
        del recent[4:]
        return ref


def _compile(rule: ActionRule, credit: CreditRule, tenant: TenantRules) -> _Credit:
    base = SEP.join((rule.key, credit.role.letter))
    strictest: dict[tuple[Period, Metric, bool, str], LimitRule] = {}
    for lim in credit.limits:
        key = (lim.period, lim.metric, lim.per_counterpart, lim.by_attribute)
        known = strictest.get(key)
        # Two limits on one counter: the stricter one decides.
        if known is None or lim.max < known.max:
            strictest[key] = lim
    limits = [
        _Limit(lim, SEP.join((base, lim.metric.value[0])), lim.label())
        for lim in strictest.values()
    ]
    boards = [b for b in tenant.boards.values() if b.feeds_credit(rule.key, credit.role)]
    kinds = tuple(dict.fromkeys(k for b in boards for k in b.periods))
    return _Credit(credit, base, limits, SEP.join((base, "q")), boards, board_kinds=kinds)


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
        self._periods = {
            t.tenant_id: _Periods(t.timezone, state_retention_s) for t in book.tenants.values()
        }
        self._compiled: dict[tuple[str, str], list[_Credit]] = {}

    def tenant(self, tenant_id: str) -> TenantRules | None:
        return self.book.tenant(tenant_id)

    def period(self, tenant: TenantRules, kind: Period, at_ms: int) -> PeriodRef:
        return self._periods[tenant.tenant_id].get(kind, at_ms)

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
        compiled = self._compiled.get((tenant.rule_set, rule.key))
        if compiled is None:
            compiled = self._compiled[(tenant.rule_set, rule.key)] = [
                _compile(rule, credit, tenant) for credit in rule.credits
            ]
        periods = self._periods[tenant.tenant_id]
        fp = fingerprint(event)
        ops = tuple(
            self._credit_op(periods, rule, credit, event, fp, recorded_at_ms, anchor=i == 0)
            for i, credit in enumerate(compiled)
        )
        return Plan(rule=rule, ops=ops)

    def _board_plan(self, periods: _Periods, credit: _Credit, event: Event) -> BoardPlan:
        at = event.occurred_at_ms
        refs = tuple(periods.get(kind, at) for kind in credit.board_kinds)
        template = credit.templates.get(refs)
        if template is None:
            if len(credit.templates) > 16:  # periods turned over: forget old ones
                credit.templates.clear()
            by_kind = dict(zip(credit.board_kinds, refs, strict=True))
            slots = []
            for board in credit.boards:
                for kind in board.periods:
                    period = by_kind[kind]
                    expires = 0
                    if period.expires_at_s:
                        expires = period.expires_at_s + board.keep_periods * BOARD_PERIOD_S[kind]
                    for scope in board.scopes:
                        slots.append(
                            BoardSlot(
                                board.name, kind, period.key, _SCOPE_LETTER[scope], board.score,
                                expires, board.newcomer_days * _DAY_MS,
                                board.member is BoardMember.GROUP,
                            )
                        )  # fmt: skip
            template = credit.templates[refs] = BoardTemplate(tuple(slots))
        # The event's department and join date describe its actor; a target's
        # come from their own target_* attributes, when sent.
        if credit.rule.role is Role.ACTOR:
            department = event.department_id
            joined = event.attributes.get("join_date", "")
        else:
            department = event.attributes.get("target_department_id", "")
            joined = event.attributes.get("target_join_date", "")
        return BoardPlan(template, department, event.group_id, periods.join_ms(joined))

    def _credit_op(
        self,
        periods: _Periods,
        rule: ActionRule,
        credit: _Credit,
        event: Event,
        fp: str,
        recorded_at_ms: int,
        *,
        anchor: bool,
    ) -> CreditOp:
        cr = credit.rule
        if cr.role is Role.ACTOR:
            user, counterpart = event.user_id, event.target_user_id
        else:
            user, counterpart = event.target_user_id, event.user_id
        at = event.occurred_at_ms
        limits: list[LimitCheck] = []
        for lim in credit.limits:
            period = periods.get(lim.rule.period, at)
            if not (lim.rule.by_attribute or lim.rule.per_counterpart):
                if lim.period is not period or lim.check is None:
                    lim.period = period
                    lim.check = LimitCheck(
                        period, lim.counter, lim.rule.metric, lim.rule.max, lim.label
                    )
                limits.append(lim.check)
                continue
            counter = lim.counter
            if lim.rule.by_attribute:
                value = event.attributes.get(lim.rule.by_attribute, "")
                counter += f"{SEP}@{lim.rule.by_attribute}={value}"
            if lim.rule.per_counterpart:
                counter += f"{SEP}~{counterpart}"
            limits.append(LimitCheck(period, counter, lim.rule.metric, lim.rule.max, lim.label))
        day = periods.get(Period.DAY, at)
        if credit.earned_period is not day:
            credit.earned_period = day
            credit.earned = (CounterIncrement(day, EARNED, Metric.POINTS),)
        accumulator = None
        quantity = 1
        if cr.per_quantity >= 1:
            quantity = event.quantity
        if cr.per_quantity > 1:
            accumulator = Accumulator(day, credit.accumulator_counter, cr.per_quantity)
        return CreditOp(
            tenant_id=event.tenant_id,
            user_id=user,
            role=cr.role,
            event_id=event.event_id,
            fingerprint=fp,
            points_per_unit=cr.points,
            quantity=quantity,
            occurred_at_ms=at,
            recorded_at_ms=recorded_at_ms,
            dedup_expires_at_s=at // 1000 + self.dedup_retention_s,
            limits=tuple(limits),
            counters=credit.earned,
            accumulator=accumulator,
            interval_ms=cr.min_interval_ms,
            interval_key=credit.base,
            boards=self._board_plan(periods, credit, event) if credit.boards else None,
            anchor=anchor,
            facts=LedgerFacts(
                action=rule.key,
                counterpart_id=counterpart,
                group_id=event.group_id,
                department_id=event.department_id,
                quantity=event.quantity,
                attributes=event.attributes,
                reason=rule.description,
            ),
        )
