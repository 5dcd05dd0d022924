"""API tokens (PostgreSQL table `api_tokens`, migration 0008).

Rows hold a token's public id, its caller (name, roles, tenant scope) and a
salted hash of its secret, never the secret (service/pointsd/service/auth.py
makes tokens and hashes). Rows are never deleted: revoking sets revoked_at,
rotating creates a new row and gives the old one an expiry, so every
process's cache (`snapshot`, `changed_since`) sees each change as a row
whose updated_at moved. updated_at is PostgreSQL's clock_timestamp(), one
clock for every process; created_at, expires_at and revoked_at come from the
caller's service clock, which is what expiry is checked against.

create, revoke and rotate take the call's audit row (`audit`,
postgres/audit.py) and write it in their transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from pointsd.storage.errors import RecordChanged, RecordExists, RecordMissing
from pointsd.storage.postgres.audit import AuditRow, record
from pointsd.storage.postgres.db import EngineStore

__all__ = ["ApiToken", "TokenStore"]


@dataclass(frozen=True, slots=True)
class ApiToken:
    token_id: str
    name: str
    roles: tuple[str, ...]
    tenants: tuple[str, ...] | None  # None: every tenant
    secret_hash: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    replaced_by: str | None
    updated_at: datetime


_COLUMNS = (
    "token_id, name, roles, tenants, secret_hash, created_at, expires_at, revoked_at, "
    "replaced_by, updated_at"
)


def _token(row: Any) -> ApiToken:
    return ApiToken(
        row[0],
        row[1],
        tuple(row[2]),
        None if row[3] is None else tuple(row[3]),
        *row[4:],
    )


class TokenStore(EngineStore):
    async def create(
        self,
        *,
        token_id: str,
        name: str,
        roles: Sequence[str],
        tenants: Sequence[str] | None,
        secret_hash: str,
        now: datetime,
        expires_at: datetime | None,
        audit: AuditRow | None = None,
    ) -> ApiToken:
        async def work(conn: AsyncConnection) -> ApiToken:
            made = await _insert(conn, token_id, name, roles, tenants, secret_hash, now, expires_at)
            if audit is not None:
                await record(conn, audit)
            return made

        result: ApiToken = await self._run(work)
        return result

    async def get(self, token_id: str) -> ApiToken:
        async def work(conn: AsyncConnection) -> ApiToken | None:
            row = (
                await conn.execute(
                    text(f"SELECT {_COLUMNS} FROM api_tokens WHERE token_id = :id"),
                    {"id": token_id},
                )
            ).first()
            return None if row is None else _token(row)

        found: ApiToken | None = await self._run(work, write=False)
        if found is None:
            raise RecordMissing(f"no token {token_id}")
        return found

    async def list(self) -> builtins.list[ApiToken]:
        """Every token, oldest first (revoked and expired ones included)."""
        rows, _ = await self.snapshot()
        return rows

    async def revoke(self, token_id: str, now: datetime, audit: AuditRow | None = None) -> ApiToken:
        """Revoked at `now`; revoking a revoked token changes nothing."""

        async def work(conn: AsyncConnection) -> ApiToken | None:
            row = (
                await conn.execute(
                    text(
                        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, :now), "
                        "updated_at = clock_timestamp() WHERE token_id = :id "
                        f"RETURNING {_COLUMNS}"
                    ),
                    {"id": token_id, "now": now},
                )
            ).first()
            if row is None:
                return None
            if audit is not None:
                await record(conn, audit)
            return _token(row)

        found: ApiToken | None = await self._run(work)
        if found is None:
            raise RecordMissing(f"no token {token_id}")
        return found

    async def rotate(
        self,
        token_id: str,
        *,
        new_token_id: str,
        new_secret_hash: str,
        now: datetime,
        grace: timedelta,
        audit: AuditRow | None = None,
    ) -> tuple[ApiToken, ApiToken]:
        """(old, new): a new token with the old one's name, roles and tenants
        and the same lifetime; the old one stays valid until now + grace (or
        its own earlier expiry). One transaction, the old row locked, so two
        rotations of one token cannot both succeed."""

        async def work(conn: AsyncConnection) -> tuple[ApiToken, ApiToken]:
            row = (
                await conn.execute(
                    text(f"SELECT {_COLUMNS} FROM api_tokens WHERE token_id = :id FOR UPDATE"),
                    {"id": token_id},
                )
            ).first()
            if row is None:
                raise RecordMissing(f"no token {token_id}")
            old = _token(row)
            if old.revoked_at is not None:
                raise RecordChanged(f"token {token_id} is revoked; create a new one")
            if old.replaced_by is not None:
                raise RecordChanged(f"token {token_id} was rotated already, to {old.replaced_by}")
            if old.expires_at is not None and old.expires_at <= now:
                raise RecordChanged(f"token {token_id} has expired; create a new one")
            lifetime = None if old.expires_at is None else old.expires_at - old.created_at
            new = await _insert(
                conn,
                new_token_id,
                old.name,
                old.roles,
                old.tenants,
                new_secret_hash,
                now,
                None if lifetime is None else now + lifetime,
            )
            until = now + grace
            if old.expires_at is not None:
                until = min(until, old.expires_at)
            updated = (
                await conn.execute(
                    text(
                        "UPDATE api_tokens SET expires_at = :until, replaced_by = :new, "
                        "updated_at = clock_timestamp() WHERE token_id = :id "
                        f"RETURNING {_COLUMNS}"
                    ),
                    {"id": token_id, "until": until, "new": new_token_id},
                )
            ).one()
            if audit is not None:
                await record(conn, audit)
            return _token(updated), new

        result: tuple[ApiToken, ApiToken] = await self._run(work)
        return result

    async def snapshot(self) -> tuple[builtins.list[ApiToken], datetime]:
        """Every token, and PostgreSQL's time of the read (the cursor for
        `changed_since`)."""

        async def work(conn: AsyncConnection) -> tuple[builtins.list[ApiToken], datetime]:
            as_of = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
            rows = await conn.execute(
                text(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at, token_id")
            )
            return [_token(r) for r in rows], as_of

        result: tuple[builtins.list[ApiToken], datetime] = await self._run(work, write=False)
        return result

    async def changed_since(self, since: datetime) -> tuple[builtins.list[ApiToken], datetime]:
        """Tokens whose row changed after `since`, and the time of the read. A
        change committed late may carry an earlier updated_at: callers ask
        from a little before their last cursor (Authenticator's overlap)."""

        async def work(conn: AsyncConnection) -> tuple[builtins.list[ApiToken], datetime]:
            as_of = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
            rows = await conn.execute(
                text(f"SELECT {_COLUMNS} FROM api_tokens WHERE updated_at > :since"),
                {"since": since},
            )
            return [_token(r) for r in rows], as_of

        result: tuple[builtins.list[ApiToken], datetime] = await self._run(work, write=False)
        return result


async def _insert(
    conn: AsyncConnection,
    token_id: str,
    name: str,
    roles: Sequence[str],
    tenants: Sequence[str] | None,
    secret_hash: str,
    now: datetime,
    expires_at: datetime | None,
) -> ApiToken:
    row = (
        await conn.execute(
            text(
                "INSERT INTO api_tokens (token_id, name, roles, tenants, secret_hash, "
                "created_at, expires_at, updated_at) VALUES (:id, :name, :roles, :tenants, "
                ":hash, :now, :expires, clock_timestamp()) ON CONFLICT (token_id) DO NOTHING "
                f"RETURNING {_COLUMNS}"
            ),
            {
                "id": token_id,
                "name": name,
                "roles": list(roles),
                "tenants": None if tenants is None else list(tenants),
                "hash": secret_hash,
                "now": now,
                "expires": expires_at,
            },
        )
    ).first()
    if row is None:
        raise RecordExists(f"token {token_id} exists")
    return _token(row)
