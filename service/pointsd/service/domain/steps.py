"""The award primitives: what one credit operation may do, step by step.

A mechanic (caps, throttles, boards, ...) is compiled by the rules engine
into a program: a tuple of these steps. Storage applies a program in one
atomic Lua call per (tenant, shard) chunk (storage/pointsd/storage/redis/award.lua) in two
passes: first every step that can refuse or change the points (`checks`:
Accumulate, Throttle, Check); if none refused, every step's effect, in
order. Steps are frozen and shared: one program serves every credit of the
same kind in the same periods, so storage can encode it once per call.

Counters are per user: storage prefixes a counter name with the credited
user, and files it in the hash of its period. `expires_at_s` (unix s, 0 =
never) is when a step's state may be dropped; a rebuild skips steps whose
state has expired.

Values: some steps produce a value (old, new) that a following Cross step
reads: Bump, Peak and Distinct (the counter), Day (the run of active days
around the day), Credit (the user's lifetime earned points).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pointsd.service.domain import BoardRef, Metric, Period, PeriodRef

__all__ = [
    "Accumulate",
    "Amount",
    "Board",
    "BoardSlot",
    "Bonus",
    "Bump",
    "Check",
    "Credit",
    "Cross",
    "Day",
    "Distinct",
    "Entry",
    "First",
    "Freezes",
    "Member",
    "Peak",
    "Reach",
    "Scale",
    "Step",
    "Threshold",
    "Throttle",
]


class Step:
    """Base of the primitives. `expires_at_s`: when its state may go (0 = never)."""

    __slots__ = ()

    @property
    def expires_at_s(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class _PeriodStep(Step):
    """A step whose state lives in a period's counters: it expires with them.
    `period` is the first field of every such step (a field of this base, not
    redeclared, so the compiled build sees one attribute)."""

    period: PeriodRef

    @property
    def expires_at_s(self) -> int:
        return self.period.expires_at_s


class Amount(enum.StrEnum):
    """What a Bump adds: 1 per award, the awarded points, or the quantity."""

    COUNT = "c"
    POINTS = "p"
    QUANTITY = "q"


class Member(enum.StrEnum):
    """Which of the credit's facts a Distinct counts."""

    COUNTERPART = "cp"
    DEPARTMENT = "dep"
    GROUP = "grp"


@dataclass(frozen=True, slots=True)
class Bonus:
    """An extra ledger row of an award (a milestone): `points` (may be 0)
    credited on top, `tag` names it ([a-z0-9._-], unique within the credit),
    `reason` is the row's text. `badge` (an id, "" for none) is granted with
    it and kept in the user's badges with the time it was earned.

    A Cross or Reach bonus is a once-bonus: its tag names the mechanic, its
    id and its period ("task.daily-messages.2026-12-02"), and its ledger row
    is keyed by user and tag, so the ledger itself refuses a second one. An
    Entry bonus (paid with every award) is keyed by its award."""

    tag: str
    points: int
    reason: str
    badge: str = ""


# --------------------------------------------------------------------------
# Checks: may refuse the credit or change its points; nothing is written
# unless every check passed.


@dataclass(frozen=True, slots=True)
class Accumulate(_PeriodStep):
    """Collect the quantity in a counter; the points are `points per unit` x
    the whole `unit`s crossed (1 point per 30 online minutes, reported in any
    chunks), or with `tiers` the price of each unit crossed: the period's
    n-th unit pays tiers[n-1], units past the list its last. Effect: the
    counter holds the new total."""

    counter: str
    unit: int
    tiers: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Scale(Step):
    """A campaign: the credit's points become points x percent / 100 +
    extra (rounded down), before the caps check them. `name` is the
    campaign's (not sent to storage)."""

    percent: int
    extra: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Throttle(Step):
    """Refuse (THROTTLED) an award closer than `interval_ms` to another
    awarded one of the same `name`, before or after (events arrive in any
    order). Keeps the latest award times (occurred_at) for `keep_ms`."""

    name: str
    interval_ms: int
    keep_ms: int


@dataclass(frozen=True, slots=True)
class Check(_PeriodStep):
    """A cap on a counter. COUNT: refuse (CAPPED) when the counter is at
    `max`. POINTS: clip the points to what is left under `max`, refuse when
    nothing is. `number` (1-based) is reported with the result so the
    caller can name the cap; `label` is that name (not sent to storage).
    The counter itself moves with a Bump."""

    counter: str
    metric: Metric
    max: int
    label: str
    number: int = 0


# --------------------------------------------------------------------------
# Effects: applied in order once every check passed.


@dataclass(frozen=True, slots=True)
class Bump(_PeriodStep):
    """Add to a counter (by 1, the points, or the quantity; never 0).
    Produces (old, new)."""

    counter: str
    by: Amount


