"""The durable ledger: batched idempotent writes, history pages, sums.

Guarantees and column constraints: `storage/pointsd/storage/postgres/INVARIANTS.md`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import exc as saexc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pointsd.storage.entries import LedgerRow
from pointsd.storage.errors import LedgerDataError
from pointsd.storage.postgres.db import pg_errors

__all__ = ["Ledger", "LedgerPage", "UserSums", "WriteResult"]

_COLUMNS = (
    "tenant_id, entry_key, user_id, points, balance_after, kind, action, event_id, role, "
    "counterpart_id, group_id, department_id, quantity, attributes, reason, occurred_at, "
    "recorded_at, state, flag_id"
)
# Rows are COPYed into a per-session staging table (C-speed, no SQL parameters),
# then moved with one INSERT ... SELECT; the unique (tenant_id, entry_key)
# turns redelivered entries into no-ops.
_STAGING = """
    CREATE TEMP TABLE IF NOT EXISTS ledger_staging (
        tenant_id text, entry_key text, user_id text, points bigint, balance_after bigint,
        kind text, action text, event_id text, role text, counterpart_id text,
        group_id text, department_id text, quantity bigint, attributes jsonb, reason text,
        occurred_at timestamptz, recorded_at timestamptz, state text, flag_id bigint
    ) ON COMMIT DELETE ROWS
