"""The admin token of a first start on the embedded default.

`pointsd serve` without DATABASE_URL runs its own PostgreSQL in
POINTS_DATA_DIR; with auth on, nobody could call it until someone ran
`pointsd tokens create`. So the first start makes an admin token of every
role and tenant, prints it once and writes it to `<data_dir>/admin.token`
(mode 0600), and every later start checks that the file still names an
active token of this database (a revoked or expired one is replaced, and
the new one printed). The token is made like `pointsd tokens create`:
hashed in PostgreSQL, its creation in the audit trail (caller
"pointsd serve"). A deployment with its own DATABASE_URL makes its tokens
with the CLI or AdminService; nothing is written then.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from pointsd.service import audit
from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api_tokens import TokenCommands, state_of
from pointsd.service.auth import CALLER, ROLES, Caller, parse_token, verify_secret
from pointsd.service.config import Settings
from pointsd.service.errors import Unauthenticated
from pointsd.storage.errors import RecordMissing
from pointsd.storage.postgres.audit import AuditStore
from pointsd.storage.postgres.db import create_engine
from pointsd.storage.postgres.tokens import TokenStore

__all__ = [
    "FILE_NAME",
    "NAME",
    "announce",
    "ensure_admin_token",
    "first_start",
    "token_file",
    "wanted",
]

FILE_NAME = "admin.token"
NAME = "first-start-admin"
_READ_BYTES_MAX = 4096


def token_file(settings: Settings) -> Path:
    return Path(settings.data_dir) / FILE_NAME


async def _still_good(store: TokenStore, token: str, now: datetime) -> bool:
    try:
        token_id, secret = parse_token(token)
        row = await store.get(token_id)
    except (Unauthenticated, RecordMissing):
        return False
    if state_of(row, now) != "active":
        return False
    return await asyncio.to_thread(verify_secret, secret, row.secret_hash)  # ~50 ms of scrypt


def _write(path: Path, token: str) -> None:
    """Atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{token}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(partial, 0o600)  # whatever the umask made of it
    os.replace(partial, path)


async def ensure_admin_token(
    settings: Settings, store: TokenStore, trail: AuditStore, now_ms: int
) -> str | None:
    """The new token when one was made (and written), else None. Only for
    the embedded default with auth on; the caller checks that."""
    path = token_file(settings)
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        with path.open("rb") as fh:
            held = fh.read(_READ_BYTES_MAX).decode().strip()
        if await _still_good(store, held, now):
            return None
    request = pb.CreateTokenRequest(name=NAME, roles=list(ROLES), all_tenants=True)
    reset = CALLER.set(Caller("pointsd serve", frozenset(ROLES), None, "first start"))
    try:
        async with audit.calling(trail, now_ms, "CreateToken", request):
            token, _ = await TokenCommands(store).create(
                name=NAME, roles=list(ROLES), tenants=None, expires_at=None, now=now
            )
    finally:
        CALLER.reset(reset)
    _write(path, token)
    return token


def announce(token: str, path: Path) -> None:
    """Once, on stdout (not the log): the one time the token is shown."""
    print(
        f"pointsd: made an admin token (every role, every tenant); it is shown only now and "
        f"kept in {path} (mode 0600):\n{token}\n"
        f'  e.g. grpcurl -plaintext -H "authorization: Bearer $(cat {path})" ...',
        file=sys.stdout,
        flush=True,
    )


def wanted(settings: Settings) -> bool:
    """Auth on, on the embedded PostgreSQL (DATABASE_URL unset)."""
    return settings.auth == "on" and not settings.database_url


async def first_start(settings: Settings, database_url: str, now_ms: int) -> None:
    """`ensure_admin_token` on a connection of its own (the supervisor of
    POINTS_WORKERS > 1 has no App), and `announce` a new token."""
    engine = create_engine(database_url, pool_size=1, timeout_s=settings.db_timeout_s)
    try:
        made = await ensure_admin_token(settings, TokenStore(engine), AuditStore(engine), now_ms)
    finally:
        await engine.dispose()
    if made is not None:
        announce(made, token_file(settings))
