"""What a mechanic is: the contract between the rule loader, the engine and
one mechanic module. Pure: no I/O.

A mechanic owns some keys of the rule file (in a credit, an `actor` or
`target` mapping, and/or one block of a rule set), parses them into its part
of the rule model, compiles each credit's part onto the award primitives
(service/pointsd/service/domain/steps.py), says what its results mean in words, and states
what a rebuild replays of it. docs/architecture.md walks through adding one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pointsd.service.domain import Event, Period, PeriodRef, StoreCode
from pointsd.service.domain.steps import Step
from pointsd.service.rules.checker import Checker
from pointsd.service.rules.model import ActionRule, CreditRule, TenantRules

__all__ = [
    "BonusInfo",
    "CompileContext",
    "Compiled",
    "Mechanic",
    "Rank",
    "Refs",
]

# The periods of one event, by kind (only the kinds a credit's steps use).
Refs = Mapping[Period, PeriodRef]


class Rank:
    """Where a mechanic's steps go in a program. Checks run in this order
    (the points first, then what may refuse them); effects run in it too."""

    POINTS: Final = 10  # steps that decide the points (accumulators)
    GUARD: Final = 20  # refusals that do not depend on counters (throttles)
    LIMIT: Final = 30  # caps
    BALANCE: Final = 50  # the credit itself
    RECORD: Final = 60  # what is kept about it (progress, days)
    BOARD: Final = 70  # leaderboards
    MILESTONE: Final = 80  # bonuses read from values the steps before produced


@dataclass(frozen=True, slots=True)
class CompileContext:
    """One credit of one action in one tenant, and the engine's retentions."""

    tenant: TenantRules
    rule: ActionRule
    credit: CreditRule
    # Prefix of this credit's counter and throttle names: "<action>SEP<role letter>".
    base: str
    state_retention_s: int
    dedup_retention_s: int


class Compiled:
    """One mechanic's part of one credit, ready to plan events with.

    Static parts (`per_event` False) give the same steps for every event in
    the same periods; the engine caches them per set of periods. Per-event
    parts are asked for every event (they may cache what repeats).
    """

    rank: int = Rank.BALANCE
    kinds: tuple[Period, ...] = ()
    per_event: bool = False
    # The credit's quantity is the event's (else 1).
    uses_quantity: bool = False
    # The part adds to the award's ledger reason (`ledger_note`).
    notes: bool = False

    def steps(self, refs: Refs, *, restore: bool) -> tuple[Step, ...]:
        """The steps for events in these periods. restore: those a rebuild
        replays from the ledger (no checks: the ledger says what was paid)."""
        return ()

    def event_steps(
        self, refs: Refs, event: Event, counterpart: str, *, restore: bool
    ) -> tuple[Step, ...]:
        """Per-event parts: the steps for this event."""
        return self.steps(refs, restore=restore)

    def ledger_note(self, event: Event) -> str:
        """Appended to the award row's reason for this event (parts with
        `notes`), e.g. the campaign that multiplied it."""
        return ""

    # Words for results: the engine joins what each part says.
    def award_text(self, points: int, limit: int) -> str | None:
        """What an award says instead of "+points", if this part decides."""
        return None

    def award_note(self, points: int, limit: int) -> str:
        """Appended to what an award says."""
        return ""

    def refusal_text(self, code: StoreCode, limit: int) -> str | None:
        """What a refusal this part caused says."""
        return None


@dataclass(frozen=True, slots=True)
class BonusInfo:
    """What a bonus tag names, for results and progress: the mechanic's kind
    ("task", "level", ...), the id within it, its names and its period."""

    kind: str
    id: str
    name: str
    name_en: str
    period_key: str = ""
    badge: str = ""
    # What the result says of it ("Weekly task done: ...").
    reason: str = ""


class Mechanic:
    """One mechanic module's entry point. Subclasses set the class fields and
    override what they use."""

    name: str = ""
    # Keys it owns in an actor/target credit mapping.
    credit_keys: frozenset[str] = frozenset()
    # The rule-set block it owns ("" for none).
    rule_set_key: str = ""

    def parse_credit(self, c: Checker, m: Mapping[str, Any], path: str) -> Any:
        """Its part of a credit (None: nothing to keep); problems go to `c`."""
        return None

    def parse_rule_set(
        self, c: Checker, raw: Any, actions: Mapping[str, ActionRule], path: str
    ) -> Any:
        """Its rule-set block, given the set's actions (None: nothing to keep)."""
        return None

    def review_rule_set(self, c: Checker, parts: Mapping[str, Any], path: str) -> None:
        """Check its block against the other mechanics' parts of the same rule
        set (by mechanic name), once all are parsed (a task's badge exists)."""

    def bonus_info(self, tenant: TenantRules, tag: str) -> BonusInfo | None:
        """What one of its bonus tags names (None: not its tag)."""
        return None

    def describe_rule_set(self, parts: Mapping[str, Any]) -> list[str]:
        """Lines for `pointsd rules check` about its rule-set block, given a
        tenant's parts by mechanic name (as review_rule_set gets them); []
        for nothing to say."""
        return []

    def review_action(self, c: Checker, rule: ActionRule, path: str) -> ActionRule:
        """Check (and complete) an action its credit parts are in."""
        return rule

    def describe(self, credit: CreditRule) -> str:
        """A short text for `pointsd rules check`, "" for nothing."""
        return ""

    def compile(self, ctx: CompileContext) -> Compiled | None:
        """Its part of one credit, or None when it has nothing to do there."""
        return None
