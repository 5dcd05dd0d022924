"""Turn a validated event into credit operations. Pure: no I/O, no clock.

The engine decides who is credited and asks each mechanic
(service/pointsd/service/rules/mechanics/) for its steps; storage applies the resulting
program atomically. Programs are compiled once per credit kind and set of
periods and shared by every credit of that kind until a period turns over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from pointsd.service.domain import (
    SEP,
    CreditOp,
    Event,
    LedgerFacts,
    Period,
    PeriodRef,
    Role,
    StoreCode,
)
from pointsd.service.domain.steps import Step
from pointsd.service.rules.mechanics import MECHANICS, BonusInfo, CompileContext, Compiled, Refs
from pointsd.service.rules.mechanics.balance import EARNED
from pointsd.service.rules.model import ActionRule, CreditRule, RuleBook, TenantRules
from pointsd.service.rules.periods import period_bounds, period_ref

__all__ = [
    "EARNED",
    "SEP",
    "CompiledCredit",
    "NoRule",
    "Plan",
    "Rejection",
    "RulesEngine",
    "fingerprint",
]

# Distinct programs (sets of periods) and texts a credit kind keeps.
_PROGRAMS_KEPT = 16
_TEXTS_KEPT = 4096


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
    # What each op's credit compiled to (its reasons), in op order.
    credits: tuple[CompiledCredit, ...] = field(default=(), compare=False)


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


@dataclass(frozen=True, slots=True)
class _Fixed:
    kinds: Refs
    parts: list[tuple[Step, ...] | None]
    program: tuple[Step, ...] | None


class CompiledCredit:
    """One credit of one action in one tenant: its mechanics' parts in rank
    order, and the programs they make, cached per set of periods."""

    def __init__(self, rule: ActionRule, credit: CreditRule, parts: list[Compiled]) -> None:
        self.rule = rule
        self.credit = credit
        self.parts = sorted(parts, key=lambda p: p.rank)
        self.kinds = tuple(dict.fromkeys(k for p in self.parts for k in p.kinds))
        self.per_event = any(p.per_event for p in self.parts)
        self.noted = [p for p in self.parts if p.notes]
        self.uses_quantity = any(p.uses_quantity for p in self.parts)
        # Per (restore, periods): the periods by kind, each part's steps
        # (None for a per-event part), and the whole program when no part is
        # per-event.
        self._fixed: dict[tuple[bool, tuple[PeriodRef, ...]], _Fixed] = {}
        # The last span of instants (ms) whose periods are all the same, and
        # their fixed parts, per restore: nearly every event falls in it, so
        # it costs two comparisons instead of a period lookup per kind.
        self._spans: dict[bool, tuple[int, int, _Fixed]] = {}
        self._texts: dict[tuple[StoreCode, StoreCode | None, int, int], str] = {}

    def program(
        self, periods: _Periods, at_ms: int, event: Event, counterpart: str, restore: bool
    ) -> tuple[Step, ...]:
        span = self._spans.get(restore)
        if span is not None and span[0] <= at_ms < span[1]:
            fixed = span[2]
        else:
            start_ms, end_ms, kinds = periods.window(self.kinds, at_ms)
            refs = tuple(kinds.values())
            cached = self._fixed.get((restore, refs))
            fixed = cached if cached is not None else self._compile_fixed(refs, restore)
            self._spans[restore] = (start_ms, end_ms, fixed)
        if fixed.program is not None:
            return fixed.program
        steps: list[Step] = []
        for part, found in zip(self.parts, fixed.parts, strict=True):
            if found is None:
                steps.extend(part.event_steps(fixed.kinds, event, counterpart, restore=restore))
            else:
                steps.extend(found)
        return tuple(steps)

    def _compile_fixed(self, refs: tuple[PeriodRef, ...], restore: bool) -> _Fixed:
        if len(self._fixed) > _PROGRAMS_KEPT:  # periods turned over: forget old ones
            self._fixed.clear()
        kinds: Refs = dict(zip(self.kinds, refs, strict=True))
        parts = [None if p.per_event else p.steps(kinds, restore=restore) for p in self.parts]
        program = None if self.per_event else tuple(s for found in parts if found for s in found)
        fixed = self._fixed[(restore, refs)] = _Fixed(kinds, parts, program)
        return fixed

    def row_reason(self, event: Event) -> str:
        """The award row's reason: the action's description and what parts
        add for this event (a campaign)."""
        if not self.noted:
            return self.rule.description
        return self.rule.description + "".join(p.ledger_note(event) for p in self.noted)

    def reason(self, code: StoreCode, original: StoreCode | None, points: int, limit: int) -> str:
        """The sentence for one result of this credit; a handful of distinct
        ones per credit, so they are kept rather than composed per event."""
        key = (code, original, points, limit)
        text = self._texts.get(key)
        if text is None:
            if len(self._texts) > _TEXTS_KEPT:
                self._texts.clear()
            text = self._texts[key] = self._compose(code, original, points, limit)
        return text

    def _compose(self, code: StoreCode, original: StoreCode | None, points: int, limit: int) -> str:
        first = original if code is StoreCode.DUPLICATE and original else code
        what = self.rule.description
        if first is StoreCode.ID_REUSED:
            text = "event_id was already used for a different event; the first event stands"
        elif first is StoreCode.AWARDED:
            body = next(
                (t for p in self.parts if (t := p.award_text(points, limit)) is not None),
                f"+{points}",
            )
            text = f"{what}: {body}" + "".join(p.award_note(points, limit) for p in self.parts)
        else:
            body = next(
                (t for p in self.parts if (t := p.refusal_text(first, limit)) is not None),
                _FALLBACK.get(first, first.name.lower()),
            )
            text = f"{what}: {body}"
        if code is StoreCode.DUPLICATE:
            text = f"duplicate event, first recorded as {first.name}: {text}"
        return text


# Refusals recorded under rules that have changed since (the part that
# refused is gone).
_FALLBACK = {StoreCode.CAPPED: "limit reached (a limit)", StoreCode.THROTTLED: "too soon"}


class _Periods:
    """Period refs of one tenant, cached per kind while events fall in the
    same period (almost always: periods change at local midnight)."""

    __slots__ = ("_recent", "retention_s", "tz")

    def __init__(self, tz: ZoneInfo, retention_s: int) -> None:
        self.tz = tz
        self.retention_s = retention_s
        self._recent: dict[Period, list[tuple[int, int, PeriodRef]]] = {}

    def join_ms(self, text: str) -> int:
        """A join date (YYYY-MM-DD, tenant's zone) in ms, or 0."""
        if not text:
            return 0
        try:
            day = date.fromisoformat(text)
        except ValueError:
            return 0
        return int(datetime.combine(day, time(0), tzinfo=self.tz).timestamp() * 1000)

    def get(self, kind: Period, at_ms: int) -> PeriodRef:
        return self._entry(kind, at_ms)[2]

    def window(
        self, kinds: tuple[Period, ...], at_ms: int
    ) -> tuple[int, int, dict[Period, PeriodRef]]:
        """The periods of `kinds` at at_ms, and the span [start, end) of
        instants (ms) that fall in all of them."""
        start_ms, end_ms = _NEVER_ENDS[0], _NEVER_ENDS[1]
        refs: dict[Period, PeriodRef] = {}
        for kind in kinds:
            start, end, ref = self._entry(kind, at_ms)
            start_ms, end_ms = max(start_ms, start), min(end_ms, end)
            refs[kind] = ref
        return start_ms, end_ms, refs

    def _entry(self, kind: Period, at_ms: int) -> tuple[int, int, PeriodRef]:
        recent = self._recent.setdefault(kind, [])
        for entry in recent:
            if entry[0] <= at_ms < entry[1]:
                return entry
        ref = period_ref(kind, at_ms, self.tz, self.retention_s)
        if kind is Period.EVER:
            start_ms, end_ms = _NEVER_ENDS
        else:
            start_s, end_s = period_bounds(kind, at_ms, self.tz)
            start_ms, end_ms = start_s * 1000, end_s * 1000
        entry = (start_ms, end_ms, ref)
        recent.insert(0, entry)
        del recent[4:]
        return entry


# The span of Period.EVER, in ms.
_NEVER_ENDS = (-(2**62), 2**62)


def _keyed_by_id(rule: ActionRule, index: int) -> bool:
    """Whether the credit's dedup record is kept under the event id alone (the
    event's identity): the first credit's; for an `actor_gates` action the
    gated (target) credit's, as before gates existed, so a replay of an
    event recorded then still finds its record and pays nobody twice (the
    gate, applied first, has the second key)."""
    if rule.actor_gates:
        return rule.credits[index].role is Role.TARGET
    return index == 0


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
        self._compiled: dict[tuple[str, str, str, str], list[CompiledCredit]] = {}

    def tenant(self, tenant_id: str) -> TenantRules | None:
        return self.book.tenant(tenant_id)

    def period(self, tenant: TenantRules, kind: Period, at_ms: int) -> PeriodRef:
        return self._periods[tenant.tenant_id].get(kind, at_ms)

    def compiled(self, tenant: TenantRules, rule: ActionRule) -> list[CompiledCredit]:
        """The action's credits compiled for the tenant (rule sets are shared
        by tenants on the same calendar and zone: working-day tasks and
        streaks read the calendar, campaign windows the zone)."""
        key = (tenant.rule_set, tenant.calendar.name, tenant.timezone.key, rule.key)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = [
                self._compile(tenant, rule, credit) for credit in rule.credits
            ]
        return found

    def _compile(self, tenant: TenantRules, rule: ActionRule, credit: CreditRule) -> CompiledCredit:
        ctx = CompileContext(
            tenant=tenant,
            rule=rule,
            credit=credit,
            base=SEP.join((rule.key, credit.role.letter)),
            state_retention_s=self.state_retention_s,
            dedup_retention_s=self.dedup_retention_s,
        )
        parts = [p for m in self.book.mechanics or MECHANICS if (p := m.compile(ctx)) is not None]
        return CompiledCredit(rule, credit, parts)

    def bonus_info(self, tenant: TenantRules, tag: str) -> BonusInfo:
        """What a bonus tag names (a tag no mechanic knows any more: itself)."""
        for mechanic in self.book.mechanics or MECHANICS:
            info = mechanic.bonus_info(tenant, tag)
            if info is not None:
                return info
        kind = tag.split(".", 1)[0]
        return BonusInfo(kind, tag, tag, tag, reason=tag)

    def plan(
        self, event: Event, *, recorded_at_ms: int, restore: bool = False
    ) -> Plan | NoRule | Rejection:
        """restore: the operations a rebuild replays the event's ledger rows
        with (each mechanic's rebuild rule), instead of those that award it."""
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
        compiled = self.compiled(tenant, rule)
        periods = self._periods[tenant.tenant_id]
        fp = fingerprint(event)
        ops = tuple(
            self._credit_op(
                periods, rule, cc, event, fp, recorded_at_ms, _keyed_by_id(rule, i), restore
            )
            for i, cc in enumerate(compiled)
        )
        return Plan(rule=rule, ops=ops, credits=tuple(compiled))

    def _credit_op(
        self,
        periods: _Periods,
        rule: ActionRule,
        cc: CompiledCredit,
        event: Event,
        fp: str,
        recorded_at_ms: int,
        anchor: bool,
        restore: bool,
    ) -> CreditOp:
        # The event's department and join date describe its actor; a target's
        # come from their own target_* attributes, when sent.
        if cc.credit.role is Role.ACTOR:
            user, counterpart = event.user_id, event.target_user_id
            department = event.department_id
            joined = event.attributes.get("join_date", "") if event.attributes else ""
        else:
            user, counterpart = event.target_user_id, event.user_id
            department = event.attributes.get("target_department_id", "")
            joined = event.attributes.get("target_join_date", "")
        at = event.occurred_at_ms
        return CreditOp(
            tenant_id=event.tenant_id,
            user_id=user,
            role=cc.credit.role,
            event_id=event.event_id,
            fingerprint=fp,
            points_per_unit=cc.credit.points,
            quantity=event.quantity if cc.uses_quantity else 1,
            occurred_at_ms=at,
            recorded_at_ms=recorded_at_ms,
            dedup_expires_at_s=at // 1000 + self.dedup_retention_s,
            steps=cc.program(periods, at, event, counterpart, restore),
            facts=LedgerFacts(
                action=rule.key,
                counterpart_id=counterpart,
                group_id=event.group_id,
                department_id=event.department_id,
                quantity=event.quantity,
                attributes=event.attributes,
                reason=cc.row_reason(event),
            ),
            counterpart=counterpart,
            department=department,
            group=event.group_id,
            joined_ms=periods.join_ms(joined) if joined else 0,
            anchor=anchor,
        )
