"""The audit trail and the token admin RPCs (issue 12), on real Redis and
PostgreSQL through a real gRPC server: one row per admin action with who,
when, which RPC, the tenant, the request without secrets and the outcome;
refusals recorded with their code; AdjustPoints' row written before its
Redis change (STARTED) and settled after; ListAudit's filters, scope and
pages; rows that cannot be changed; the CLI's token changes audited; and
CreateToken, ListTokens, RotateToken, RevokeToken with their scope rules."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import create_engine as sync_engine
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from pointsd.service import audit
from pointsd.service.admin import AdminServicer
from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.auth import CALLER, ROLES, Caller, parse_token
from pointsd.service.clock import parse_instant
from pointsd.storage.postgres import sqlalchemy_url
from pointsd.storage.postgres.audit import AuditStore
from pointsd.storage.postgres.db import create_engine
from scripts.procs import run_cli
from scripts.tokens import aio_channel
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory, Servers, new_tenant, wait_for
from tests.helpers import child_env, rules_file
from tests.proxy import TcpProxy

Sql = Callable[..., list[Any]]
NOW = "2026-12-07T10:00:00+08:00"
# AdminService methods that only read: not audited.
READS = {"ListItems", "ListRedemptions", "ListTokens", "ListAudit", "ListFlags"}


def admin(channel: grpc.aio.Channel) -> pb_grpc.AdminServiceStub:
    return pb_grpc.AdminServiceStub(channel)


def who(api: Api) -> tuple[str, str]:
    """The caller and credential the suite's channel calls as: its token
    with authentication on, else the auth-off caller."""
    if api.app.gate.enabled:
        return "tests", f"token {parse_token(api.token)[0]}"
    return "anonymous", "auth off"


def since_now(at: datetime) -> int:
    """Milliseconds from NOW to `at`."""
    return int(at.timestamp() * 1000) - parse_instant(NOW)


def rows_of(sql: Sql, tenant: str) -> list[Any]:
    return sql(
        "SELECT rpc, caller, credential, tenant_id, request, outcome, message, occurred_at "
        "FROM audit_log WHERE tenant_id = :t ORDER BY audit_id",
        t=tenant,
    )


async def failure(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def item(tenant: str, item_id: str = "mug", **extra: Any) -> pb.Item:
    return pb.Item(
        tenant_id=tenant, item_id=item_id, name="Mug", kind=pb.PHYSICAL, cost=10, enabled=True,
        **extra,
    )  # fmt: skip


@pytest.fixture
async def channels(api: Api) -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:
    """Channels that call with a given token; closed after the test."""
    opened: list[grpc.aio.Channel] = []

    def open_with(token: str) -> grpc.aio.Channel:
        opened.append(aio_channel(api.target, token))
        return opened[-1]

    yield open_with
    for c in opened:
        await c.close()


async def usable(channel: grpc.aio.Channel) -> None:
    """Wait until the server's token snapshot knows the channel's token."""

    async def known() -> bool:
        try:
            await admin(channel).ListTokens(pb.ListTokensRequest())
            return True
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
            return False

    await wait_for(known, timeout_s=15)


# -- a row for every admin action ---------------------------------------------------


def test_every_acting_admin_rpc_is_audited_and_the_reads_are_not() -> None:
    """Every implemented AdminService method is a read or `@audit.audited`:
    a new acting RPC without an audit row fails here."""
    base = pb_grpc.AdminServiceServicer
    for m in pb.DESCRIPTOR.services_by_name["AdminService"].methods:
        handler = getattr(AdminServicer, m.name)
        if handler is getattr(base, m.name):
            continue  # not implemented yet: UNIMPLEMENTED, no effect
        assert getattr(handler, "__audited__", False) == (m.name not in READS), m.name


async def test_every_admin_action_writes_one_row_with_who_what_and_the_outcome(
    api: Api, sql: Sql, clock: TestClock
) -> None:
    clock.set(parse_instant(NOW))
    stub, t = admin(api.channel), api.tenant
    caller, credential = who(api)
    await stub.CreateItem(pb.CreateItemRequest(item=item(t)))
    await stub.UpdateItem(pb.UpdateItemRequest(item=item(t, description="blue")))
    await stub.AdjustPoints(pb.AdjustPointsRequest(
        tenant_id=t, user_id="ann", points=50, reason="welcome", idempotency_key="k1",
    ))  # fmt: skip
    done = await api.stub.Redeem(
        pb.RedeemRequest(tenant_id=t, user_id="ann", item_id="mug", request_id="r1")
    )
    await stub.RefundRedemption(
        pb.RefundRedemptionRequest(tenant_id=t, redemption_id=done.redemption_id, reason="late")
    )
    await stub.DisableItem(pb.DisableItemRequest(tenant_id=t, item_id="mug"))
    made = await stub.CreateToken(
        pb.CreateTokenRequest(name="gateway", roles=["ingest"], tenants=[t])
    )
    rotated = await stub.RotateToken(pb.RotateTokenRequest(token_id=made.info.token_id, grace_s=60))
    await stub.RevokeToken(pb.RevokeTokenRequest(token_id=rotated.new.token_id))

    rows = rows_of(sql, t)
    assert [r.rpc for r in rows] == [
        "CreateItem", "UpdateItem", "AdjustPoints", "RefundRedemption", "DisableItem",
        "CreateToken", "RotateToken", "RevokeToken",
    ]  # fmt: skip
    assert {(r.caller, r.credential, r.tenant_id, r.outcome, r.message) for r in rows} == {
        (caller, credential, t, "OK", "")
    }
    # When each call began, on the service clock (pinned at NOW, running).
    assert all(0 <= since_now(r.occurred_at) < 60_000 for r in rows)
    requests = {r.rpc: r.request for r in rows}
    assert requests["CreateItem"]["item"]["item_id"] == "mug"
    assert requests["UpdateItem"]["item"]["description"] == "blue"
    assert requests["AdjustPoints"] == {
        "tenant_id": t, "user_id": "ann", "points": "50", "reason": "welcome",
        "idempotency_key": "k1",
    }  # fmt: skip
    assert requests["RefundRedemption"]["redemption_id"] == done.redemption_id
    assert requests["CreateToken"] == {"name": "gateway", "roles": ["ingest"], "tenants": [t]}
    assert requests["RotateToken"] == {"token_id": made.info.token_id, "grace_s": "60"}
    # No secret anywhere in the trail: neither token's, in any column.
    for token in (made.token, rotated.token):
        secret = parse_token(token)[1]
        assert sql("SELECT COUNT(*) FROM audit_log WHERE audit_log::text LIKE :s",
                   s=f"%{secret}%")[0][0] == 0  # fmt: skip


async def test_a_refused_call_leaves_one_row_with_its_code_and_nothing_else(
    api: Api, sql: Sql
) -> None:
    stub, t = admin(api.channel), api.tenant
    await stub.CreateItem(pb.CreateItemRequest(item=item(t)))
    code, _ = await failure(stub.CreateItem(pb.CreateItemRequest(item=item(t))))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, _ = await failure(stub.DisableItem(pb.DisableItemRequest(tenant_id=t, item_id="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await failure(stub.AdjustPoints(pb.AdjustPointsRequest(
        tenant_id=t, user_id="ann", points=0, reason="x", idempotency_key="k",
    )))  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await failure(stub.AdjustPoints(pb.AdjustPointsRequest(
        tenant_id=t, user_id="ann", points=-5, reason="fine", idempotency_key="k2",
    )))  # fmt: skip
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _ = await failure(
        stub.RefundRedemption(pb.RefundRedemptionRequest(tenant_id=t, redemption_id="nope"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    rows = rows_of(sql, t)
    assert [(r.rpc, r.outcome) for r in rows] == [
        ("CreateItem", "OK"),
        ("CreateItem", "ALREADY_EXISTS"),
        ("DisableItem", "NOT_FOUND"),
        ("AdjustPoints", "INVALID_ARGUMENT"),
        ("AdjustPoints", "FAILED_PRECONDITION"),
        ("RefundRedemption", "NOT_FOUND"),
    ]
    assert "'mug' exists already" in rows[1].message
    assert rows[3].message.startswith("points: must be non-zero")
    assert "below zero" in rows[4].message
    assert (
        await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=t, user_id="ann"))
    ).available == 0


async def test_an_adjustment_row_is_started_before_the_change_and_settled_after(
    servers: Servers, clock: TestClock, sql: Sql
) -> None:
    """The saga's steps on the real store: STARTED is in PostgreSQL while the
    effect runs, OK (or the error) after; settling twice changes nothing."""
    engine = create_engine(servers.database_url, pool_size=1)
    store = AuditStore(engine)
    tenant = new_tenant()
    request = pb.AdjustPointsRequest(tenant_id=tenant, user_id="ann", points=5, reason="r")
    token = CALLER.set(Caller("ops", frozenset(ROLES), None, "token 0123456789abcdef"))
    try:
        async with audit.calling(store, clock(), "AdjustPoints", request):
            await audit.started()
            assert [(r.outcome, r.caller) for r in rows_of(sql, tenant)] == [("STARTED", "ops")]
        assert [r.outcome for r in rows_of(sql, tenant)] == ["OK"]
        with pytest.raises(RuntimeError):
            async with audit.calling(store, clock(), "AdjustPoints", request):
                await audit.started()
                raise RuntimeError("the Redis change broke")
        assert [(r.outcome, r.message) for r in rows_of(sql, tenant)] == [
            ("OK", ""), ("INTERNAL", "internal error")
        ]  # fmt: skip
    finally:
        CALLER.reset(token)
        await engine.dispose()


async def test_no_adjustment_without_its_row_when_postgres_is_down(
    make_api: ApiFactory, servers: Servers, tenant: str, sql: Sql
) -> None:
    url = make_url(servers.database_url)
    if not url.host or url.host.startswith("/"):
        pytest.skip("PostgreSQL is reached over a unix socket here")
    proxy = TcpProxy(url.host, url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    api = await make_api([tenant], database_url=proxied, flusher="off")
    stub = admin(api.channel)
    await stub.AdjustPoints(pb.AdjustPointsRequest(
        tenant_id=tenant, user_id="ann", points=7, reason="seed", idempotency_key="k1",
    ))  # fmt: skip
    await proxy.cut()
    code, _ = await failure(stub.AdjustPoints(pb.AdjustPointsRequest(
        tenant_id=tenant, user_id="ann", points=100, reason="more", idempotency_key="k2",
    )))  # fmt: skip
    assert code == grpc.StatusCode.UNAVAILABLE
    balance = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=tenant, user_id="ann"))
    assert balance.available == 7
    assert [(r.rpc, r.outcome, r.request["idempotency_key"]) for r in rows_of(sql, tenant)] == [
        ("AdjustPoints", "OK", "k1")
    ]


# -- the request as recorded ------------------------------------------------------------


def test_the_request_json_has_no_secrets_and_is_bounded() -> None:
    long = pb.CreateTokenRequest(name="n" * 5000, roles=["admin"], tenants=["t" * 300] * 400)
    recorded = audit.request_json(long)
    assert len(recorded.encode()) <= audit.REQUEST_BYTES_MAX
    parsed = json.loads(recorded)
    assert parsed["name"].endswith("…") and len(parsed["tenants"]) < 400
    # The response's token field is a secret wherever it appears.
    response = pb.CreateTokenResponse(token="pt_0123456789abcdef_" + "s" * 43)
    assert json.loads(audit.request_json(response)) == {"token": audit.REDACTED}
    # A timestamp JSON cannot show is recorded as sent, not dropped.
    bad = pb.Item(tenant_id="t", item_id="x")
    bad.starts_at.seconds = 253_402_300_800
    assert json.loads(audit.request_json(pb.CreateItemRequest(item=bad)))["item"]["starts_at"] == {
        "seconds": 253_402_300_800
    }


# -- ListAudit ------------------------------------------------------------------------------


async def test_list_audit_filters_pages_and_refuses_bad_queries(api: Api, clock: TestClock) -> None:
    stub, t = admin(api.channel), api.tenant
    start = parse_instant(NOW)
    for i in range(5):
        clock.set(start + i * 60_000)
        await stub.AdjustPoints(pb.AdjustPointsRequest(
            tenant_id=t, user_id="ann", points=1 + i, reason="r", idempotency_key=f"k{i}",
        ))  # fmt: skip
    clock.set(start + 5 * 60_000)
    await failure(stub.DisableItem(pb.DisableItemRequest(tenant_id=t, item_id="nope")))

    pages, token = [], ""
    while True:
        page = await stub.ListAudit(pb.ListAuditRequest(tenant_id=t, page_size=2, page_token=token))
        pages.append([(r.rpc, r.outcome) for r in page.records])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 2]
    flat = [r for p in pages for r in p]
    assert flat[0] == ("DisableItem", "NOT_FOUND") and flat[1:] == [("AdjustPoints", "OK")] * 5

    adjusts = await stub.ListAudit(pb.ListAuditRequest(tenant_id=t, rpc="AdjustPoints"))
    points = [json.loads(r.request_json)["points"] for r in adjusts.records]
    assert points == ["5", "4", "3", "2", "1"]  # newest first
    since, until = Timestamp(), Timestamp()
    since.FromMilliseconds(start + 60_000)
    until.FromMilliseconds(start + 3 * 60_000)
    window = await stub.ListAudit(pb.ListAuditRequest(tenant_id=t, since=since, until=until))
    assert [json.loads(r.request_json)["points"] for r in window.records] == ["3", "2"]
    caller = who(api)[0]
    mine = await stub.ListAudit(pb.ListAuditRequest(tenant_id=t, caller=caller))
    assert len(mine.records) == 6 and {r.caller for r in mine.records} == {caller}
    assert not (await stub.ListAudit(pb.ListAuditRequest(tenant_id=t, caller="nobody"))).records

    first = await stub.ListAudit(pb.ListAuditRequest(tenant_id=t, page_size=2))
    for bad, field in [
        (pb.ListAuditRequest(rpc="Redeem"), "rpc"),
        (pb.ListAuditRequest(page_size=501), "page_size"),
        (pb.ListAuditRequest(since=until, until=since), "until"),
        (pb.ListAuditRequest(tenant_id=t, rpc="AdjustPoints", page_token=first.next_page_token),
         "page_token"),
        (pb.ListAuditRequest(page_token="bm90IGEgdG9rZW4"), "page_token"),
    ]:  # fmt: skip
        code, message = await failure(stub.ListAudit(bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith(field), message


# -- rows cannot be changed -----------------------------------------------------------------


async def test_audit_rows_cannot_be_changed(api: Api, servers: Servers, sql: Sql) -> None:
    # No RPC but ListAudit touches the trail.
    methods = [m.name for m in pb.DESCRIPTOR.services_by_name["AdminService"].methods]
    assert [m for m in methods if "Audit" in m] == ["ListAudit"]
    t = api.tenant
    await admin(api.channel).CreateItem(pb.CreateItemRequest(item=item(t)))
    engine = sync_engine(sqlalchemy_url(servers.database_url))
    try:
        for statement in (
            "UPDATE audit_log SET outcome = 'INTERNAL' WHERE tenant_id = :t",
            "UPDATE audit_log SET caller = 'someone else' WHERE tenant_id = :t",
            "DELETE FROM audit_log WHERE tenant_id = :t",
        ):
            refused = pytest.raises(DBAPIError, match="audit_log rows cannot be changed")
            with refused, engine.begin() as conn:
                conn.execute(text(statement), {"t": t})
        # A STARTED row takes its outcome once, and nothing else of it changes.
        call = str(uuid.uuid4())
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO audit_log (call_id, occurred_at, caller, credential, rpc, "
                "tenant_id, request, outcome) VALUES (:c, now(), 'x', 'y', 'AdjustPoints', :t, "
                "'{}', 'STARTED')"), {"c": call, "t": t})  # fmt: skip
        with pytest.raises(DBAPIError, match="cannot be changed"), engine.begin() as conn:
            conn.execute(text("UPDATE audit_log SET outcome = 'OK', request = CAST(:r AS jsonb) "
                              "WHERE call_id = :c"), {"c": call, "r": '{"a": 1}'})  # fmt: skip
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_log SET outcome = 'OK' WHERE call_id = :c"), {"c": call}
            )
        with pytest.raises(DBAPIError, match="cannot be changed"), engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_log SET outcome = 'ABORTED' WHERE call_id = :c"), {"c": call}
            )
    finally:
        engine.dispose()
    assert [r.outcome for r in rows_of(sql, t)] == ["OK", "OK"]


def test_migration_0009_adds_the_audit_table_and_its_guard(servers: Servers) -> None:
    """In a scratch database: 0008 -> 0009 adds `audit_log` (and nothing
    else), the guard refuses TRUNCATE, and the downgrade removes both."""
    from pointsd.storage.postgres import migrate

    name = f"pointsd_mig_{uuid.uuid4().hex[:8]}"
    admin_engine = sync_engine(sqlalchemy_url(servers.database_url), isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(sqlalchemy_url(servers.database_url)).set(database=name)
    scratch = url.render_as_string(hide_password=False).replace("+psycopg", "")
    engine = sync_engine(url)
    tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    guard = "SELECT COUNT(*) FROM pg_proc WHERE proname = 'audit_log_unchangeable'"
    try:
        migrate.upgrade(scratch, "0008")
        with engine.connect() as conn:
            before = {r[0] for r in conn.execute(text(tables))}
        migrate.upgrade(scratch, "0009")
        with engine.connect() as conn:
            after = {r[0] for r in conn.execute(text(tables))}
            assert conn.execute(text(guard)).scalar_one() == 1
        assert after - before == {"audit_log"} and before <= after
        with pytest.raises(DBAPIError, match="cannot be changed"), engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_log"))
        engine.dispose()
        migrate.downgrade(scratch, "0008")
        with engine.connect() as conn:
            assert {r[0] for r in conn.execute(text(tables))} == before
            assert conn.execute(text(guard)).scalar_one() == 0
    finally:
        engine.dispose()
        with admin_engine.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin_engine.dispose()


# -- the CLI ----------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_cli_token_changes_are_audited(
    servers: Servers, tmp_path: Path, clock: TestClock, sql: Sql
) -> None:
    clock.set(parse_instant(NOW))
    tenant = new_tenant()
    env = child_env(
        servers.redis_url, servers.database_url, rules_file(tmp_path / "r.yaml", {}), tmp_path
    )
    created = run_cli(
        ["tokens", "create", "--name", "cli-made", "--roles", "read", "--tenants", tenant], env
    )
    assert created.returncode == 0, created.stderr
    token_id, secret = parse_token(created.stdout.strip())
    rotated = run_cli(["tokens", "rotate", token_id, "--grace", "5m"], env)
    assert rotated.returncode == 0, rotated.stderr
    new_id, new_secret = parse_token(rotated.stdout.strip())
    assert run_cli(["tokens", "revoke", new_id], env).returncode == 0
    assert run_cli(["tokens", "revoke", "0000000000000000"], env).returncode == 1
    rows = rows_of(sql, tenant)
    assert [(r.rpc, r.caller, r.outcome) for r in rows] == [
        ("CreateToken", "cli", "OK"), ("RotateToken", "cli", "OK"), ("RevokeToken", "cli", "OK"),
    ]  # fmt: skip
    assert all(r.credential.startswith("os user ") for r in rows)
    assert 0 <= since_now(rows[0].occurred_at) < 120_000  # the CLI's clock is the test's
    assert rows[0].request == {"name": "cli-made", "roles": ["read"], "tenants": [tenant]}
    assert rows[1].request == {"token_id": token_id, "grace_s": "300"}
    missing = sql(
        "SELECT outcome, message FROM audit_log WHERE rpc = 'RevokeToken' "
        "AND request->>'token_id' = '0000000000000000' ORDER BY audit_id DESC LIMIT 1"
    )
    assert missing[0].outcome == "NOT_FOUND"
    for s in (secret, new_secret):
        assert sql("SELECT COUNT(*) FROM audit_log WHERE audit_log::text LIKE :s",
                   s=f"%{s}%")[0][0] == 0  # fmt: skip


# -- the token RPCs ----------------------------------------------------------------------------


async def test_tokens_are_created_listed_rotated_with_a_grace_and_revoked(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    clock.set(parse_instant(NOW))
    api = await make_api([tenant], auth_refresh_s=0.2)
    stub = admin(api.channel)
    made = await stub.CreateToken(pb.CreateTokenRequest(
        name="ops-eu", roles=["admin"], tenants=[tenant],
    ))  # fmt: skip
    assert made.token.startswith(f"pt_{made.info.token_id}_")
    assert (made.info.name, list(made.info.roles), list(made.info.tenants)) == (
        "ops-eu", ["admin"], [tenant]
    )  # fmt: skip
    assert made.info.state == "active" and not made.info.all_tenants
    listed = await stub.ListTokens(pb.ListTokensRequest())
    assert made.info.token_id in [t.token_id for t in listed.tokens]
    assert made.token not in str(listed)

    if not api.app.gate.enabled:
        return  # the rest needs the server to check tokens
    old = aio_channel(api.target, made.token)
    try:
        await usable(old)
        rotated = await admin(old).RotateToken(
            pb.RotateTokenRequest(token_id=made.info.token_id, grace_s=60)
        )
        assert rotated.old.replaced_by == rotated.new.token_id
        new = aio_channel(api.target, rotated.token)
        try:
            await usable(new)
            await admin(old).ListTokens(pb.ListTokensRequest())  # both valid in the grace
            clock.set(clock() + 61_000)
            code, message = await failure(admin(old).ListTokens(pb.ListTokensRequest()))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "expired" in message
            again = await stub.ListTokens(pb.ListTokensRequest())
            assert rotated.old.token_id not in [t.token_id for t in again.tokens]
            everything = await stub.ListTokens(pb.ListTokensRequest(include_inactive=True))
            states = {t.token_id: t.state for t in everything.tokens}
            assert states[rotated.old.token_id] == "expired"
            revoked = await stub.RevokeToken(pb.RevokeTokenRequest(token_id=rotated.new.token_id))
            assert revoked.state == "revoked" and revoked.HasField("revoked_at")

            async def refused() -> bool:
                try:
                    await admin(new).ListTokens(pb.ListTokensRequest())
                    return False
                except grpc.aio.AioRpcError as exc:
                    return exc.code() == grpc.StatusCode.UNAUTHENTICATED

            await wait_for(refused, timeout_s=5)
        finally:
            await new.close()
    finally:
        await old.close()


async def test_token_rpcs_refuse_bad_input_with_what_to_fix(api: Api) -> None:
    stub = admin(api.channel)
    day31 = 31 * 86_400
    for call, code, says in [
        (stub.CreateToken(pb.CreateTokenRequest(name="x", roles=["read"])),
         grpc.StatusCode.INVALID_ARGUMENT, "tenants: name at least one tenant"),
        (stub.CreateToken(pb.CreateTokenRequest(name="x", roles=["read"], tenants=["a"],
                                                all_tenants=True)),
         grpc.StatusCode.INVALID_ARGUMENT, "tenants: leave empty"),
        (stub.CreateToken(pb.CreateTokenRequest(name="x", roles=["root"], tenants=["a"])),
         grpc.StatusCode.INVALID_ARGUMENT, "unknown role 'root'"),
        (stub.RotateToken(pb.RotateTokenRequest(token_id="xyz")),
         grpc.StatusCode.INVALID_ARGUMENT, "token_id: a token id is 16"),
        (stub.RotateToken(pb.RotateTokenRequest(token_id="0" * 16, grace_s=day31)),
         grpc.StatusCode.INVALID_ARGUMENT, "grace_s: must be between 0 and"),
        (stub.RotateToken(pb.RotateTokenRequest(token_id="0" * 16)),
         grpc.StatusCode.NOT_FOUND, "token_id: no token"),
        (stub.RevokeToken(pb.RevokeTokenRequest(token_id="0" * 16)),
         grpc.StatusCode.NOT_FOUND, "token_id: no token"),
    ]:  # fmt: skip
        got, message = await failure(call)
        assert (got, message[: len(says)]) == (code, says)
    expired = Timestamp()
    expired.FromMilliseconds(api.app.clock() - 1000)
    code, message = await failure(stub.CreateToken(
        pb.CreateTokenRequest(name="x", roles=["read"], tenants=["a"], expires_at=expired)
    ))  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("expires_at:")


async def test_a_tenant_scoped_admin_stays_within_its_tenants(
    make_api: ApiFactory, sql: Sql
) -> None:
    mine, other = new_tenant(), new_tenant()
    api = await make_api([mine, other], auth_refresh_s=0.2)
    if not api.app.gate.enabled:
        pytest.skip("the server checks no tokens (POINTS_AUTH=off)")
    stub = admin(api.channel)
    scoped = await stub.CreateToken(
        pb.CreateTokenRequest(name="ops-mine", roles=["admin", "read"], tenants=[mine])
    )
    wide = await stub.CreateToken(
        pb.CreateTokenRequest(name="ops-all", roles=["read"], all_tenants=True)
    )
    theirs = await stub.CreateToken(
        pb.CreateTokenRequest(name="ops-other", roles=["read"], tenants=[other])
    )
    await failure(stub.DisableItem(pb.DisableItemRequest(tenant_id=other, item_id="x")))
    channel = aio_channel(api.target, scoped.token)
    try:
        await usable(channel)
        me = admin(channel)
        for request, says in [
            (pb.CreateTokenRequest(name="n", roles=["read"], all_tenants=True), "of every tenant"),
            (pb.CreateTokenRequest(name="n", roles=["read"], tenants=[mine, other]),
             f"for tenant '{other}'"),
            (pb.CreateTokenRequest(name="n", roles=["ingest"], tenants=[mine]),
             "role 'ingest', which it does not hold"),
        ]:  # fmt: skip
            code, message = await failure(me.CreateToken(request))
            assert code == grpc.StatusCode.PERMISSION_DENIED and says in message, message
        ok = await me.CreateToken(pb.CreateTokenRequest(name="n", roles=["read"], tenants=[mine]))
        seen = {t.token_id for t in (await me.ListTokens(pb.ListTokensRequest())).tokens}
        assert {scoped.info.token_id, ok.info.token_id} <= seen
        assert not seen & {wide.info.token_id, theirs.info.token_id}
        for token_id in (wide.info.token_id, theirs.info.token_id):
            for call in (
                me.RevokeToken(pb.RevokeTokenRequest(token_id=token_id)),
                me.RotateToken(pb.RotateTokenRequest(token_id=token_id)),
            ):
                code, _ = await failure(call)
                assert code == grpc.StatusCode.PERMISSION_DENIED
        trail = await me.ListAudit(pb.ListAuditRequest(page_size=500))
        assert trail.records and {r.tenant_id for r in trail.records} == {mine}
        code, _ = await failure(me.ListAudit(pb.ListAuditRequest(tenant_id=other)))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close()
    # A caller without the right leaves no trace (as at the gate): the trail
    # holds only what the scoped caller did.
    rows = sql(
        "SELECT rpc, tenant_id, outcome FROM audit_log WHERE credential = :c ORDER BY audit_id",
        c=f"token {scoped.info.token_id}",
    )
    assert [tuple(r) for r in rows] == [("CreateToken", mine, "OK")]


def test_a_nul_in_a_request_still_makes_a_row_postgresql_accepts(sql: Any) -> None:
    """jsonb refuses \\u0000: the request text carries U+FFFD in its place."""
    got = audit.request_json(pb.AdjustPointsRequest(tenant_id="t", reason="a\x00b"))
    assert json.loads(got)["reason"] == "a\ufffdb"
    assert sql("SELECT CAST(:j AS jsonb) ->> 'reason'", j=got) == [("a\ufffdb",)]
