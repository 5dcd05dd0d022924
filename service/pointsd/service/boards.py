"""Leaderboard requests: which board instance (board, scope, period) a request
means, validated, with errors that say what to fix."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.convert import PERIOD_NAMES, PERIODS
from pointsd.service.domain import BoardRef, Period
from pointsd.service.errors import NotFound, clip
from pointsd.service.rules import RulesEngine
from pointsd.service.rules.mechanics.boards import BOARDS, BoardMember, BoardRule, BoardScope
from pointsd.service.rules.model import TenantRules
from pointsd.service.rules.periods import period_key, shift_period
from pointsd.service.validation import InvalidField, check_id, check_tenant

__all__ = ["BoardQuery", "resolve_board"]

_KEY_FORMS = {
    # fullmatch and [0-9]: "$" would let a trailing newline through, "\d" any
    # script's digits (which int() accepts).
    Period.DAY: (re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})"), "YYYY-MM-DD"),
    Period.WEEK: (re.compile(r"([0-9]{4})-W([0-9]{2})"), "YYYY-Www (ISO week)"),
    Period.MONTH: (re.compile(r"([0-9]{4})-([0-9]{2})"), "YYYY-MM"),
    Period.EVER: (re.compile(r"all"), '"all"'),
}
_SCOPE_PREFIX = {BoardScope.DEPARTMENT: "d:", BoardScope.GROUP: "g:"}
_SCOPE_TYPES = {
    pb.TENANT: BoardScope.TENANT,
    pb.DEPARTMENT: BoardScope.DEPARTMENT,
    pb.GROUP: BoardScope.GROUP,
}


@dataclass(frozen=True, slots=True)
class BoardQuery:
    tenant: TenantRules
    board: BoardRule
    ref: BoardRef

    @property
    def summed(self) -> bool:
        """Group boards add up per-shard scores (see storage/pointsd/storage/redis/boards.py)."""
        return self.board.member is BoardMember.GROUP

    @property
    def scope_type(self) -> int:
        if self.ref.scope.startswith("d:"):
            return pb.DEPARTMENT
        if self.ref.scope.startswith("g:"):
            return pb.GROUP
        return pb.TENANT

    @property
    def scope_id(self) -> str:
        return self.ref.scope[2:] if self.ref.scope != "t" else ""


def _check_key(kind: Period, key: str) -> None:
    form, spelled = _KEY_FORMS[kind]
    match = form.fullmatch(key)
    valid = match is not None
    if match and kind is Period.DAY:
        try:
            date.fromisoformat(key)
        except ValueError:
            valid = False
    elif match and kind is Period.WEEK:
        year, week = int(match[1]), int(match[2])
        try:
            date.fromisocalendar(year, week, 1)
        except ValueError:
            valid = False
    elif match and kind is Period.MONTH:
        valid = 1 <= int(match[2]) <= 12
    if not valid:
        raise InvalidField(
            "period_key", f"{clip(key)!r} is not a {PERIOD_NAMES[kind]} key ({spelled})"
        )


def resolve_board(
    engine: RulesEngine,
    tenant_id: str,
    board_name: str,
    period: int,
    period_offset: int,
    explicit_key: str,
    scope_id: str,
    scope_type: int,
    now_ms: int,
    *,
    periods: tuple[Period, ...] | None = None,
) -> BoardQuery:
    tenant = check_tenant(engine, tenant_id)
    if not board_name:
        raise InvalidField("board", "is required")
    boards = tenant.part(BOARDS)
    board = boards.get(board_name)
    if board is None:
        known = ", ".join(sorted(boards)) or "none"
        raise NotFound(
            f"board: tenant {tenant_id!r} has no board {clip(board_name)!r} (boards: {known})"
        )
    kind = PERIODS.get(period)  # type: ignore[call-overload]
    allowed = [k for k in board.periods if periods is None or k in periods]
    names = ", ".join(PERIOD_NAMES[k] for k in allowed)
    if kind is None:
        raise InvalidField("period", f"is required: one of {names}")
    if kind not in allowed:
        raise InvalidField(
            "period", f"board {board_name!r} keeps {names}, not {PERIOD_NAMES[kind]}"
        )
    if explicit_key:
        _check_key(kind, explicit_key)
        key = explicit_key
    else:
        if not 0 <= period_offset <= board.keep_periods:
            raise InvalidField(
                "period_offset",
                f"must be between 0 and {board.keep_periods}: board {board_name!r} keeps "
                f"{board.keep_periods} past periods",
            )
        at = shift_period(kind, now_ms, tenant.timezone, period_offset)
        key = period_key(kind, at, tenant.timezone)
    return BoardQuery(
        tenant, board, BoardRef(board.name, _scope(board, scope_id, scope_type), kind, key)
    )


def _scope(board: BoardRule, scope_id: str, scope_type: int) -> str:
    wanted = _SCOPE_TYPES.get(scope_type)  # type: ignore[call-overload]
    if wanted is None and scope_type:
        raise InvalidField("scope_type", f"unknown value {scope_type}; TENANT, DEPARTMENT or GROUP")
    if wanted is BoardScope.TENANT or (wanted is None and not scope_id):
        if scope_id:
            raise InvalidField("scope_id", "must be empty for the TENANT scope")
        return "t"
    if wanted is None:
        others = [s for s in board.scopes if s is not BoardScope.TENANT]
        if not others:
            raise NotFound(f"scope_id: board {board.name!r} keeps no department or group scopes")
        if len(others) > 1:
            raise InvalidField(
                "scope_type", f"is required: board {board.name!r} keeps department and group scopes"
            )
        wanted = others[0]
    if wanted not in board.scopes:
        raise NotFound(f"scope_type: board {board.name!r} keeps no {wanted.value} scope")
    check_id("scope_id", scope_id)
    return _SCOPE_PREFIX[wanted] + scope_id
