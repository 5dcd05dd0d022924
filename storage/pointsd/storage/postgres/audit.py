"""The audit trail (PostgreSQL table `audit_log`, migration 0009).

One row per admin call: who, when, which RPC, the tenant, the request as
JSON (secrets removed by the service, service/pointsd/service/audit.py) and
the outcome. A row is written in the transaction that makes the call's
effect (`record(conn, row)`, called by the catalog and token stores), or on
its own before an effect outside PostgreSQL (`record_alone`, outcome
STARTED) or after a refusal. `settle` gives a STARTED row its final outcome,
or writes the row when the call has none yet; that is the only change a row
ever sees, and a trigger (migration 0009) refuses every other UPDATE, any
DELETE and TRUNCATE. `call_id` is unique, so writing a call's row twice
keeps the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from pointsd.storage.postgres.db import EngineStore

__all__ = ["STARTED", "AuditEntry", "AuditFilter", "AuditRow", "AuditStore", "record"]

STARTED = "STARTED"


@dataclass(frozen=True, slots=True)
class AuditRow:
    """A row to write. `request_json` is a JSON object, bounded by the service."""

    call_id: str  # a UUID the service makes per call
    occurred_at: datetime
    caller: str
    credential: str
    rpc: str
    tenant_id: str
    request_json: str
    outcome: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A row as read back."""

    audit_id: int
    occurred_at: datetime
    caller: str
    credential: str
    rpc: str
    tenant_id: str
    request_json: str
    outcome: str
    message: str


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Each empty or None: any. `tenants` None: every tenant; else only rows
    of these tenants (never a row with tenant '')."""

    caller: str = ""
    tenant_id: str = ""
    rpc: str = ""
    since: datetime | None = None
    until: datetime | None = None
    tenants: frozenset[str] | None = None


_INSERT = text(
    "INSERT INTO audit_log (call_id, occurred_at, caller, credential, rpc, tenant_id, request, "
    "outcome, message) VALUES (CAST(:call_id AS uuid), :occurred_at, :caller, :credential, :rpc, "
    ":tenant_id, CAST(:request AS jsonb), :outcome, :message) "
    "ON CONFLICT (call_id) DO NOTHING"
)
# A STARTED row of the call gets the outcome; a call without a row gets one.
_SETTLE = text(
    "WITH settled AS (UPDATE audit_log SET outcome = :outcome, message = :message "
    "WHERE call_id = CAST(:call_id AS uuid) AND outcome = 'STARTED' RETURNING 1) "
    "INSERT INTO audit_log (call_id, occurred_at, caller, credential, rpc, tenant_id, request, "
    "outcome, message) SELECT CAST(:call_id AS uuid), :occurred_at, :caller, :credential, :rpc, "
    ":tenant_id, CAST(:request AS jsonb), :outcome, :message "
    "WHERE NOT EXISTS (SELECT 1 FROM settled) ON CONFLICT (call_id) DO NOTHING"
)
_COLUMNS = (
    "audit_id, occurred_at, caller, credential, rpc, tenant_id, request::text, outcome, message"
)
# Constant clauses, joined as a request needs them: each filter reaches its
# index (a catch-all `:x = '' OR col = :x` would hide it from the planner).
_CLAUSES = {
    "caller": "caller = :caller",
    "tenant_id": "tenant_id = :tenant_id",
    "rpc": "rpc = :rpc",
    "since": "occurred_at >= :since",
    "until": "occurred_at < :until",
    "tenants": "tenant_id = ANY(:tenants)",
    "cursor": "(occurred_at, audit_id) < (:before_at, :before_id)",
}


def _params(row: AuditRow) -> dict[str, Any]:
    return {
        "call_id": row.call_id, "occurred_at": row.occurred_at, "caller": row.caller,
        "credential": row.credential, "rpc": row.rpc, "tenant_id": row.tenant_id,
        "request": row.request_json, "outcome": row.outcome, "message": row.message,
    }  # fmt: skip


async def record(conn: AsyncConnection, row: AuditRow) -> None:
    """Write `row` in the caller's transaction: it commits with the effect
    or not at all."""
    await conn.execute(_INSERT, _params(row))


class AuditStore(EngineStore):
    async def record(self, conn: AsyncConnection, row: AuditRow) -> None:
        """`record` inside another store's transaction."""
        await record(conn, row)

    async def record_alone(self, row: AuditRow) -> None:
        """Write `row` in a transaction of its own (a STARTED row before an
        effect outside PostgreSQL)."""

        async def work(conn: AsyncConnection) -> None:
            await record(conn, row)

        await self._run(work)

    async def settle(self, row: AuditRow) -> None:
        """End the call `row.call_id`: its STARTED row takes `row`'s outcome
        and message; a call with no row yet gets `row`; a settled row stays
        as it is. One statement."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(_SETTLE, _params(row))

        await self._run(work)

    async def page(
        self, where: AuditFilter, limit: int, cursor: tuple[datetime, int] | None
    ) -> tuple[list[AuditEntry], tuple[datetime, int] | None]:
        """Rows newest first (occurred_at, then audit_id), and the cursor of
        the next page (the last row's) when more follow."""
        clauses: list[str] = []
        params: dict[str, Any] = {"limit": limit + 1}
        for name in ("caller", "tenant_id", "rpc", "since", "until"):
            value = getattr(where, name)
            if value:
                clauses.append(_CLAUSES[name])
                params[name] = value
        if where.tenants is not None:
            clauses.append(_CLAUSES["tenants"])
            params["tenants"] = sorted(where.tenants)
        if cursor is not None:
            clauses.append(_CLAUSES["cursor"])
            params["before_at"], params["before_id"] = cursor
        query = text(
            f"SELECT {_COLUMNS} FROM audit_log"
            + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
            + " ORDER BY occurred_at DESC, audit_id DESC LIMIT :limit"
        )

        async def work(conn: AsyncConnection) -> list[AuditEntry]:
            return [AuditEntry(*r) for r in await conn.execute(query, params)]

        rows: list[AuditEntry] = await self._run(work, write=False)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, ((rows[-1].occurred_at, rows[-1].audit_id) if more else None)
