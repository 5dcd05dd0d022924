"""API tokens, roles and tenant scopes (issue 12, the building blocks in
service/pointsd/service/auth.py and storage/pointsd/storage/postgres/tokens.py):
the token format, hashing, the store against the real PostgreSQL, the
Authenticator's cache and refresh (a second "process" sees a revoke within
5 s, the last snapshot holds while PostgreSQL is gone), `tenants_of` and
`authorize`. The server does not enforce tokens yet."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine as sync_engine
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pointsd.service import auth
from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.auth import (
    ROLE_OF,
    SCOPED_BY_HANDLER,
    Authenticator,
    Caller,
    authorize,
    check_grant,
    hash_secret,
    issue_token,
    new_token,
    parse_token,
    rotate_token,
    tenants_of,
    verify_secret,
)
from pointsd.service.clock import parse_instant
from pointsd.service.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    status_of,
)
from pointsd.storage.errors import RecordChanged, RecordMissing, StorageUnavailable
from pointsd.storage.postgres.db import create_engine, sqlalchemy_url
from pointsd.storage.postgres.tokens import TokenStore
from tests.clock import TestClock
from tests.conftest import Servers
from tests.proxy import TcpProxy

NOW = "2026-12-07T10:00:00+08:00"


@pytest.fixture(autouse=True)
def at_now(clock: TestClock) -> TestClock:
    clock.set(parse_instant(NOW))
    return clock


def now_of(clock: TestClock) -> datetime:
    return datetime.fromtimestamp(clock() / 1000, UTC)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def names(servers: Servers) -> Iterator[Callable[[], str]]:
    """Unique token names for this test; its rows are deleted afterwards."""
    made: list[str] = []

    def name() -> str:
        made.append(f"test-{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield name
    engine = sync_engine(sqlalchemy_url(servers.database_url))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM api_tokens WHERE name = ANY(:n)"), {"n": made})
    engine.dispose()


async def _engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url, pool_size=2, timeout_s=2.0)
    yield engine
    await engine.dispose()


@pytest.fixture
async def store(servers: Servers) -> AsyncIterator[TokenStore]:
    async for engine in _engine(servers.database_url):
        yield TokenStore(engine)


# -- format and hashing --------------------------------------------------------


def test_a_new_token_parses_back_to_its_id_and_secret() -> None:
    token, token_id, secret = new_token()
    assert token == f"pt_{token_id}_{secret}"
    assert len(token) == auth.TOKEN_CHARS
    assert parse_token(token) == (token_id, secret)
    assert new_token()[0] != token


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pt_",
        "xx_0123456789abcdef_" + "A" * 43,  # wrong prefix
        "pt_0123456789ABCDEF_" + "A" * 43,  # id not lower-case hex
        "pt_0123456789abcdef-" + "A" * 43,  # no separator
        "pt_0123456789abcdef_" + "A" * 42 + "!",  # not base64url
        "pt_0123456789abcdef_" + "A" * 44,  # too long by one
        "pt_0123456789abcdef_" + "é" * 43,
        "pt_" + "a" * 1_000_000,  # huge
    ],
)
def test_malformed_tokens_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        parse_token(text)
    message = str(caught.value)
    assert message.startswith("malformed token")
    assert len(message) < 200
    if len(text) > 10:
        assert text[3:] not in message and "AAAA" not in message


def test_huge_input_is_refused_by_its_length_before_any_pattern_runs() -> None:
    # The length check comes first (its message says so), so no regex ever
    # scans a huge header; the message stays bounded.
    with pytest.raises(Unauthenticated, match=r"characters .* got 10000\+$"):
        parse_token("x" * 10_000_000)


def test_hashing_is_salted_and_verifies_only_the_secret() -> None:
    _, _, secret = new_token()
    one, two = hash_secret(secret), hash_secret(secret)
    assert one != two  # a fresh salt each time
    assert one.startswith("scrypt$16384$8$1$")
    assert secret not in one
    assert verify_secret(secret, one) and verify_secret(secret, two)
    assert not verify_secret(secret[:-1] + ("A" if secret[-1] != "A" else "B"), one)
    assert not verify_secret(secret, "plain$" + secret)
    assert not verify_secret(secret, "scrypt$x$8$1$AA$AA")
    assert not verify_secret(secret, "")


# -- callers, roles, scopes ---------------------------------------------------------


def test_role_of_covers_every_rpc_of_the_proto() -> None:
    methods = {
        f"/{service.full_name}/{method.name}"
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods == set(ROLE_OF)
    assert set(ROLE_OF.values()) == set(auth.ROLES)
    points = "/points.v1.PointsService/"
    assert ROLE_OF[f"{points}StreamActivities"] == "ingest"
    assert ROLE_OF[f"{points}Redeem"] == "redeem"
    assert ROLE_OF[f"{points}ListRedemptions"] == "read"
    assert ROLE_OF["/points.v1.AdminService/ListRedemptions"] == "admin"
    assert ROLE_OF["/points.v1.AdminService/AdjustPoints"] == "admin"


def test_caller_may_only_its_roles_within_its_tenants() -> None:
    scoped = Caller("im-a", frozenset({"ingest", "read"}), frozenset({"a", "b"}))
    assert scoped.may("ingest", "a") and scoped.may("read", "b")
    assert not scoped.may("ingest", "c")
    assert not scoped.may("admin", "a")
    everywhere = Caller("ops", frozenset({"admin"}), None)
    assert everywhere.may("admin", "any-tenant")
    assert not everywhere.may("read", "any-tenant")  # admin does not imply read


def test_authorize_names_the_missing_role_or_the_foreign_tenant() -> None:
    caller = Caller("im-a", frozenset({"ingest"}), frozenset({"a"}))
    record = "/points.v1.PointsService/RecordActivities"
    authorize(caller, record, {"a"})
    authorize(caller, record, set())
    with pytest.raises(PermissionDenied, match="lacks role 'read', needed by GetBalance"):
        authorize(caller, "/points.v1.PointsService/GetBalance", {"a"})
    with pytest.raises(PermissionDenied, match="may not act on tenant 'b'"):
        authorize(caller, record, {"a", "b"})
    with pytest.raises(PermissionDenied, match="lacks role 'admin'"):
        authorize(caller, "/points.v1.AdminService/AdjustPoints", {"a"})
    with pytest.raises(PermissionDenied, match="no role grants"):
        authorize(caller, "/points.v1.PointsService/Nope", {"a"})
    with pytest.raises(PermissionDenied) as caught:
        authorize(caller, record, {"x" * 20_000})
    assert len(str(caught.value)) < 200
    assert status_of(caught.value) is not None
    assert status_of(caught.value)[0].name == "PERMISSION_DENIED"  # type: ignore[index]
    assert status_of(Unauthenticated("x"))[0].name == "UNAUTHENTICATED"  # type: ignore[index]


def test_tenants_of_every_request_type() -> None:
    """Every request message of the proto: the tenants it names, found by
    setting every tenant_id it has (top level, item, events)."""
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            cls = getattr(pb, method.input_type.name)
            request = cls()
            fields = method.input_type.fields_by_name
            expected: set[str] = set()
            if "tenant_id" in fields:
                request.tenant_id = "top"
                expected.add("top")
            if "item" in fields:
                request.item.tenant_id = "in-item"
                expected.add("in-item")
            if "events" in fields:
                request.events.add(tenant_id="e1")
                request.events.add(tenant_id="e2")
                request.events.add(tenant_id="e1")
                expected |= {"e1", "e2"}
            if f"/{service.full_name}/{method.name}" in SCOPED_BY_HANDLER:
                assert not expected, method.full_name
                continue
            assert expected, f"{method.full_name} names no tenant"
            assert tenants_of(request) == expected, method.full_name
            assert tenants_of(cls()) == frozenset()  # empty ids: left to validation


def test_a_foreign_tenant_deep_in_a_thousand_event_batch_is_found() -> None:
    # What authorization costs per batch is measured by the bench
    # (`scripts/bench --only auth`), not here.
    batch = pb.RecordActivitiesRequest()
    for i in range(1000):
        batch.events.add(tenant_id="a" if i != 700 else "foreign", event_id=f"e{i}")
    found = tenants_of(batch)
    assert found == {"a", "foreign"}
    caller = Caller("im-a", frozenset({"ingest"}), frozenset({"a"}))
    with pytest.raises(PermissionDenied, match="'foreign'"):
        authorize(caller, "/points.v1.PointsService/RecordActivities", found)


@pytest.mark.parametrize(
    ("name", "roles", "tenants", "fix"),
    [
        ("", ["read"], None, "token name"),
        ("x" * 65, ["read"], None, "token name"),
        ("ok", [], None, "at least one role"),
        ("ok", ["read", "root"], None, "unknown role 'root'"),
        ("ok", ["read"], [], "at least one tenant"),
        ("ok", ["read"], ["a{b}"], "tenant id"),
    ],
)
def test_bad_grants_say_what_to_fix(
    name: str, roles: list[str], tenants: list[str] | None, fix: str
) -> None:
    with pytest.raises(InvalidArgument, match=fix):
        check_grant(name, roles, tenants)


# -- the store, real PostgreSQL ----------------------------------------------------


async def test_create_get_list_and_revoke(
    store: TokenStore, names: Callable[[], str], clock: TestClock, sql: Callable[..., list[Any]]
) -> None:
    now = now_of(clock)
    name = names()
    token, row = await issue_token(
        store, name=name, roles=["ingest", "read"], tenants=["a", "b"], now=now
    )
    token_id, secret = parse_token(token)
    assert row.token_id == token_id and row.name == name
    assert row.roles == ("ingest", "read") and row.tenants == ("a", "b")
    assert row.created_at == now and row.expires_at is None and row.revoked_at is None
    assert await store.get(token_id) == row
    assert row in await store.list()
    stored = sql("SELECT secret_hash FROM api_tokens WHERE token_id = :id", id=token_id)
    assert secret not in stored[0][0] and verify_secret(secret, stored[0][0])

    _, everywhere = await issue_token(store, name=names(), roles=["admin"], tenants=None, now=now)
    assert everywhere.tenants is None

    revoked = await store.revoke(token_id, now + timedelta(minutes=1))
    assert revoked.revoked_at == now + timedelta(minutes=1)
    assert revoked.updated_at > row.updated_at
    again = await store.revoke(token_id, now + timedelta(minutes=5))
    assert again.revoked_at == revoked.revoked_at  # the first revocation stands
    with pytest.raises(RecordMissing, match="no token 0000"):
        await store.revoke("0000000000000000", now)
    with pytest.raises(RecordMissing):
        await store.get("0000000000000000")


async def test_the_table_refuses_bad_roles_and_plain_secrets(
    store: TokenStore, names: Callable[[], str], clock: TestClock
) -> None:
    from pointsd.storage.errors import LedgerDataError

    now = now_of(clock)
    base: dict[str, Any] = {"name": names(), "tenants": None, "now": now, "expires_at": None}
    with pytest.raises(LedgerDataError):
        await store.create(token_id="a" * 16, roles=["root"], secret_hash="scrypt$x", **base)
    with pytest.raises(LedgerDataError):
        await store.create(token_id="b" * 16, roles=[], secret_hash="scrypt$x", **base)
    with pytest.raises(LedgerDataError):
        await store.create(token_id="c" * 16, roles=["read"], secret_hash="plain", **base)


async def test_rotation_keeps_the_caller_and_gives_the_old_token_a_grace(
    store: TokenStore, names: Callable[[], str], clock: TestClock
) -> None:
    now = now_of(clock)
    _, old = await issue_token(
        store,
        name=names(),
        roles=["read"],
        tenants=["a"],
        now=now,
        expires_at=now + timedelta(days=30),
    )
    later = now + timedelta(days=1)
    token, before, new = await rotate_token(
        store, old.token_id, now=later, grace=timedelta(hours=1)
    )
    assert parse_token(token)[0] == new.token_id
    assert (new.name, new.roles, new.tenants) == (old.name, old.roles, old.tenants)
    assert new.expires_at == later + timedelta(days=30)  # the same lifetime
    assert before.expires_at == later + timedelta(hours=1)
    assert before.replaced_by == new.token_id
    with pytest.raises(RecordChanged, match="rotated already"):
        await rotate_token(store, old.token_id, now=later, grace=timedelta(hours=1))
    with pytest.raises(RecordMissing):
        await rotate_token(store, "0" * 16, now=later, grace=timedelta(hours=1))
    with pytest.raises(InvalidArgument, match="negative"):
        await rotate_token(store, new.token_id, now=later, grace=timedelta(seconds=-1))
    await store.revoke(new.token_id, later)
    with pytest.raises(RecordChanged, match="revoked"):
        await rotate_token(store, new.token_id, now=later, grace=timedelta(hours=1))


async def test_rotation_grace_old_and_new_valid_together_then_old_refused(
    store: TokenStore, names: Callable[[], str], clock: TestClock
) -> None:
    old_token, _ = await issue_token(
        store, name=names(), roles=["ingest"], tenants=None, now=now_of(clock)
    )
    old_id = parse_token(old_token)[0]
    new_token_, _, _ = await rotate_token(
        store, old_id, now=now_of(clock), grace=timedelta(hours=1)
    )
    authenticator = Authenticator(store, clock)
    await authenticator.refresh()
    assert authenticator.authenticate(bearer(old_token)).roles == {"ingest"}
    assert authenticator.authenticate(bearer(new_token_)).roles == {"ingest"}
    clock.set(clock() + 3_600_000)  # the grace is over
    with pytest.raises(Unauthenticated, match=f"token {old_id} expired at"):
        authenticator.authenticate(bearer(old_token))
    assert authenticator.authenticate(bearer(new_token_)).roles == {"ingest"}


# -- the authenticator --------------------------------------------------------------


async def test_authenticate_says_what_is_missing_without_the_secret(
    store: TokenStore, names: Callable[[], str], clock: TestClock
) -> None:
    token, row = await issue_token(
        store, name=names(), roles=["read"], tenants=["a"], now=now_of(clock)
    )
    authenticator = Authenticator(store, clock)
    await authenticator.refresh()
    caller = authenticator.authenticate([("x-other", "1"), *bearer(token)])
    assert caller == Caller(
        row.name, frozenset({"read"}), frozenset({"a"}), f"token {row.token_id}"
    )
    assert authenticator.authenticate([("authorization", f"bearer {token}".encode())]) == caller

    _, token_id, secret = new_token()
    wrong = f"pt_{row.token_id}_{secret}"
    cases: list[tuple[Any, str]] = [
        (None, "missing 'authorization: Bearer <token>'"),
        ([("x-other", "1")], "missing 'authorization"),
        ([("authorization", token)], "must be 'Bearer <token>'"),
        ([("authorization", "Basic " + token)], "must be 'Bearer <token>'"),
        ([("authorization", "Bearer " + "x" * 100_000)], "must be 'Bearer <token>'"),
        (bearer("pt_short"), "malformed token"),
        (bearer(f"pt_{token_id}_{secret}"), f"unknown token {token_id}"),
        (bearer(wrong), f"wrong secret for token {row.token_id}"),
    ]
    for metadata, expected in cases:
        with pytest.raises(Unauthenticated, match=expected.replace("(", r"\(")) as caught:
            authenticator.authenticate(metadata)
        assert secret not in str(caught.value) and len(str(caught.value)) < 200
        assert parse_token(token)[1] not in str(caught.value)  # its secret (may hold "_")

    await store.revoke(row.token_id, now_of(clock))
    await authenticator.refresh()
    with pytest.raises(Unauthenticated, match=f"token {row.token_id} was revoked"):
        authenticator.authenticate(bearer(token))


async def test_no_scrypt_per_call(
    store: TokenStore, names: Callable[[], str], clock: TestClock
) -> None:
    token, _ = await issue_token(
        store, name=names(), roles=["ingest"], tenants=None, now=now_of(clock)
    )
    other, _ = await issue_token(
        store, name=names(), roles=["ingest"], tenants=None, now=now_of(clock)
    )
    authenticator = Authenticator(store, clock)
    await authenticator.refresh()
    for _ in range(200):
        authenticator.authenticate(bearer(token))
        authenticator.authenticate(bearer(other))
    assert authenticator.verifications == 2
    await authenticator.refresh()  # a refresh keeps the verified tokens
    authenticator.authenticate(bearer(token))
    assert authenticator.verifications == 2


async def test_a_revoke_is_seen_by_another_process_within_5_s(
    servers: Servers, store: TokenStore, names: Callable[[], str], clock: TestClock
) -> None:
    token, row = await issue_token(
        store, name=names(), roles=["ingest"], tenants=None, now=now_of(clock)
    )
    async for engine in _engine(servers.database_url):
        # Another process: its own engine and cache, refreshing in the background.
        other = Authenticator(TokenStore(engine), clock, refresh_s=0.2, full_every=1_000)
        await other.start()
        try:
            assert other.authenticate(bearer(token)).name == row.name
            await store.revoke(row.token_id, now_of(clock))
            started = time.monotonic()
            while True:
                try:
                    other.authenticate(bearer(token))
                except Unauthenticated as exc:
                    assert "revoked" in str(exc)
                    break
                assert time.monotonic() - started < 5.0, "revoke not seen within 5 s"
                await asyncio.sleep(0.05)
            # A token created after start is seen too (changed_since, not a full load).
            fresh, _ = await issue_token(
                store, name=names(), roles=["read"], tenants=None, now=now_of(clock)
            )
            started = time.monotonic()
            while True:
                try:
                    assert other.authenticate(bearer(fresh)).roles == {"read"}
                    break
                except Unauthenticated:
                    assert time.monotonic() - started < 5.0, "new token not seen within 5 s"
                    await asyncio.sleep(0.05)
        finally:
            await other.close()


async def test_the_snapshot_holds_while_postgres_is_unreachable(
    servers: Servers, store: TokenStore, names: Callable[[], str], clock: TestClock
) -> None:
    token, row = await issue_token(
        store, name=names(), roles=["ingest"], tenants=["a"], now=now_of(clock)
    )
    url = make_url(servers.database_url)
    if not url.host or url.host.startswith("/"):
        pytest.skip("PostgreSQL is reached over a unix socket here")
    proxy = TcpProxy(url.host, url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    async for engine in _engine(proxied):
        authenticator = Authenticator(TokenStore(engine), clock, refresh_s=0.1)
        await authenticator.start()
        try:
            assert authenticator.loaded
            await proxy.cut()
            failures = authenticator.refresh_failures
            with pytest.raises(StorageUnavailable):
                await authenticator.refresh()
            started = time.monotonic()
            while authenticator.refresh_failures < failures + 3:  # the background loop too
                assert time.monotonic() - started < 30
                await asyncio.sleep(0.05)
            assert authenticator.authenticate(bearer(token)).name == row.name
        finally:
            await authenticator.close()
            await proxy.cut()


async def test_never_loaded_means_unavailable_not_unauthenticated(clock: TestClock) -> None:
    async for engine in _engine("postgresql://postgres@127.0.0.1:1/none"):
        authenticator = Authenticator(TokenStore(engine), clock, refresh_s=0.1)
        await authenticator.start()
        try:
            token, _, _ = new_token()
            with pytest.raises(StorageUnavailable, match="tokens not loaded"):
                authenticator.authenticate(bearer(token))
            with pytest.raises(Unauthenticated, match="missing"):
                authenticator.authenticate([])
        finally:
            await authenticator.close()


def test_migration_0008_adds_the_token_table_as_the_model_says(servers: Servers) -> None:
    """In a scratch database: 0007 -> 0008 adds `api_tokens` (nothing else
    changes), autogenerate finds no difference between it and the model,
    and the downgrade drops it."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from pointsd.storage.postgres import migrate
    from pointsd.storage.postgres.models import metadata

    name = f"pointsd_mig_{uuid.uuid4().hex[:8]}"
    admin = sync_engine(sqlalchemy_url(servers.database_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(sqlalchemy_url(servers.database_url)).set(database=name)
    scratch = url.render_as_string(hide_password=False).replace("+psycopg", "")
    engine = sync_engine(url)
    tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    try:
        migrate.upgrade(scratch, "0007")
        with engine.connect() as conn:
            before = {r[0] for r in conn.execute(text(tables))}
        migrate.upgrade(scratch, "0008")
        with engine.connect() as conn:
            after = {r[0] for r in conn.execute(text(tables))}
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert after - before == {"api_tokens"} and before <= after
        assert [d for d in diff if "api_tokens" in str(d)] == []
        migrate.downgrade(scratch, "0007")
        with engine.connect() as conn:
            assert {r[0] for r in conn.execute(text(tables))} == before
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


async def test_wrong_secrets_cost_one_scrypt_each_and_at_most_a_few_a_second(
    store: TokenStore, names: Callable[[], str], clock: TestClock
) -> None:
    """scrypt runs on the event loop: a repeated wrong secret is not checked
    again, and past WRONG_SECRETS_PER_S new wrong ones a second the rest
    are refused unchecked (a valid token verified before still passes)."""
    from pointsd.service.auth import WRONG_SECRETS_PER_S

    token, row = await issue_token(store, name=names(), roles=["read"], tenants=None,
                                   now=now_of(clock))  # fmt: skip
    authenticator = Authenticator(store, clock)
    await authenticator.refresh()
    authenticator.authenticate(bearer(token))
    assert authenticator.verifications == 1
    wrongs = [f"pt_{row.token_id}_{new_token()[2]}" for _ in range(WRONG_SECRETS_PER_S + 3)]
    for _ in range(3):
        with pytest.raises(Unauthenticated, match="wrong secret"):
            authenticator.authenticate(bearer(wrongs[0]))
    assert authenticator.verifications == 2
    for wrong in wrongs[1:WRONG_SECRETS_PER_S]:
        with pytest.raises(Unauthenticated, match="wrong secret"):
            authenticator.authenticate(bearer(wrong))
    assert authenticator.verifications == 1 + WRONG_SECRETS_PER_S
    with pytest.raises(Unauthenticated, match="too many wrong token secrets"):
        authenticator.authenticate(bearer(wrongs[-1]))
    assert authenticator.verifications == 1 + WRONG_SECRETS_PER_S
    assert authenticator.authenticate(bearer(token)).name == row.name


async def test_the_refresh_loop_outlives_any_error(
    store: TokenStore, clock: TestClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh that fails with anything (a renamed table, a bug) is
    logged and retried: the loop never ends, or revokes would go unseen."""
    from pointsd.storage.errors import StorageError

    authenticator = Authenticator(store, clock, refresh_s=0.01)
    calls = 0
    real = store.snapshot

    async def failing() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageError('relation "api_tokens" does not exist', "postgresql")
        if calls == 2:
            raise RuntimeError("a bug")
        return await real()

    monkeypatch.setattr(store, "snapshot", failing)
    authenticator.full_every = 1
    await authenticator.start()
    try:
        for _ in range(200):
            if calls >= 3 and authenticator.loaded:
                break
            await asyncio.sleep(0.01)
        assert calls >= 3 and authenticator.loaded
        assert authenticator.refresh_failures >= 2
    finally:
        await authenticator.close()


async def test_a_method_without_the_gate_cannot_be_served() -> None:
    """add_service refuses a handler not wrapped by @unary/@stream: it would
    run without authentication. Every real servicer passes (the servers of
    the other tests start)."""
    from pointsd.service.rpc import add_service

    class Bare:
        def __getattr__(self, name: str) -> Any:
            async def handler(request: Any, context: Any) -> None:
                return None

            return handler

    server = grpc.aio.server()
    with pytest.raises(RuntimeError, match=r"points\.v1\.PointsService\.\w+ is not wrapped"):
        add_service(server, pb.DESCRIPTOR.services_by_name["PointsService"], Bare())
