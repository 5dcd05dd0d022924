"""Leaderboards: who is ranked, by what, over which periods and scopes.

Rule file, a rule-set block: `boards: {name: {description, score, member,
feeds, periods, scopes, newcomer_days, keep_periods, winners}}`
(docs/leaderboards.md). Reads (Leaderboard, GetRank, ListWinners) resolve
boards through `BOARDS`; the hall of fame records winners of closed periods.

Compiles every credit to a First step (the user's first paid credit, which
newcomer windows read, whether or not the credit feeds a board) and, for
credits some board is fed by, one Board step with a slot per (board,
period, scope). A rebuild replays both, so boards survive a Redis loss.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pointsd.service.domain import Metric, Period, Role
from pointsd.service.domain.steps import Board, BoardSlot, First, Step
from pointsd.service.rules.checker import ACTION_RE, Checker
from pointsd.service.rules.mechanics.base import CompileContext, Compiled, Mechanic, Rank, Refs
from pointsd.service.rules.model import ActionRule, PartKey

__all__ = [
    "BOARDS",
    "BOARD_PERIOD_S",
    "BoardFeed",
    "BoardMember",
    "BoardRule",
    "BoardScope",
    "Boards",
]


class BoardMember(enum.StrEnum):
    USER = "user"
    GROUP = "group"


class BoardScope(enum.StrEnum):
    TENANT = "tenant"
    DEPARTMENT = "department"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class BoardFeed:
    """Credits of `action` ("*" = any) to `role` (None = either) feed the board."""

    action: str
    role: Role | None = None

    def matches(self, action: str, role: Role) -> bool:
        return (self.action in ("*", action)) and (self.role is None or self.role is role)


@dataclass(frozen=True, slots=True)
class BoardRule:
    """A leaderboard: who is ranked, by what, over which periods and scopes.

    score "points": the points of each awarded credit; "count": 1 per awarded
    credit. member "group": the event's group is ranked (its members' credits
    add up). newcomer_days > 0: only credits within that many days of the
    user's first activity (or attributes["join_date"], YYYY-MM-DD) count.
    keep_periods: how many past periods stay readable. winners: top N per
    closed week/month written to the hall of fame (0 = none).
    """

    name: str
    description: str
    score: Metric
    member: BoardMember
    feeds: tuple[BoardFeed, ...]
    periods: tuple[Period, ...]
    scopes: tuple[BoardScope, ...]
    newcomer_days: int = 0
    keep_periods: int = 3
    winners: int = 10

    def feeds_credit(self, action: str, role: Role) -> bool:
        return any(f.matches(action, role) for f in self.feeds)


# A tenant's boards by name.
BOARDS: PartKey[Mapping[str, BoardRule]] = PartKey("boards", {})

# Upper bounds of period lengths, for board key expiry.
# A board key lives keep_periods of these past its period's state retention.
BOARD_PERIOD_S = {Period.DAY: 86_400, Period.WEEK: 7 * 86_400, Period.MONTH: 31 * 86_400}
_DAY_MS = 86_400_000
_SCOPE_LETTER = {BoardScope.TENANT: "t", BoardScope.DEPARTMENT: "d", BoardScope.GROUP: "g"}
_BOARD_KEYS = {
    "description",
    "score",
    "member",
    "feeds",
    "periods",
    "scopes",
    "newcomer_days",
    "keep_periods",
    "winners",
}
_PERIODS = {"day": Period.DAY, "week": Period.WEEK, "month": Period.MONTH, "all": Period.EVER}
_FIRST = First()


class _CompiledBoards(Compiled):
    rank = Rank.BOARD

    def __init__(self, boards: list[BoardRule]) -> None:
        self.boards = boards
        self.kinds = tuple(dict.fromkeys(k for b in boards for k in b.periods))

    def steps(self, refs: Refs, *, restore: bool) -> tuple[Step, ...]:
        if not self.boards:
            return (_FIRST,)
        slots = []
        for board in self.boards:
            for kind in board.periods:
                period = refs[kind]
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
        return (_FIRST, Board(tuple(slots)))


def _board(
    c: Checker, name: Any, raw: Any, actions: Mapping[str, ActionRule], path: str
) -> BoardRule | None:
    if not (isinstance(name, str) and ACTION_RE.match(name)):
        c.fail(path, "board names are 1-64 chars of a-z 0-9 . _ - starting with a letter or digit")
        return None
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, _BOARD_KEYS, path)
    score = m.get("score", "points")
    if score not in ("points", "count"):
        c.fail(f"{path}.score", f"must be points or count, got {score!r}")
    member = m.get("member", "user")
    if member not in ("user", "group"):
        c.fail(f"{path}.member", f"must be user or group, got {member!r}")
    feeds = _feeds(c, m, actions, path)
    periods = c.choices(m.get("periods"), f"{path}.periods", _PERIODS, [])
    scopes = c.choices(
        m.get("scopes"), f"{path}.scopes", {s.value: s for s in BoardScope}, ["tenant"]
    )
    if member == "group" and BoardScope.GROUP in scopes:
        c.fail(f"{path}.scopes", "a board of groups cannot also be scoped per group")
    description = _description(c, m, name, path)
    return BoardRule(
        name=name,
        description=description,
        score=Metric.POINTS if score == "points" else Metric.COUNT,
        member=BoardMember.GROUP if member == "group" else BoardMember.USER,
        feeds=tuple(feeds),
        periods=tuple(periods),
        scopes=tuple(scopes),
        newcomer_days=c.integer(m.get("newcomer_days", 0), f"{path}.newcomer_days", 0, 3650),
        keep_periods=c.integer(m.get("keep_periods", 3), f"{path}.keep_periods", 1, 100),
        winners=c.integer(m.get("winners", 10), f"{path}.winners", 0, 100),
    )


def _feeds(
    c: Checker, m: Mapping[str, Any], actions: Mapping[str, ActionRule], path: str
) -> list[BoardFeed]:
    feeds: list[BoardFeed] = []
    raw_feeds = m.get("feeds", [{"action": "*"}])
    if not isinstance(raw_feeds, list) or not raw_feeds:
        c.fail(f"{path}.feeds", "must be a non-empty list of {action, role}")
        raw_feeds = []
    for i, raw_feed in enumerate(raw_feeds):
        feed = _feed(c, raw_feed, actions, f"{path}.feeds[{i}]")
        if feed is not None:
            feeds.append(feed)
    return feeds


def _feed(c: Checker, raw: Any, actions: Mapping[str, ActionRule], fpath: str) -> BoardFeed | None:
    f = c.mapping(raw, fpath)
    if f is None:
        return None
    c.unknown(f, {"action", "role"}, fpath)
    action = f.get("action", "*")
    if action != "*" and action not in actions:
        c.fail(f"{fpath}.action", f"no action {action!r} in this rule set")
    role = f.get("role")
    if role not in (None, "actor", "target"):
        c.fail(f"{fpath}.role", f"must be actor or target, got {role!r}")
        role = None
    return BoardFeed(str(action), Role[role.upper()] if role else None)


def _description(c: Checker, m: Mapping[str, Any], name: str, path: str) -> str:
    description = m.get("description", name)
    if not isinstance(description, str) or len(description) > 200:
        c.fail(f"{path}.description", "must be one line of at most 200 characters")
        description = name
    return description


class Boards(Mechanic):
    name = "boards"
    rule_set_key = "boards"

    def parse_rule_set(
        self, c: Checker, raw: Any, actions: Mapping[str, ActionRule], path: str
    ) -> Any:
        boards: dict[str, BoardRule] = {}
        for key, raw_board in (c.mapping(raw, path) or {}).items():
            board = _board(c, key, raw_board, actions, f"{path}.{key}")
            if board is not None:
                boards[key] = board
        return boards

    def compile(self, ctx: CompileContext) -> Compiled | None:
        feeding = [
            b
            for b in ctx.tenant.part(BOARDS).values()
            if b.feeds_credit(ctx.rule.key, ctx.credit.role)
        ]
        return _CompiledBoards(feeding)