@dataclass(frozen=True, slots=True)
class Peak(_PeriodStep):
    """Keep the highest quantity reported (a group's member count): the
    counter becomes max(counter, quantity). Produces (old, new).
    `of_value`: the highest value the previous producing step made instead
    (the best streak)."""

    counter: str
    of_value: bool = False


@dataclass(frozen=True, slots=True)
class Distinct(_PeriodStep):
    """Count the distinct values of `member` (e.g. colleagues thanked), at
    most `bound` of them (memory stays bounded). Produces (old, new)."""

    counter: str
    member: Member
    bound: int


@dataclass(frozen=True, slots=True)
class Freezes:
    """Streak freezes: how many a user holds (a counter of `period`, the
    ever hash) and at most how many. `date` is the Day's date (YYYYMMDD),
    `before`/`after` the dates of the `max` business days before and after
    it, nearest first: freeze bonuses are tagged with the day they cover,
    so their ledger rows name a date, whatever later calendar edits do to
    business-day numbers."""

    period: PeriodRef
    counter: str
    max: int
    date: str = ""
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Day(Step):
    """Mark `ordinal` (the event's business day, numbered by the tenant's
    calendar so non-working days have none) in the user's bitmap `name`.
    Produces (old, new) lengths of the run of marked days containing it,
    ORing in bitmap `cover` when named (days covered otherwise), looking at
    most `scan` days either way; marking a marked day changes nothing, so
    arrival order never matters. The bitmaps live `keep_s` past each write.

    With `freezes` (and a cover): a newly marked day after missed working
    days uses up one held freeze per missed day, if the user holds enough,
    and covers them (a zero-point once-bonus "freeze.<ordinal>" each); a
    late event for a covered day gives its freeze back ("freeze-back.<n>"),
    so the freezes left do not depend on arrival order either. A rebuild
    marks days without freezes (covers come back from those bonus rows)."""

    name: str
    ordinal: int
    scan: int
    keep_s: int
    cover: str = ""
    freezes: Freezes | None = None


@dataclass(frozen=True, slots=True)
class Threshold:
    """`per_run`: the bonus is once per run of days (a Day step's value):
    its tag gets ".<first day of the run>". `freezes`: streak freezes the
    bonus grants (the Day step's Freezes, capped at its max)."""

    at: int
    bonus: Bonus
    per_run: bool = False
    freezes: int = 0


@dataclass(frozen=True, slots=True)
class Cross(Step):
    """For each threshold with old < at <= new of the value the previous
    producing step made, the credit earns the threshold's bonus. A counter
    that only grows crosses each threshold once; a run once per run."""

    thresholds: tuple[Threshold, ...]
    # Where once-bonuses paid are marked (the period of the counter crossed,
    # kept as long), so a threshold crossed again (a target changed) pays
    # nothing twice; None: not marked.
    paid: PeriodRef | None = None


@dataclass(frozen=True, slots=True)
class Reach(Step):
    """Levels: for each threshold the user's lifetime earned points pass
    during the credit (from before it to after it and every bonus it
    earned), a zero-point once-bonus (a milestone row). Evaluated after the
    bonuses are paid, so a task reward that lifts the user a level reports
    the level at once. Points are never taken back on spending, so a level
    once reached is never reached again (and each level reached is marked in
    `paid`, the ever hash, so a negative adjustment does not report it again)."""

    thresholds: tuple[Threshold, ...]
    paid: PeriodRef | None = None


@dataclass(frozen=True, slots=True)
class Credit(Step):
    """The user's balance: available and lifetime earned move by the points,
    and the credit's ledger entry joins the outbox. Produces (old, new)
    lifetime earned points. A program without it (rebuild) moves no balance."""


@dataclass(frozen=True, slots=True)
class Entry(Step):
    """The credit earns `bonus` whenever it is awarded (an extra ledger row)."""

    bonus: Bonus


@dataclass(frozen=True, slots=True)
class First(Step):
    """Remember the occurred_at of the user's first paid credit (newcomer
    windows of Board slots read it)."""


@dataclass(frozen=True, slots=True)
class BoardSlot:
    """One board instance a paid credit feeds.

    scope: "t" (tenant), "d" (the credit's department) or "g" (the event's
    group). group_member: the group is ranked instead of the user.
    newcomer_window_ms > 0: only while the user's first paid credit (or the
    join date the event carries) is less than that long ago.
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
class Board(Step):
    """Add each paid credit to its board slots: 1 (COUNT) or the points.
    Increments of one call are summed per board and member first."""

    slots: tuple[BoardSlot, ...]

    @property
    def expires_at_s(self) -> int:
        if any(not s.expires_at_s for s in self.slots):
            return 0
        return max((s.expires_at_s for s in self.slots), default=0)
