"""The admin token of a first start (service/pointsd/service/first_token.py):
made once, kept while it is good, replaced when it is not, audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from pointsd.service.auth import ROLES, parse_token
from pointsd.service.clock import parse_instant
from pointsd.service.config import Settings
from pointsd.service.first_token import NAME, ensure_admin_token, token_file, wanted
from pointsd.storage.postgres.audit import AuditFilter, AuditStore
from pointsd.storage.postgres.db import create_engine
from pointsd.storage.postgres.tokens import TokenStore
from tests.conftest import Servers

NOW_MS = parse_instant("2026-12-07T10:00:00+08:00")  # any fixed instant


@pytest.fixture
async def stores(servers: Servers) -> AsyncIterator[tuple[TokenStore, AuditStore]]:
    engine = create_engine(servers.database_url, pool_size=2, timeout_s=5.0)
    made_before = {t.token_id for t in await TokenStore(engine).list()}
    yield TokenStore(engine), AuditStore(engine)
    async with engine.begin() as conn:  # only the tokens this test made
        await conn.execute(
            text("DELETE FROM api_tokens WHERE name = :n AND NOT token_id = ANY(:keep)"),
            {"n": NAME, "keep": sorted(made_before)},
        )
    await engine.dispose()


def test_only_on_the_embedded_default_with_auth_on() -> None:
    assert wanted(Settings())
    assert not wanted(Settings(auth="off"))
    assert not wanted(Settings(database_url="postgresql://points@db/points"))


async def test_made_once_kept_then_replaced_when_revoked_or_spoiled(
    tmp_path: Path, stores: tuple[TokenStore, AuditStore]
) -> None:
    tokens, trail = stores
    by_first_start = AuditFilter(caller="pointsd serve", rpc="CreateToken")
    before, _ = await trail.page(by_first_start, 500, None)
    settings = Settings(data_dir=tmp_path / "data")
    path = token_file(settings)
    first = await ensure_admin_token(settings, tokens, trail, NOW_MS)
    assert first is not None and path.read_text() == f"{first}\n"
    assert path.stat().st_mode & 0o777 == 0o600
    token_id, _ = parse_token(first)
    row = await tokens.get(token_id)
    assert (row.name, set(row.roles), row.tenants) == (NAME, set(ROLES), None)
    assert first not in row.secret_hash  # stored hashed
    # The next start finds it good: nothing new, nothing printed.
    assert await ensure_admin_token(settings, tokens, trail, NOW_MS) is None
    # Revoked (someone ran `pointsd tokens revoke`): the next start replaces it.
    await tokens.revoke(token_id, datetime.fromtimestamp(NOW_MS / 1000, UTC))
    second = await ensure_admin_token(settings, tokens, trail, NOW_MS)
    assert second is not None and second != first and path.read_text() == f"{second}\n"
    # A file that does not hold a token of this database: replaced too.
    for spoiled in ("", "not a token", "pt_" + "0" * 16 + "_" + "A" * 43, second[:-1] + "x"):
        path.write_text(spoiled)
        made = await ensure_admin_token(settings, tokens, trail, NOW_MS)
        assert made is not None and path.read_text() == f"{made}\n"
    # Each creation is in the audit trail, the secret is not.
    rows, _ = await trail.page(by_first_start, 500, None)
    seen = {r.audit_id for r in before}
    ours = [r for r in rows if r.audit_id not in seen]
    assert len(ours) == 6 and {r.outcome for r in ours} == {"OK"}
    assert all(first not in r.request_json and second not in r.request_json for r in ours)
