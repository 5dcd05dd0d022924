"""Ingest: plan events with the rules engine, apply the credits in storage,
and say what happened in words a person can read (each mechanic's words,
joined by the compiled credit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pointsd.service.clock import Clock
from pointsd.service.domain import CreditOp, CreditResult, Event, Outcome, Role, StoreCode
from pointsd.service.errors import Overloaded, ShardBusy
from pointsd.service.rules import LEVELS, Level, NoRule, Plan, Rejection, RulesEngine
from pointsd.service.validation import InvalidField
from pointsd.storage.redis import AwardStore

__all__ = ["BonusOutcome", "CreditOutcome", "EventResult", "Ingestor", "LevelUp"]


@dataclass(slots=True)
class CreditOutcome:
    user_id: str
    role: Role
    outcome: Outcome
    points: int
    balance: int
    reason: str
    # The points went to the user's held balance: a farming flag holds the
    # user's awards until an administrator releases or voids them.
    held: bool = False


# Appended to a held credit's reason.
HELD_NOTE = "; held for review (a farming flag): paid when an administrator releases it"


@dataclass(frozen=True, slots=True)
class BonusOutcome:
    """A bonus an event earned one credited user: a task done, a level reached."""

    user_id: str
    kind: str
    id: str
    name: str
    name_en: str
    points: int
    reason: str
    period_key: str = ""
    badge: str = ""
    tag: str = ""


@dataclass(frozen=True, slots=True)
class LevelUp:
    user_id: str
    level: Level


@dataclass(slots=True)
class EventResult:
    event_id: str
    outcome: Outcome
    points: int = 0
    balance: int = 0
    reason: str = ""
    original_outcome: Outcome | None = None
    credits: tuple[CreditOutcome, ...] = ()
    # For REJECTED: the offending field.
    field: str = ""
    # What the event earned besides its points (for DUPLICATE: the first
    # recording's), every credited user's, in credit order.
    bonuses: tuple[BonusOutcome, ...] = ()
    level_ups: tuple[LevelUp, ...] = ()


_OUTCOME_OF = {
    StoreCode.AWARDED: Outcome.AWARDED,
    StoreCode.DUPLICATE: Outcome.DUPLICATE,
    StoreCode.CAPPED: Outcome.CAPPED,
    StoreCode.THROTTLED: Outcome.THROTTLED,
    # Only for a non-anchor credit: its event id was used before by another
    # actor for the same target. The anchor's own check cannot see that.
    StoreCode.ID_REUSED: Outcome.REJECTED,
}
# Codes after which an event's other credits are not attempted.
_STOP = {StoreCode.ID_REUSED, StoreCode.BACKPRESSURE, StoreCode.MAINTENANCE}
# Refusals of an `actor_gates` action's actor credit (its budget) that stop
# its other credits too, now and on every replay.
_GATE_CLOSED = {StoreCode.CAPPED, StoreCode.THROTTLED}


def _gate_closed(plan: Plan, anchor: CreditResult) -> bool:
    """The action's actor credit gates the others and was refused, at this
    recording or (for a replay) at the first one."""
    if not plan.rule.actor_gates:
        return False
    code = anchor.original if anchor.code is StoreCode.DUPLICATE else anchor.code
    return code in _GATE_CLOSED


class Ingestor:
    def __init__(
        self,
        engine: RulesEngine,
        awards: AwardStore,
        clock_ms: Clock,
    ) -> None:
        self.engine = engine
        self.awards = awards
        self.clock_ms = clock_ms

    async def record(self, items: Sequence[Event | InvalidField]) -> list[EventResult]:
        """One result per item, in order. Raises Overloaded (outbox full) or
        ShardBusy (rebuild running) for the whole call: retry it as is, the
        events already applied come back as DUPLICATE."""
        results, plans = self._plan(items, self.clock_ms())
        store = await self._apply(plans)
        self._raise_if_refused(store)
        for i, plan in plans.items():
            results[i] = self._combine(plan, store[i])
        return [r for r in results if r is not None]

    def _plan(
        self, items: Sequence[Event | InvalidField], now_ms: int
    ) -> tuple[list[EventResult | None], dict[int, Plan]]:
        """The results known without storage (rejected, no rule), and the plans
        of the other items, both by index."""
        results: list[EventResult | None] = [None] * len(items)
        plans: dict[int, Plan] = {}
        for i, item in enumerate(items):
            if isinstance(item, InvalidField):
                results[i] = self._rejected(item.field, item.message, "")
                continue
            planned = self.engine.plan(item, recorded_at_ms=now_ms)
            if isinstance(planned, Rejection):
                results[i] = self._rejected(planned.field, planned.message, item.event_id)
            elif isinstance(planned, NoRule):
                results[i] = EventResult(item.event_id, Outcome.NO_RULE, reason=planned.message)
            else:
                plans[i] = planned
        return results, plans

    async def _apply(self, plans: dict[int, Plan]) -> dict[int, list[CreditResult]]:
        """Each plan's store results, by index, in the order of its credits."""
        # The anchor credit first: it detects a reused event id before any
        # other credit of the event is applied. Most rules have one credit.
        order = list(plans)
        anchors = await self.awards.apply([plans[i].ops[0] for i in order])
        store: dict[int, list[CreditResult]] = {i: [r] for i, r in zip(order, anchors, strict=True)}
        rest: list[tuple[int, CreditOp]] = []
        for i, anchor in zip(order, anchors, strict=True):
            if anchor.code not in _STOP and not _gate_closed(plans[i], anchor):
                rest.extend((i, op) for op in plans[i].ops[1:])
        if rest:
            applied = await self.awards.apply([op for _, op in rest])
            for (i, _op), res in zip(rest, applied, strict=True):
                store[i].append(res)
        return store

    @staticmethod
    def _raise_if_refused(store: dict[int, list[CreditResult]]) -> None:
        codes = {r.code for rs in store.values() for r in rs}
        if StoreCode.MAINTENANCE in codes:
            raise ShardBusy("a rebuild of this tenant's state is running; retry shortly")
        if StoreCode.BACKPRESSURE in codes:
            raise Overloaded(
                "the ledger outbox is full (the flusher is behind or PostgreSQL is down); "
                "retry with backoff"
            )

    def _bonuses(
        self, plan: Plan, results: list[CreditResult]
    ) -> tuple[tuple[BonusOutcome, ...], tuple[LevelUp, ...]]:
        if not any(r.bonuses for r in results):
            return (), ()
        tenant = self.engine.tenant(plan.ops[0].tenant_id)
        assert tenant is not None
        levels = tenant.part(LEVELS)
        bonuses: list[BonusOutcome] = []
        level_ups: list[LevelUp] = []
        for op, res in zip(plan.ops, results, strict=False):
            for tag, points in res.bonuses:
                info = self.engine.bonus_info(tenant, tag)
                bonuses.append(
                    BonusOutcome(
                        op.user_id,
                        info.kind,
                        info.id,
                        info.name,
                        info.name_en,
                        points,
                        info.reason,
                        info.period_key,
                        info.badge,
                        tag,
                    )
                )
                level = levels.get(info.id) if levels and info.kind == "level" else None
                if level is not None:
                    level_ups.append(LevelUp(op.user_id, level))
        return tuple(bonuses), tuple(level_ups)

    @staticmethod
    def _rejected(field: str, message: str, event_id: str) -> EventResult:
        return EventResult(event_id, Outcome.REJECTED, reason=f"{field}: {message}", field=field)

    def _combine(self, plan: Plan, results: list[CreditResult]) -> EventResult:
        event_id = plan.ops[0].event_id
        # A gated action's identity is its gated credit's record (the gate
        # has a key of its own): a reused id is caught there.
        if results[0].code is StoreCode.ID_REUSED or (
            plan.rule.actor_gates and any(r.code is StoreCode.ID_REUSED for r in results)
        ):
            return self._rejected(
                "event_id",
                f"{event_id!r} was already used for a different event (other user, action, "
                "target, quantity or attributes); the first event stands",
                event_id,
            )
        if len(results) == 1 and not plan.rule.actor_gates and not results[0].bonuses:
            return self._single(plan, results[0])
        return self._general(plan, results)

    def _general(self, plan: Plan, results: list[CreditResult]) -> EventResult:
        event_id = plan.ops[0].event_id
        credits = tuple(
            CreditOutcome(
                user_id=op.user_id,
                role=op.role,
                outcome=_OUTCOME_OF[res.code],
                # A reused id (only caught on this credit) applied nothing here.
                points=0 if res.code is StoreCode.ID_REUSED else res.points,
                balance=res.balance,
                reason=compiled.reason(res.code, res.original, res.points, res.limit_index)
                + (HELD_NOTE if res.held else ""),
                held=res.held,
            )
            for op, compiled, res in zip(plan.ops, plan.credits, results, strict=False)
        )
        # Each credit's own first outcome (a duplicate credit's original one).
        first = [
            _OUTCOME_OF[r.original if r.code is StoreCode.DUPLICATE and r.original else r.code]
            for r in results
        ]
        if plan.rule.actor_gates and len(first) > 1 and results[0].points == 0:
            # A gate that pays nothing only let the card through: whether the
            # event paid is for the credits it gates to say.
            first = first[1:]
        combined = Outcome.AWARDED if Outcome.AWARDED in first else first[0]
        # The anchor decides whether this call recorded the event: so exactly
        # one answer per event is not DUPLICATE, even when two concurrent
        # copies of it each applied one of its credits first.
        original: Outcome | None = None
        if results[0].code is StoreCode.DUPLICATE:
            outcome, original = Outcome.DUPLICATE, combined
        else:
            outcome = combined
        bonuses, level_ups = self._bonuses(plan, results)
        if bonuses:
            credits = tuple(_with_bonuses(c, bonuses) for c in credits)
        if len(credits) == 1:
            reason = credits[0].reason
            if len(plan.ops) > 1 and _gate_closed(plan, results[0]):
                reason += _gate_text(results[0], plan.ops[1].user_id)
        else:
            reason = "; ".join(f"{c.role.name.lower()} {c.user_id}: {c.reason}" for c in credits)
        return EventResult(
            bonuses=bonuses,
            level_ups=level_ups,
            event_id=event_id,
            outcome=outcome,
            points=sum(c.points for c in credits) + sum(b.points for b in bonuses),
            balance=credits[0].balance,
            reason=reason,
            original_outcome=original,
            credits=credits,
        )

    @staticmethod
    def _single(plan: Plan, res: CreditResult) -> EventResult:
        """_combine for the common case, one credit that earned no bonus:
        the same result, without the lists the general case builds."""
        op = plan.ops[0]
        reason = plan.credits[0].reason(res.code, res.original, res.points, res.limit_index)
        if res.held:
            reason += HELD_NOTE
        outcome = _OUTCOME_OF[res.code]
        credit = CreditOutcome(op.user_id, op.role, outcome, res.points, res.balance, reason,
                               res.held)  # fmt: skip
        original: Outcome | None = None
        if res.code is StoreCode.DUPLICATE:
            original = _OUTCOME_OF[res.original] if res.original else outcome
        return EventResult(op.event_id, outcome, res.points, res.balance, reason, original,
                           (credit,))  # fmt: skip


def _gate_text(anchor: CreditResult, target: str) -> str:
    """What a closed gate meant: the card was not sent, nobody was paid."""
    code = anchor.original if anchor.code is StoreCode.DUPLICATE else anchor.code
    if code is StoreCode.CAPPED:
        return f"; the sender's giving budget is used, so {target} was not credited"
    return f"; the sender gave too recently, so {target} was not credited"


def _with_bonuses(credit: CreditOutcome, bonuses: tuple[BonusOutcome, ...]) -> CreditOutcome:
    """The credit's sentence with what it earned on top ("+100, weekly task done")."""
    mine = [b for b in bonuses if b.user_id == credit.user_id]
    if not mine:
        return credit
    notes = "; ".join(f"{b.reason}" + (f" +{b.points}" if b.points else "") for b in mine)
    credit.reason = f"{credit.reason}; {notes}"
    return credit