"""
_COPY = f"COPY ledger_staging ({_COLUMNS}) FROM STDIN"
_MOVE = (
    f"INSERT INTO ledger_entries ({_COLUMNS}) SELECT {_COLUMNS} FROM ledger_staging "
    "ON CONFLICT (tenant_id, entry_key) DO NOTHING"
)
# A skipped row must be a redelivery: the same outbox entry, byte for byte.
# Anything else under an existing key (another payment: a different user,
# amount, balance after, or moment of recording) is reported, never dropped.
_COMPARED = "user_id, points, kind, balance_after, occurred_at, recorded_at, state"
_STORED = (
    f"SELECT tenant_id, entry_key, {_COMPARED} FROM ledger_entries l "
    "WHERE (tenant_id, entry_key) IN (SELECT tenant_id, entry_key FROM ledger_staging)"
)

_PAGE = text(
    """
    SELECT id, entry_key, user_id, points, balance_after, kind, action, event_id, role,
           counterpart_id, group_id, department_id, quantity, attributes, reason,
           occurred_at, recorded_at, state, flag_id
    FROM ledger_entries
    WHERE tenant_id = :tenant_id AND user_id = :user_id
      AND (occurred_at, id) < (:before_at, :before_id)
    ORDER BY occurred_at DESC, id DESC
    LIMIT :limit
    """
)

_SUMS = text(
    """
    SELECT user_id,
           COALESCE(SUM(points) FILTER (WHERE state = 'paid'
                                        AND kind IN ('award', 'adjust', 'bonus', 'release')), 0),
           COALESCE(-SUM(points) FILTER (WHERE kind IN ('spend', 'refund')), 0),
           COALESCE(SUM(points) FILTER (WHERE state = 'paid'), 0),
           COALESCE(SUM(points) FILTER (WHERE state = 'held'), 0)
    FROM ledger_entries
    WHERE tenant_id = :tenant_id
    GROUP BY user_id
    """
)

# Per (user, flag): what is held under the flag and not settled (held
# rows, a settlement's held side included), and what each settlement moved.
_HELD_BY_FLAG = text(
    """
    SELECT user_id, flag_id, SUM(points) FROM ledger_entries
    WHERE tenant_id = :tenant_id AND state = 'held' AND flag_id IS NOT NULL
    GROUP BY user_id, flag_id HAVING SUM(points) <> 0
    """
)
_SETTLEMENTS = text(
    """
    SELECT user_id, flag_id, -SUM(points) FROM ledger_entries
    WHERE tenant_id = :tenant_id AND kind IN ('release', 'void') AND state = 'held'
    GROUP BY user_id, flag_id
    """
)

_ENTRIES = text(
    """
    SELECT id, entry_key, user_id, points, balance_after, kind, action, event_id, role,
           counterpart_id, group_id, department_id, quantity, attributes, reason,
           occurred_at, recorded_at, state, flag_id
    FROM ledger_entries
    WHERE tenant_id = :tenant_id AND id > :after_id
    ORDER BY id
    LIMIT :limit
    """
)

_TARGET_ONLY = text(
    """
    SELECT id, entry_key, user_id, points, balance_after, kind, action, event_id, role,
           counterpart_id, group_id, department_id, quantity, attributes, reason,
           occurred_at, recorded_at, state, flag_id
    FROM ledger_entries t
    WHERE t.tenant_id = :tenant_id AND t.kind = 'award' AND t.role = 't'
      AND NOT EXISTS (SELECT 1 FROM ledger_entries a WHERE a.tenant_id = t.tenant_id
                      AND a.event_id = t.event_id AND a.kind = 'award' AND a.role = 'a')
    """
)

_BONUSES = text(
    """
    SELECT id, entry_key, user_id, points, balance_after, kind, action, event_id, role,
           counterpart_id, group_id, department_id, quantity, attributes, reason,
           occurred_at, recorded_at, state, flag_id
    FROM ledger_entries
    WHERE tenant_id = :tenant_id AND kind = 'bonus'
    ORDER BY id
    """
)

# The public thanks feed: the receivers' award rows of thanks cards (the
# sender's credit pays nothing and has no row). The predicate is written out,
# not bound, so the planner can use the partial indexes of migration 0007,
# which repeat it.
_THANKS_CARDS = (
    "tenant_id = :tenant_id AND action = 'thanks_card' AND kind = 'award' AND role = 't' "
    "AND (occurred_at, id) < (:before_at, :before_id)"
)
_ROW_COLUMNS = (
    "id, entry_key, user_id, points, balance_after, kind, action, event_id, role, "
    "counterpart_id, group_id, department_id, quantity, attributes, reason, occurred_at, "
    "recorded_at, state, flag_id"
)
_NEWEST = "ORDER BY occurred_at DESC, id DESC LIMIT :limit"


def _thanks_query(*matches: str) -> str:
    """Newest cards first; with two matches (either column names the
    department or the user), one index scan per match, merged."""
    if not matches:
        return f"SELECT {_ROW_COLUMNS} FROM ledger_entries WHERE {_THANKS_CARDS} {_NEWEST}"
    scans = " UNION ".join(
        f"(SELECT {_ROW_COLUMNS} FROM ledger_entries WHERE {_THANKS_CARDS} AND {m} {_NEWEST})"
        for m in matches
    )
    return f"SELECT {_ROW_COLUMNS} FROM ({scans}) cards {_NEWEST}"


_THANKS_ALL = text(_thanks_query())
_THANKS_DEPARTMENT = text(
    _thanks_query("department_id = :scope", "attributes->>'target_department_id' = :scope")
)
_THANKS_USER = text(_thanks_query("user_id = :scope", "counterpart_id = :scope"))

_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def _key(r: LedgerRow) -> tuple[str, str]:
    return (r.tenant_id, r.entry_key)


def _content(r: LedgerRow) -> tuple[object, ...]:
    """The compared columns of a row, as PostgreSQL returns them."""
    return (
        r.user_id,
        r.points,
        r.kind,
        r.balance_after,
        _dt(r.occurred_at_ms),
        _dt(r.recorded_at_ms),
        r.state,
    )


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int
    # Rows not written because their entry key holds a row with other content.
    conflicts: list[LedgerRow]


@dataclass(frozen=True, slots=True)
class LedgerPage:
    rows: list[LedgerRow]
    # (occurred_at ms, id) of the last row when more rows follow, else None.
    next_cursor: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class UserSums:
    earned: int
    spent: int
    # Available: every paid row.
    net: int
    held: int = 0


def _row(tenant_id: str, r: Sequence[object]) -> LedgerRow:
    (
        _id,
        entry_key,
        user_id,
        points,
        balance_after,
        kind,
        action,
        event_id,
        role,
        counterpart_id,
        group_id,
        department_id,
        quantity,
        attributes,
        reason,
        occurred_at,
        recorded_at,
        state,
        flag_id,
    ) = r
    assert isinstance(occurred_at, datetime) and isinstance(recorded_at, datetime)
    return LedgerRow(
        tenant_id=tenant_id,
        entry_key=str(entry_key),
        user_id=str(user_id),
        points=int(points),  # type: ignore[call-overload]
        balance_after=int(balance_after),  # type: ignore[call-overload]
        kind=str(kind),
        action=str(action),
        event_id=str(event_id),
        role=str(role),
        counterpart_id=str(counterpart_id),
        group_id=str(group_id),
        department_id=str(department_id),
        quantity=int(quantity),  # type: ignore[call-overload]
        reason=str(reason),
        occurred_at_ms=_ms(occurred_at),
        recorded_at_ms=_ms(recorded_at),
        attributes=dict(attributes) if isinstance(attributes, dict) else {},
        state=str(state),
        flag_id=None if flag_id is None else int(flag_id),  # type: ignore[call-overload]
    )


class Ledger:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def write(self, rows: Sequence[LedgerRow]) -> WriteResult:
        """Insert rows in one transaction: how many were new, and the rows
        whose key was taken by a row with other content (not written).

        Raises StorageUnavailable when PostgreSQL is unreachable (nothing was
        written) and LedgerDataError when it refuses the content.
        """
        if not rows:
            return WriteResult(0, [])
        try:
            copied = [
                (
                    r.tenant_id, r.entry_key, r.user_id, r.points,
                    r.balance_after, r.kind, r.action, r.event_id, r.role,
                    r.counterpart_id, r.group_id, r.department_id, r.quantity,
                    json.dumps(dict(r.attributes), ensure_ascii=False)
                    if r.attributes else "{}",
                    r.reason, _dt(r.occurred_at_ms), _dt(r.recorded_at_ms),
                    r.state, r.flag_id,
                )
                for r in rows
            ]  # fmt: skip
        except (ValueError, TypeError, OverflowError, OSError) as exc:
            # A row no table could hold: the content's fault, not an outage
            # (fromtimestamp raises OSError for far-off years).
            raise LedgerDataError(f"a ledger row cannot be stored: {exc}", "postgresql") from exc
        try:
            async with self.engine.begin() as conn:
                raw = await conn.get_raw_connection()
                pg: Any = raw.driver_connection
                async with pg.cursor() as cur:
                    # Every time: a rolled-back first transaction takes the table with it.
                    await cur.execute(_STAGING)
                    async with cur.copy(_COPY) as copy:
                        for row in copied:
                            await copy.write_row(row)
                    await cur.execute(_MOVE)
                    inserted = int(cur.rowcount or 0)
                    if inserted == len(rows):
                        return WriteResult(inserted, [])
                    await cur.execute(_STORED)
                    stored = {(str(r[0]), str(r[1])): tuple(r[2:]) for r in await cur.fetchall()}
                    return WriteResult(
                        inserted, [r for r in rows if stored.get(_key(r)) != _content(r)]
                    )
        except (saexc.SQLAlchemyError, psycopg.Error, OSError) as exc:
            raise pg_errors(exc) from exc

    async def write_each(self, rows: Sequence[LedgerRow]) -> tuple[WriteResult, list[LedgerRow]]:
        """Insert rows one by one (after a batch was refused): the combined
        result, and the rows PostgreSQL refuses."""
        written = 0
        conflicts: list[LedgerRow] = []
        refused: list[LedgerRow] = []
        for row in rows:
            try:
                result = await self.write([row])
            except LedgerDataError:
                refused.append(row)
                continue
            written += result.inserted
            conflicts += result.conflicts
        return WriteResult(written, conflicts), refused

    async def page(
        self, tenant_id: str, user_id: str, limit: int, cursor: tuple[int, int] | None
    ) -> LedgerPage:
        """A user's entries, newest first (occurred_at, then insertion order)."""
        return await self._keyset(_PAGE, tenant_id, limit, cursor, {"user_id": user_id})

    async def thanks(
        self,
        tenant_id: str,
        limit: int,
        cursor: tuple[int, int] | None,
        *,
        department_id: str = "",
        user_id: str = "",
    ) -> LedgerPage:
        """Thanks cards paid to their receivers, newest first (occurred_at,
        then insertion order): the tenant's, a department's (the sender's
        department_id or the receiver's target_department_id attribute), or a
        user's (sent or received). At most one of department_id, user_id."""
        assert not (department_id and user_id), "one filter at most"
        if department_id:
            query, params = _THANKS_DEPARTMENT, {"scope": department_id}
        elif user_id:
            query, params = _THANKS_USER, {"scope": user_id}
        else:
            query, params = _THANKS_ALL, {}
        return await self._keyset(query, tenant_id, limit, cursor, params)

    async def _keyset(
        self,
        query: Any,
        tenant_id: str,
        limit: int,
        cursor: tuple[int, int] | None,
        params: dict[str, Any],
    ) -> LedgerPage:
        """One page of a newest-first query over rows, and the cursor of the
        next (the (occurred_at, id) of the page's last row when more follow)."""
        before_at, before_id = (_dt(cursor[0]), cursor[1]) if cursor else (_FAR_FUTURE, 2**62)
        bound = {"tenant_id": tenant_id, "before_at": before_at, "before_id": before_id,
                 "limit": limit + 1, **params}  # fmt: skip
        try:
            async with self.engine.connect() as conn:
                raw = (await conn.execute(query, bound)).all()
        except (saexc.SQLAlchemyError, OSError) as exc:
            raise pg_errors(exc) from exc
        more = len(raw) > limit
        raw = raw[:limit]
        next_cursor = (_ms(raw[-1][15]), int(raw[-1][0])) if more and raw else None
        return LedgerPage([_row(tenant_id, r) for r in raw], next_cursor)

    async def sums(self, tenant_id: str) -> dict[str, UserSums]:
        """Per-user earned, spent and net points of a tenant."""
        try:
            async with self.engine.connect() as conn:
                result = await conn.execute(_SUMS, {"tenant_id": tenant_id})
                return {
                    str(user): UserSums(int(earned), int(spent), int(net), int(held))
                    for user, earned, spent, net, held in result.all()
                }
        except (saexc.SQLAlchemyError, OSError) as exc:
            raise pg_errors(exc) from exc

    async def held_by_flag(self, tenant_id: str) -> dict[tuple[str, int], int]:
        """(user, flag id) -> points held under the flag, not settled yet."""
        return await self._by_flag(_HELD_BY_FLAG, tenant_id)

    async def settlements(self, tenant_id: str) -> dict[tuple[str, int], int]:
        """(user, flag id) -> points each farming flag's settlement moved."""
        return await self._by_flag(_SETTLEMENTS, tenant_id)

    async def _by_flag(self, query: Any, tenant_id: str) -> dict[tuple[str, int], int]:
        try:
            async with self.engine.connect() as conn:
                result = await conn.execute(query, {"tenant_id": tenant_id})
                return {(str(u), int(f)): int(p) for u, f, p in result.all()}
        except (saexc.SQLAlchemyError, OSError) as exc:
            raise pg_errors(exc) from exc

    async def target_only(self, tenant_id: str) -> list[LedgerRow]:
        """Award rows paid to a target whose event paid its actor nothing
        (capped, throttled, or a rule without an actor credit)."""
        try:
            async with self.engine.connect() as conn:
                result = await conn.execute(_TARGET_ONLY, {"tenant_id": tenant_id})
                return [_row(tenant_id, r) for r in result.all()]
        except (saexc.SQLAlchemyError, OSError) as exc:
            raise pg_errors(exc) from exc

    async def bonuses(self, tenant_id: str) -> list[LedgerRow]:
        """Every bonus row of a tenant (tasks done, levels, badges), in order."""
        try:
            async with self.engine.connect() as conn:
                result = await conn.execute(_BONUSES, {"tenant_id": tenant_id})
                return [_row(tenant_id, r) for r in result.all()]
        except (saexc.SQLAlchemyError, OSError) as exc:
            raise pg_errors(exc) from exc

    async def entries(self, tenant_id: str, batch: int = 5000) -> AsyncIterator[LedgerRow]:
        """Every entry of a tenant in insertion order, fetched in keyset pages."""
        after = 0
        while True:
            try:
                async with self.engine.connect() as conn:
                    result = await conn.execute(
                        _ENTRIES, {"tenant_id": tenant_id, "after_id": after, "limit": batch}
                    )
                    raw = result.all()
            except (saexc.SQLAlchemyError, OSError) as exc:
                raise pg_errors(exc) from exc
            if not raw:
                return
            for r in raw:
                yield _row(tenant_id, r)
            after = int(raw[-1][0])
