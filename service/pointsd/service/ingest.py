"""Ingest: plan events with the rules engine, apply the credits in storage,
and say what happened in words a person can read (each mechanic's words,
joined by the compiled credit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pointsd.service.clock import Clock
from pointsd.service.domain import CreditOp, CreditResult, Event, Outcome, Role, StoreCode
from pointsd.service.errors import Overloaded, ShardBusy
from pointsd.service.rules import NoRule, Plan, Rejection, RulesEngine
from pointsd.service.validation import InvalidField
from pointsd.storage.redis import AwardStore

__all__ = ["CreditOutcome", "EventResult", "Ingestor"]


@dataclass(slots=True)
class CreditOutcome:
    user_id: str
    role: Role
    outcome: Outcome
    points: int
    balance: int
    reason: str


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
            if anchor.code not in _STOP:
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

    @staticmethod
    def _rejected(field: str, message: str, event_id: str) -> EventResult:
        return EventResult(event_id, Outcome.REJECTED, reason=f"{field}: {message}", field=field)

    def _combine(self, plan: Plan, results: list[CreditResult]) -> EventResult:
        event_id = plan.ops[0].event_id
        if results[0].code is StoreCode.ID_REUSED:
            return self._rejected(
                "event_id",
                f"{event_id!r} was already used for a different event (other user, action, "
                "target, quantity or attributes); the first event stands",
                event_id,
            )
        credits = tuple(
            CreditOutcome(
                user_id=op.user_id,
                role=op.role,
                outcome=_OUTCOME_OF[res.code],
                # A reused id (only caught on this credit) applied nothing here.
                points=0 if res.code is StoreCode.ID_REUSED else res.points,
                balance=res.balance,
                reason=compiled.reason(res.code, res.original, res.points, res.limit_index),
            )
            for op, compiled, res in zip(plan.ops, plan.credits, results, strict=False)
        )
        # Each credit's own first outcome (a duplicate credit's original one).
        first = [
            _OUTCOME_OF[r.original if r.code is StoreCode.DUPLICATE and r.original else r.code]
            for r in results
        ]
        combined = Outcome.AWARDED if Outcome.AWARDED in first else first[0]
        # The anchor decides whether this call recorded the event: so exactly
        # one answer per event is not DUPLICATE, even when two concurrent
        # copies of it each applied one of its credits first.
        original: Outcome | None = None
        if results[0].code is StoreCode.DUPLICATE:
            outcome, original = Outcome.DUPLICATE, combined
        else:
            outcome = combined
        if len(credits) == 1:
            reason = credits[0].reason
        else:
            reason = "; ".join(f"{c.role.name.lower()} {c.user_id}: {c.reason}" for c in credits)
        return EventResult(
            event_id=event_id,
            outcome=outcome,
            points=sum(c.points for c in credits),
            balance=credits[0].balance,
            reason=reason,
            original_outcome=original,
            credits=credits,
        )
