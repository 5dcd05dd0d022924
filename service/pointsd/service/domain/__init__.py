"""Plain domain types shared by the rules engine, the service and storage.

Pure data, no I/O. `storage` imports this package and nothing else from
`service`, so the rules decide *what* to count and storage decides *where*.
The award primitives a credit operation is made of are in
`service.domain.steps`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pointsd.service.domain.steps import Step

S = TypeVar("S", bound="Step")

__all__ = [
    "SEP",
    "TIME_MS_MAX",
    "BoardRef",
    "CreditOp",
    "CreditResult",
    "Event",
    "LedgerFacts",
    "Metric",
    "Outcome",
    "PairCount",
    "Period",
    "PeriodRef",
    "Role",
    "StoreCode",
    "key_part",
]


# The last millisecond of the year 9999: the latest time PostgreSQL columns,
# Python datetimes and protobuf Timestamps all hold (bounds of caller input).
TIME_MS_MAX = 253_402_300_799_999

# Joins the parts of counter names and hash fields. Ids are validated to hold
# no control characters, so a split on it is unambiguous.
SEP = "\x1f"


def key_part(text: str) -> str:
    """An id as one part of a ':'-joined ledger key. Ids may hold ':', so it
    is escaped (and '%', the escape): keys stay readable for ordinary ids and
    two different (event, user) pairs can never make the same key."""
    if ":" not in text and "%" not in text:
        return text
    return text.replace("%", "%25").replace(":", "%3A")


class Outcome(enum.IntEnum):
    """Event outcomes; numbers equal `points.v1.Outcome`."""

    AWARDED = 1
    DUPLICATE = 2
    CAPPED = 3
    THROTTLED = 4
    NO_RULE = 5
    REJECTED = 6


class Role(enum.IntEnum):
    """Who a credit goes to; numbers equal `points.v1.Role`."""

    ACTOR = 1
    TARGET = 2

    @property
    def letter(self) -> str:
        return "a" if self is Role.ACTOR else "t"


class Period(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    EVER = "ever"


class Metric(enum.StrEnum):
    COUNT = "count"
    POINTS = "points"


@dataclass(slots=True)
class Event:
    """A validated activity event. Not frozen (built per event on the hot
    path); treat it as immutable."""

    tenant_id: str
    event_id: str
    user_id: str
    action: str
    occurred_at_ms: int
    target_user_id: str = ""
    group_id: str = ""
    department_id: str = ""
    quantity: int = 1
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PeriodRef:
    """One concrete period, e.g. DAY "2026-11-23" in the tenant's zone.

    `expires_at_s` is when state kept for the period may be dropped (unix
    seconds, 0 = never).
    """

    kind: Period
    key: str
    expires_at_s: int


@dataclass(frozen=True, slots=True)
class BoardRef:
    """One leaderboard instance: a board, a scope and a period.

    scope: "t" (the tenant), "d:<department>" or "g:<group>".
    """

    board: str
    scope: str
    kind: Period
    key: str


@dataclass(slots=True)
class LedgerFacts:
    """What the ledger row records about the event besides user and points."""

    action: str
    counterpart_id: str
    group_id: str
    department_id: str
    quantity: int
    attributes: Mapping[str, str]
    reason: str


@dataclass(slots=True)
class CreditOp:
    """One atomic, idempotent credit of one user for one event.

    Everything a store needs to apply it in a single atomic step: the dedup
    record (event id, fingerprint, expiry), the points, and `steps`, the
    program the mechanics compiled for it (service/pointsd/service/domain/steps.py; one
    program object is shared by every credit of the same kind and periods).
    Not frozen: one is built per credit on the hot path, and frozen
    dataclasses pay for every field set; treat it as immutable.
    """

    tenant_id: str
    user_id: str
    role: Role
    event_id: str
    fingerprint: str
    points_per_unit: int
    quantity: int
    occurred_at_ms: int
    recorded_at_ms: int
    dedup_expires_at_s: int
    steps: tuple[Step, ...] = ()
    facts: LedgerFacts | None = None
    # Facts about the credited user that steps read: the other user of the
    # event, the user's department and join time (ms, 0 = unknown) as far as
    # the event says, and the event's group.
    counterpart: str = ""
    department: str = ""
    group: str = ""
    joined_ms: int = 0
    # Its dedup record is the event's identity, kept under the event id alone
    # so any credit layout of a reused id collides: the event's first credit,
    # or for an `actor_gates` action the gated (target) credit.
    anchor: bool = True

    @property
    def entry_key(self) -> str:
        """The ledger's unique key for this credit within the tenant. The user is
        part of it: an event id reused for another user on another shard cannot
        be caught atomically, and must then still leave one row per payment."""
        return f"e:{key_part(self.event_id)}:{self.role.letter}:{key_part(self.user_id)}"

    def steps_of(self, kind: type[S]) -> tuple[S, ...]:
        """The steps of one primitive, in program order."""
        return tuple(s for s in self.steps if isinstance(s, kind))


class StoreCode(enum.IntEnum):
    """What a store did with a credit or a balance change: the one list of
    result codes (award.lua and balance.lua repeat them in a block that
    tests/test_codec.py checks). The first four equal `Outcome`."""

    AWARDED = 1
    DUPLICATE = 2
    CAPPED = 3
    THROTTLED = 4
    # A balance change that would go below zero (balance.lua).
    INSUFFICIENT = 5
    # The shard's outbox is full: nothing applied.
    BACKPRESSURE = 7
    # A rebuild owns the shard: nothing applied.
    MAINTENANCE = 8
    # The id was used before for other content: nothing applied.
    ID_REUSED = 9
    # Names balance changes read better with.
    APPLIED = 1
    KEY_REUSED = 9


# Not frozen: one is built per credit on the hot path, and a frozen
# dataclass pays a object.__setattr__ per field. Treat it as immutable.
@dataclass(slots=True)
class CreditResult:
    code: StoreCode
    points: int
    balance: int
    # The `number` of the Check step that capped or clipped the credit, 0 for
    # none (caps number theirs 1, 2, ... in the order of the rule's limits).
    limit_index: int = 0
    # For DUPLICATE and ID_REUSED: the first recording's outcome.
    original: StoreCode | None = None
    # Bonuses the credit earned (for DUPLICATE: the first recording's), as
    # (tag, points).
    bonuses: tuple[tuple[str, int], ...] = ()
    # Held by a farming flag (for DUPLICATE: at the first recording): the
    # points went to the user's held balance, not to available.
    held: bool = False


@dataclass(frozen=True, slots=True)
class PairCount:
    """Credits `receiver` got from `sender` in one period (the farming
    signals' counted actions), with everything `receiver` got from anyone
    then: what the ledger's aggregate gives the farming rules."""

    receiver: str
    sender: str
    count: int
    receiver_total: int
