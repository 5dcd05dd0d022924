"""Plain domain types shared by the rules engine, the service and storage.

Pure data, no I/O. `storage` imports this module and nothing else from
`service`, so the rules decide *what* to count and storage decides *where*.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "SEP",
    "TIME_MS_MAX",
    "Accumulator",
    "BoardPlan",
    "BoardRef",
    "BoardSlot",
    "BoardTemplate",
    "CounterIncrement",
    "CreditOp",
    "CreditResult",
    "Event",
    "LedgerFacts",
    "LimitCheck",
    "Metric",
    "Outcome",
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
class LimitCheck:
    """A cap on one counter of the credited user within one period."""

    period: PeriodRef
    counter: str
    metric: Metric
    max: int
    label: str


@dataclass(frozen=True, slots=True)
class CounterIncrement:
    """A counter of the credited user bumped on award (e.g. points earned today)."""

    period: PeriodRef
    counter: str
    metric: Metric


@dataclass(frozen=True, slots=True)
class Accumulator:
    """Quantity collected in a counter; points are due per whole `unit` crossed."""

    period: PeriodRef
    counter: str
    unit: int


@dataclass(frozen=True, slots=True)
class BoardRef:
    """One leaderboard instance: a board, a scope and a period.

    scope: "t" (the tenant), "d:<department>" or "g:<group>".
    """

    board: str
    scope: str
    kind: Period
    key: str


@dataclass(frozen=True, slots=True)
class BoardSlot:
    """One board instance a credit feeds, whoever the user is.

    scope: "t" (tenant), "d" (the credit's department) or "g" (the event's
    group); the department or group id comes with each credit (BoardPlan).
    group_member: the event's group is ranked instead of the user.
    newcomer_window_ms > 0: only while the credited user's first activity (or
    the join date the event carries) is less than that long ago.
    """

    board: str
    kind: Period
    period_key: str
    scope: str
    metric: Metric
    expires_at_s: int
    newcomer_window_ms: int = 0
    group_member: bool = False

    def ref(self, scope_id: str = "") -> BoardRef:
        return BoardRef(
            self.board, f"{self.scope}:{scope_id}" if scope_id else "t", self.kind, self.period_key
        )


@dataclass(frozen=True, slots=True, eq=False)
class BoardTemplate:
    """The board slots of one kind of credit in the current periods; shared by
    every such credit until a period turns over, so stores can describe it
    once per batch and credits just point at it."""

    slots: tuple[BoardSlot, ...]


@dataclass(slots=True)
class BoardPlan:
    template: BoardTemplate
    department: str = ""
    group: str = ""
    join_ms: int = 0


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

    Everything a store needs to apply it in a single atomic step: dedup,
    throttling, limits, award, counters, and the outbox entry. Not frozen:
    one is built per credit on the hot path, and frozen dataclasses pay for
    every field set; treat it as immutable.
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
    limits: tuple[LimitCheck, ...] = ()
    counters: tuple[CounterIncrement, ...] = ()
    accumulator: Accumulator | None = None
    interval_ms: int = 0
    interval_key: str = ""
    facts: LedgerFacts | None = None
    boards: BoardPlan | None = None
    # The event's first credit: its dedup record is the event's identity, kept
    # under the event id alone so any credit layout of a reused id collides.
    anchor: bool = True

    @property
    def entry_key(self) -> str:
        """The ledger's unique key for this credit within the tenant. The user is
        part of it: an event id reused for another user on another shard cannot
        be caught atomically, and must then still leave one row per payment."""
        return f"e:{key_part(self.event_id)}:{self.role.letter}:{key_part(self.user_id)}"


class StoreCode(enum.IntEnum):
    """What the store did with one CreditOp (superset of Outcome)."""

    AWARDED = 1
    DUPLICATE = 2
    CAPPED = 3
    THROTTLED = 4
    BACKPRESSURE = 7
    MAINTENANCE = 8
    ID_REUSED = 9


@dataclass(frozen=True, slots=True)
class CreditResult:
    code: StoreCode
    points: int
    balance: int
    # 1-based index into CreditOp.limits of the limit that capped or clipped
    # the credit, 0 for none.
    limit_index: int = 0
    # For DUPLICATE and ID_REUSED: the first recording's outcome.
    original: StoreCode | None = None
