"""Authentication and authorisation end to end (issue 12), through a real
gRPC server on real Redis and PostgreSQL.

Every method of PointsService and AdminService, found in the proto
descriptor (a new RPC is covered without editing this file), is called with
no metadata, a malformed header, an unknown, an expired and a revoked token
(UNAUTHENTICATED saying which, never the secret), a token without the
method's role and one of another tenant (PERMISSION_DENIED naming the role
or the tenant); none of these changes the tenants' Redis keys or their rows
in PostgreSQL. The same request with a token of exactly the right role and
tenant is then admitted, and for the acting methods it does change the
state: the snapshots would have seen a leak. Besides: a batch with one
foreign event, a stream whose later batch has one, health and reflection
without a token, a second process seeing creation, rotation and revocation
within 5 s, and 200 calls racing a revocation.
"""

from __future__ import annotations

import asyncio
import queue
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis as sync_redis
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.auth import (
    ROLE_OF,
    ROLES,
    SCOPED_BY_HANDLER,
    Authenticator,
    issue_token,
    new_token,
    parse_token,
)
from pointsd.storage.postgres.tokens import TokenStore
from scripts.procs import ServerProcess, free_port
from scripts.tokens import bearer
from tests.conftest import Api, ApiFactory, Servers, new_tenant, wait_for
from tests.helpers import child_env, ev, ledger_count, rules_file, tenant_keys

Sql = Callable[..., list[Any]]
Metadata = Sequence[tuple[str, str]]

_SERVICES = ("PointsService", "AdminService")
METHODS: list[MethodDescriptor] = [
    m for s in _SERVICES for m in pb.DESCRIPTOR.services_by_name[s].methods
]
MESSAGE_CHARS_MAX = 1000
# Within this of a change in PostgreSQL every process acts on it (docs/security.md).
PROPAGATION_S = 5.0
# Tables whose rows belong to a tenant (checked against the schema below).
TENANT_TABLES = (
    "audit_log",
    "catalog_items",
    "farming_findings",
    "farming_flags",
    "ledger_entries",
    "redemptions",
    "winner_periods",
    "winners",
)


def full_name(m: MethodDescriptor) -> str:
    return f"/{m.containing_service.full_name}/{m.name}"


def _id(m: MethodDescriptor) -> str:
    return f"{m.containing_service.name}.{m.name}"


def is_stream(m: MethodDescriptor) -> bool:
    return m.client_streaming or m.server_streaming


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[Any]


async def invoke(
    channel: grpc.aio.Channel,
    m: MethodDescriptor,
    request: Any,
    metadata: Metadata | None,
    *,
    target: str = "",
) -> Outcome:
    """Call `m` with `request` (a list of messages for a stream, sent to
    `target`) and exactly `metadata` (None: none at all): its code, message
    and responses."""
    if is_stream(m):
        assert target, "a stream needs the target"
        return await asyncio.to_thread(stream, target, full_name(m), metadata, request)
    out = message_factory.GetMessageClass(m.output_type)
    unary: Any = channel.unary_unary(
        full_name(m),
        request_serializer=lambda msg: msg.SerializeToString(),
        response_deserializer=out.FromString,
    )
    try:
        return Outcome(
            grpc.StatusCode.OK, "", [await unary(request, metadata=metadata, timeout=30)]
        )
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code(), err.details() or "", [])


def stream(
    target: str, method: str, metadata: Metadata | None, events: Sequence[Any], lockstep: int = 0
) -> Outcome:
    """A StreamActivities call (run it in a thread): the first `lockstep`
    events one at a time, each answered before the next is sent, then the
    rest at once. The blocking client, because an asyncio client that writes
    to a stream the server has just ended may report its own INTERNAL
    ("Internal error from Core") instead of the server's status."""
    inbox: queue.Queue[Any] = queue.Queue()

    def requests() -> Iterator[Any]:
        for _ in range(len(events) + 1):  # bounded: the events, then the end
            msg = inbox.get(timeout=60)
            if msg is None:
                return
            yield msg

    results: list[Any] = []
    with grpc.insecure_channel(target) as ch:
        call: Any = ch.stream_stream(
            method,
            request_serializer=lambda msg: msg.SerializeToString(),
            response_deserializer=pb.ActivityResult.FromString,
        )
        responses = call(requests(), metadata=metadata, timeout=30)
        try:
            for msg in events[:lockstep]:
                inbox.put(msg)
                results.append(next(responses))
            for msg in events[lockstep:]:
                inbox.put(msg)
            inbox.put(None)
            results.extend(responses)
        except grpc.RpcError as err:
            return Outcome(err.code(), err.details() or "", results)
        finally:
            inbox.put(None)  # the request thread is never left waiting
    return Outcome(grpc.StatusCode.OK, "", results)


# -- state snapshots ------------------------------------------------------------------


def snapshot(rds: sync_redis.Redis, sql: Sql, tenants: Sequence[str], names: str) -> Any:
    """Everything a call could change for `tenants`: each Redis key with its
    serialized value, a digest of each tenant table's rows, and the tokens
    whose names start with `names` (this test's)."""
    keys = {t: {k: rds.dump(k) for k in tenant_keys(rds, t)} for t in tenants}
    rows = {
        (table, t): sql(
            f"SELECT count(*), md5(COALESCE(string_agg(x::text, '|' ORDER BY x::text), '')) "
            f"FROM {table} x WHERE tenant_id = :t",
            t=t,
        )[0]
        for table in TENANT_TABLES
        for t in tenants
    }
    tokens = sql(
        "SELECT token_id, roles, tenants, expires_at, revoked_at, replaced_by, updated_at "
        "FROM api_tokens WHERE name LIKE :n ORDER BY token_id",
        n=f"{names}%",
    )
    return keys, rows, tokens


def test_the_snapshot_covers_every_table_with_tenant_rows(sql: Sql) -> None:
    tables = sql(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'tenant_id' "
        "AND table_schema = current_schema() ORDER BY 1"
    )
    assert {r[0] for r in tables} == set(TENANT_TABLES)


# -- the world one test runs in ------------------------------------------------------


@dataclass
class World:
    api: Api
    tenant: str  # the tenant every request names
    other: str  # a tenant of the same service no scoped token here may touch
    names: str  # prefix of this test's token names
    channel: grpc.aio.Channel  # plain: each call sends its own metadata
    redemption_id: str
    victim_id: str  # an admin token of `tenant`, for RotateToken and RevokeToken

    @property
    def store(self) -> TokenStore:
        return self.api.app.stores.tokens

    @property
    def authenticator(self) -> Authenticator:
        authenticator = self.api.app.gate.authenticator
        assert authenticator is not None, "these tests need POINTS_AUTH=on"
        return authenticator

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.api.app.clock() / 1000, UTC)

    async def token(
        self,
        roles: Sequence[str],
        tenants: Sequence[str] | None,
        *,
        expires_at: datetime | None = None,
        created: datetime | None = None,
    ) -> tuple[str, str]:
        """(token, token_id) of a new token named for this test."""
        token, row = await issue_token(
            self.store,
            name=f"{self.names}-{uuid.uuid4().hex[:6]}",
            roles=roles,
            tenants=tenants,
            now=created or self.now(),
            expires_at=expires_at,
        )
        return token, row.token_id

    async def seen(self) -> None:
        """Make the server's token snapshot current now, instead of waiting
        for its background refresh."""
        await self.authenticator.refresh()

    async def call(self, m: MethodDescriptor, request: Any, token: str) -> Outcome:
        return await invoke(self.channel, m, request, bearer(token), target=self.api.target)

    def state(self, rds: sync_redis.Redis, sql: Sql) -> Any:
        return snapshot(rds, sql, [self.tenant, self.other], self.names)


@pytest.fixture
def token_names(servers: Servers, sql: Sql) -> Iterator[str]:
    """A prefix for the names of this test's tokens; they are deleted after it."""
    prefix = f"authapi-{uuid.uuid4().hex[:8]}"
    yield prefix
    from sqlalchemy import create_engine, text

    from pointsd.storage.postgres import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(servers.database_url))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM api_tokens WHERE name LIKE :n"), {"n": f"{prefix}%"})
    engine.dispose()


@pytest.fixture
async def world(make_api: ApiFactory, token_names: str) -> AsyncIterator[World]:
    """Two tenants on one server with no flusher (nothing moves state between
    two snapshots but the calls); `tenant` has an item, a funded user and a
    completed redemption, so every acting request can succeed."""
    tenant, other = new_tenant("auth"), new_tenant("foreign")
    api = await make_api([tenant, other], flusher="off")
    channel = grpc.aio.insecure_channel(api.target)
    everything = bearer(api.token)
    admin, points = pb.DESCRIPTOR.services_by_name["AdminService"], api.stub
    seed = [
        (admin.methods_by_name["CreateItem"], pb.CreateItemRequest(item=_item(tenant))),
        (
            admin.methods_by_name["AdjustPoints"],
            pb.AdjustPointsRequest(
                tenant_id=tenant, user_id="ann", points=100, reason="seed", idempotency_key="seed"
            ),
        ),
    ]
    for m, request in seed:
        done = await invoke(channel, m, request, everything)
        assert done.code == grpc.StatusCode.OK, done.details
    redeemed = await points.Redeem(
        pb.RedeemRequest(tenant_id=tenant, user_id="ann", item_id="mug", request_id="seed")
    )
    made = World(api, tenant, other, token_names, channel, redeemed.redemption.redemption_id, "")
    _, made.victim_id = await made.token(["admin"], [tenant])
    yield made
    await channel.close()


def _item(tenant: str, **extra: Any) -> pb.Item:
    return pb.Item(
        tenant_id=tenant,
        item_id="mug",
        name="Mug",
        kind=pb.PHYSICAL,
        cost=5,
        stock=10,
        enabled=True,
        **extra,
    )


# What each acting method's request must change when admitted.
ACTING = {
    "RecordActivity",
    "RecordActivities",
    "StreamActivities",
    "Redeem",
    "CreateItem",
    "UpdateItem",
    "DisableItem",
    "RefundRedemption",
    "AdjustPoints",
    "CreateToken",
    "RotateToken",
    "RevokeToken",
}


def request_for(m: MethodDescriptor, w: World) -> Any:
    """A request naming `w.tenant` that a caller with the method's role and
    the tenant gets through (and that acts, for the methods of ACTING). A
    method without its own entry gets every tenant field set: it is still
    refused or admitted as the gate decides."""
    t = w.tenant
    fresh = uuid.uuid4().hex[:12]
    board: dict[str, Any] = {"board": "points", "period": pb.WEEK}
    known: dict[str, Callable[[], Any]] = {
        "PointsService.RecordActivity": lambda: ev(t, "ann", "login", event_id=fresh),
        "PointsService.RecordActivities": lambda: pb.RecordActivitiesRequest(
            events=[ev(t, f"u{i}", "login") for i in range(3)]
        ),
        "PointsService.StreamActivities": lambda: [ev(t, f"s{i}", "login") for i in range(2)],
        "PointsService.GetBalance": lambda: pb.GetBalanceRequest(tenant_id=t, user_id="ann"),
        "PointsService.ListLedger": lambda: pb.ListLedgerRequest(tenant_id=t, user_id="ann"),
        "PointsService.Leaderboard": lambda: pb.LeaderboardRequest(tenant_id=t, **board),
        "PointsService.GetRank": lambda: pb.GetRankRequest(tenant_id=t, member_id="ann", **board),
        "PointsService.ListWinners": lambda: pb.ListWinnersRequest(tenant_id=t, **board),
        "PointsService.ListRewards": lambda: pb.ListRewardsRequest(tenant_id=t, user_id="ann"),
        "PointsService.Redeem": lambda: pb.RedeemRequest(
            tenant_id=t, user_id="ann", item_id="mug", request_id=fresh
        ),
        "PointsService.ListRedemptions": lambda: pb.ListRedemptionsRequest(
            tenant_id=t, user_id="ann"
        ),
        "PointsService.GetProgress": lambda: pb.GetProgressRequest(tenant_id=t, user_id="ann"),
        "PointsService.ListThanks": lambda: pb.ListThanksRequest(tenant_id=t),
        "AdminService.CreateItem": lambda: pb.CreateItemRequest(
            item=pb.Item(
                tenant_id=t,
                item_id=f"pen-{fresh}",
                name="Pen",
                kind=pb.PHYSICAL,
                cost=1,
                enabled=True,
            )
        ),
        "AdminService.UpdateItem": lambda: pb.UpdateItemRequest(
            item=_item(t, description=f"blue {fresh}")
        ),
        "AdminService.DisableItem": lambda: pb.DisableItemRequest(tenant_id=t, item_id="mug"),
        "AdminService.ListItems": lambda: pb.ListItemsRequest(tenant_id=t),
        "AdminService.ListRedemptions": lambda: pb.AdminListRedemptionsRequest(tenant_id=t),
        "AdminService.RefundRedemption": lambda: pb.RefundRedemptionRequest(
            tenant_id=t, redemption_id=w.redemption_id, reason="broken"
        ),
        "AdminService.AdjustPoints": lambda: pb.AdjustPointsRequest(
            tenant_id=t, user_id="ann", points=5, reason="bonus", idempotency_key=fresh
        ),
        "AdminService.CreateToken": lambda: pb.CreateTokenRequest(
            name=f"{w.names}-made", roles=["admin"], tenants=[t]
        ),
        "AdminService.ListTokens": lambda: pb.ListTokensRequest(include_inactive=True),
        "AdminService.RotateToken": lambda: pb.RotateTokenRequest(token_id=w.victim_id, grace_s=60),
        "AdminService.RevokeToken": lambda: pb.RevokeTokenRequest(token_id=w.victim_id),
        "AdminService.ListAudit": lambda: pb.ListAuditRequest(tenant_id=t),
    }
    build = known.get(_id(m))
    if build is not None:
        return build()
    request: Any = message_factory.GetMessageClass(m.input_type)()
    fields = m.input_type.fields_by_name
    if "tenant_id" in fields:
        request.tenant_id = t
    if "item" in fields:
        request.item.tenant_id = t
    if "events" in fields:
        request.events.append(ev(t, "ann", "login"))
    return [request] if is_stream(m) else request


def test_every_method_of_both_services_is_covered() -> None:
    assert {full_name(m) for m in METHODS} == set(ROLE_OF)
    assert any(is_stream(m) and m.name == "StreamActivities" for m in METHODS)
    assert {m.name for m in METHODS} >= ACTING


def _refused(out: Outcome, code: grpc.StatusCode, says: str, *secrets: str, case: str) -> None:
    assert out.code == code, f"{case}: {out.code.name} {out.details[:300]!r}, expected {code.name}"
    assert says in out.details, f"{case}: {out.details[:300]!r} does not say {says!r}"
    assert len(out.details) < MESSAGE_CHARS_MAX, f"{case}: a {len(out.details)}-char message"
    for secret in secrets:
        assert secret not in out.details, f"{case}: the message echoes the secret"


@pytest.mark.parametrize("m", METHODS, ids=[_id(m) for m in METHODS])
async def test_every_method_refuses_bad_credentials_and_leaves_no_trace(
    world: World, rds: sync_redis.Redis, sql: Sql, m: MethodDescriptor
) -> None:
    w, role = world, ROLE_OF[full_name(m)]
    past = w.now() - timedelta(hours=2)
    expired, expired_id = await w.token(
        ROLES, [w.tenant], created=past, expires_at=past + timedelta(hours=1)
    )
    revoked, revoked_id = await w.token(ROLES, [w.tenant])
    await w.store.revoke(revoked_id, w.now())
    wrong_role, _ = await w.token([r for r in ROLES if r != role], [w.tenant])
    foreign, _ = await w.token(ROLES, [w.other])
    right, _ = await w.token([role], [w.tenant])
    unknown = new_token()[0]
    await w.seen()

    def secret(token: str) -> str:
        return parse_token(token)[1]

    unauthenticated: list[tuple[str, Metadata | None, str, list[str]]] = [
        ("no metadata", None, "missing 'authorization: Bearer <token>'", []),
        ("other metadata only", [("x-caller", "im-1")], "missing 'authorization", []),
        ("no Bearer", [("authorization", right)], "must be 'Bearer <token>'", [secret(right)]),
        ("Basic", [("authorization", f"Basic {right}")], "must be 'Bearer", [secret(right)]),
        (
            "malformed token",
            bearer("pt_0123_" + secret(right)[:20]),
            "malformed token",
            [secret(right)[:20]],
        ),
        (
            "unknown token",
            bearer(unknown),
            f"unknown token {parse_token(unknown)[0]}",
            [secret(unknown)],
        ),
        (
            "expired token",
            bearer(expired),
            f"token {expired_id} expired at",
            [secret(expired)],
        ),
        ("revoked token", bearer(revoked), f"token {revoked_id} was revoked", [secret(revoked)]),
    ]
    before = w.state(rds, sql)
    for case, metadata, says, secrets in unauthenticated:
        out = await invoke(w.channel, m, request_for(m, w), metadata, target=w.api.target)
        _refused(out, grpc.StatusCode.UNAUTHENTICATED, says, *secrets, case=case)
        assert not out.responses, f"{case}: answered before refusing"

    out = await w.call(m, request_for(m, w), wrong_role)
    _refused(
        out,
        grpc.StatusCode.PERMISSION_DENIED,
        f"lacks role {role!r}",
        secret(wrong_role),
        case="wrong role",
    )

    out = await w.call(m, request_for(m, w), foreign)
    if m.name == "ListTokens":
        # Names no tenant: a scoped caller sees only the tokens of its own.
        assert out.code == grpc.StatusCode.OK, out.details
        seen = [tuple(t.tenants) for t in out.responses[0].tokens]
        assert seen and all(set(ts) <= {w.other} for ts in seen), seen
    elif full_name(m) in SCOPED_BY_HANDLER:
        _refused(
            out, grpc.StatusCode.PERMISSION_DENIED, "token", secret(foreign), case="foreign tenant"
        )
    else:
        _refused(
            out,
            grpc.StatusCode.PERMISSION_DENIED,
            f"may not act on tenant {w.tenant!r}",
            secret(foreign),
            case="foreign tenant",
        )
        assert not out.responses, "foreign tenant: answered before refusing"
    after = w.state(rds, sql)
    # Refused at the gate or by a token command's own scope check: no trace.
    assert after == before, f"a refused {m.name} changed the state"

    # The control: the same request with exactly the role and the tenant.
    out = await w.call(m, request_for(m, w), right)
    assert out.code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), (
        f"the right token was refused: {out.code.name} {out.details[:300]!r}"
    )
    if m.name in ACTING:
        assert out.code == grpc.StatusCode.OK, out.details
        assert w.state(rds, sql) != after, f"an admitted {m.name} changed nothing"


# -- batches and streams with one foreign event --------------------------------------------


async def test_one_foreign_event_refuses_the_whole_batch(
    world: World, rds: sync_redis.Redis, sql: Sql
) -> None:
    w = world
    ingest, _ = await w.token(["ingest"], [w.tenant])
    await w.seen()
    record = pb.DESCRIPTOR.services_by_name["PointsService"].methods_by_name["RecordActivities"]
    events = [ev(w.tenant, f"b{i}", "login") for i in range(300)]
    mixed = [*events[:211], ev(w.other, "intruder", "login"), *events[211:]]
    before = w.state(rds, sql)
    out = await w.call(record, pb.RecordActivitiesRequest(events=mixed), ingest)
    _refused(
        out, grpc.StatusCode.PERMISSION_DENIED, f"may not act on tenant {w.other!r}", case="batch"
    )
    assert w.state(rds, sql) == before, "a refused batch applied something"

    out = await w.call(record, pb.RecordActivitiesRequest(events=events), ingest)
    assert out.code == grpc.StatusCode.OK, out.details
    assert [r.outcome for r in out.responses[0].results] == [pb.AWARDED] * len(events)
    assert tenant_keys(rds, w.tenant) and not tenant_keys(rds, w.other)


async def test_a_stream_ends_at_the_batch_with_a_foreign_event_and_applies_none_of_it(
    world: World, rds: sync_redis.Redis, sql: Sql
) -> None:
    """Events answered before the foreign one were applied; the batch that
    holds it, and everything after, was not (the server groups what has
    arrived into batches, so which own events share the foreign one's batch
    varies: exactly the answered ones are applied)."""
    w = world
    ingest, _ = await w.token(["ingest"], [w.tenant])
    await w.seen()
    early = [ev(w.tenant, f"early{i}", "login") for i in range(3)]
    burst = [ev(w.tenant, f"late{i}", "login") for i in range(20)]
    foreign = ev(w.other, "intruder", "login")
    burst.insert(7, foreign)
    others_before = snapshot(rds, sql, [w.other], w.names)
    # The early events one at a time (each its own batch, answered), then a
    # burst with the foreign event among own ones.
    out = await asyncio.to_thread(
        stream, w.api.target, "/points.v1.PointsService/StreamActivities", bearer(ingest),
        [*early, *burst], len(early),
    )  # fmt: skip
    _refused(out, grpc.StatusCode.PERMISSION_DENIED, f"may not act on tenant {w.other!r}",
             case="stream")  # fmt: skip
    answered = [r.event_id for r in out.responses]
    assert answered[: len(early)] == [e.event_id for e in early]
    assert [r.outcome for r in out.responses] == [pb.AWARDED] * len(answered)
    assert foreign.event_id not in answered
    assert snapshot(rds, sql, [w.other], w.names) == others_before

    async def earned(e: pb.ActivityEvent) -> int:
        balance = await w.api.stub.GetBalance(
            pb.GetBalanceRequest(tenant_id=w.tenant, user_id=e.user_id)
        )
        return balance.lifetime_earned

    applied = {e.event_id for e in [*early, *burst] if e is not foreign and await earned(e) > 0}
    assert applied == set(answered), "the applied events are not exactly the answered ones"
    after = {e.event_id for e in burst[burst.index(foreign) + 1 :]}
    assert not applied & after, "events after the foreign one were applied"


async def test_health_and_reflection_need_no_token(api: Api) -> None:
    async with grpc.aio.insecure_channel(api.target) as plain:
        health = await health_pb2_grpc.HealthStub(plain).Check(
            health_pb2.HealthCheckRequest(service="points.v1.PointsService"), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(plain)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            yield reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="points.v1.AdminService"
            )

        answers = [a async for a in stub.ServerReflectionInfo(ask(), timeout=10)]
        services = {s.name for s in answers[0].list_services_response.service}
        assert {"points.v1.PointsService", "points.v1.AdminService"} <= services
        assert answers[1].file_descriptor_response.file_descriptor_proto
        # ... while the service itself still wants one on the same channel.
        record = METHODS_BY_NAME["RecordActivity"]
        out = await invoke(plain, record, ev(api.tenant, "ann", "login"), None)
        assert out.code == grpc.StatusCode.UNAUTHENTICATED


# -- other processes ---------------------------------------------------------------------------


async def _until(what: str, check: Callable[[], Any], timeout_s: float = PROPAGATION_S) -> float:
    """Poll `check` (True when done) every 50 ms: the seconds it took, or
    AssertionError once `timeout_s` passed."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        elapsed = time.monotonic() - started
        assert elapsed < timeout_s, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.05)


def _balance_call(target: str, tenant: str) -> Callable[[str], Any]:
    """GetBalance on `target` with a given token: its status code."""

    async def code_with(token: str) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(target) as ch:
            out = await invoke(
                ch,
                METHODS_BY_NAME["GetBalance"],
                pb.GetBalanceRequest(tenant_id=tenant, user_id="ann"),
                bearer(token),
            )
        return out.code

    return code_with


METHODS_BY_NAME = {m.name: m for m in METHODS if m.containing_service.name == "PointsService"}


@pytest.mark.subprocess
async def test_another_process_sees_a_new_and_a_revoked_token_within_5_s(
    make_api: ApiFactory, servers: Servers, tmp_path: Path, token_names: str
) -> None:
    """Server 1 in this process creates and revokes through AdminService; a
    `pointsd serve` child with the default refresh (2 s) follows."""
    tenant = new_tenant("auth")
    one = await make_api([tenant])
    rules = rules_file(tmp_path / "r.yaml", {tenant: {}})
    env = child_env(servers.redis_url, servers.database_url, rules, tmp_path / "data")
    child = ServerProcess(env, free_port(), tmp_path / "serve.log")
    child.start()
    try:
        admin = pb.DESCRIPTOR.services_by_name["AdminService"].methods_by_name
        made = await invoke(
            one.channel,
            admin["CreateToken"],
            pb.CreateTokenRequest(name=f"{token_names}-reader", roles=["read"], tenants=[tenant]),
            None,
        )
        assert made.code == grpc.StatusCode.OK, made.details
        token = made.responses[0].token
        on_one, on_child = _balance_call(one.target, tenant), _balance_call(child.target, tenant)

        async def accepted() -> bool:
            return await on_one(token) == await on_child(token) == grpc.StatusCode.OK

        await _until("the new token accepted by both", accepted)

        revoked = await invoke(
            one.channel,
            admin["RevokeToken"],
            pb.RevokeTokenRequest(token_id=made.responses[0].info.token_id),
            None,
        )
        assert revoked.code == grpc.StatusCode.OK, revoked.details

        async def refused() -> bool:
            codes = {await on_one(token), await on_child(token)}
            assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED}, codes
            return codes == {grpc.StatusCode.UNAUTHENTICATED}

        took = await _until("the revocation refused by both", refused)
        assert took < PROPAGATION_S
    finally:
        assert child.terminate() == 0, child.log.read_text()[-3000:]


async def test_rotation_both_valid_during_the_grace_then_the_old_refused_everywhere(
    make_api: ApiFactory, tenant: str, token_names: str
) -> None:
    """Two servers (each its own token snapshot, default 2 s refresh) on one
    database: a rotation with a grace leaves both tokens valid on both; a
    rotation with grace_s=0 ends the old one on both within 5 s."""
    one, two = await make_api([tenant]), await make_api([tenant])
    admin = pb.DESCRIPTOR.services_by_name["AdminService"].methods_by_name
    on = [_balance_call(s.target, tenant) for s in (one, two)]

    async def codes(token: str) -> set[grpc.StatusCode]:
        return {await call(token) for call in on}

    ok, unauthenticated = {grpc.StatusCode.OK}, {grpc.StatusCode.UNAUTHENTICATED}
    made = await invoke(
        one.channel,
        admin["CreateToken"],
        pb.CreateTokenRequest(name=f"{token_names}-reader", roles=["read"], tenants=[tenant]),
        None,
    )
    assert made.code == grpc.StatusCode.OK, made.details
    first = made.responses[0].token

    async def valid(token: str) -> bool:
        return await codes(token) == ok

    await _until("the first token on both", lambda: valid(first))

    rotated = await invoke(
        one.channel,
        admin["RotateToken"],
        pb.RotateTokenRequest(token_id=parse_token(first)[0], grace_s=3600),
        None,
    )
    assert rotated.code == grpc.StatusCode.OK, rotated.details
    second = rotated.responses[0].token
    await _until("the second token on both", lambda: valid(second))
    assert await codes(first) == ok, "the old token was refused during its grace"

    again = await invoke(
        two.channel,
        admin["RotateToken"],
        pb.RotateTokenRequest(token_id=parse_token(second)[0], grace_s=0),
        None,
    )
    assert again.code == grpc.StatusCode.OK, again.details
    third = again.responses[0].token

    async def switched() -> bool:
        return await codes(second) == unauthenticated and await codes(third) == ok

    await _until("the second token refused and the third accepted on both", switched)
    async with grpc.aio.insecure_channel(one.target) as ch:
        out = await invoke(
            ch,
            METHODS_BY_NAME["GetBalance"],
            pb.GetBalanceRequest(tenant_id=tenant, user_id="ann"),
            bearer(second),
        )
    assert f"token {parse_token(second)[0]} expired at" in out.details
    assert parse_token(second)[1] not in out.details
    assert await codes(first) == ok  # its own grace (an hour) is not over


# -- a revocation racing 200 calls ------------------------------------------------------------


async def test_no_call_is_applied_after_its_token_is_seen_revoked(
    make_api: ApiFactory, tenant: str, token_names: str, sql: Sql
) -> None:
    """200 AdjustPoints with one token, the token revoked (through
    RevokeToken) while they run. The test refreshes the server's token
    snapshot itself (its background refresh stopped), so the instant the
    process saw the revocation is known: every admitted call (its audit row
    is written when the handler starts, in the same step as the admission)
    began before it; once a client saw UNAUTHENTICATED no later call
    succeeded; and the balance and ledger hold exactly the calls answered OK."""
    api = await make_api([tenant])
    authenticator = api.app.gate.authenticator
    assert authenticator is not None
    await authenticator.close()  # no background refresh: this test does it
    now = datetime.fromtimestamp(api.app.clock() / 1000, UTC)
    token, row = await issue_token(
        api.app.stores.tokens,
        name=f"{token_names}-ops",
        roles=["admin"],
        tenants=[tenant],
        now=now,
    )
    token_id = row.token_id
    await authenticator.refresh()
    adjust = pb.DESCRIPTOR.services_by_name["AdminService"].methods_by_name["AdjustPoints"]
    revoke = pb.DESCRIPTOR.services_by_name["AdminService"].methods_by_name["RevokeToken"]
    plain = grpc.aio.insecure_channel(api.target)
    calls, launched_before = 200, 150
    results: dict[int, tuple[float, float, Outcome]] = {}
    seen = asyncio.Event()
    seen_ms: list[int] = []

    async def one(i: int) -> None:
        started = time.monotonic()
        out = await invoke(
            plain,
            adjust,
            pb.AdjustPointsRequest(
                tenant_id=tenant,
                user_id="ann",
                points=1,
                reason="race",
                idempotency_key=f"k{i}",
            ),
            bearer(token),
        )
        results[i] = (started, time.monotonic(), out)

    async def revoker() -> None:
        async def enough() -> bool:
            return sum(r[2].code == grpc.StatusCode.OK for r in results.values()) >= 40

        await wait_for(enough, timeout_s=60, step_s=0.001)
        out = await invoke(api.channel, revoke, pb.RevokeTokenRequest(token_id=token_id), None)
        assert out.code == grpc.StatusCode.OK, out.details
        await authenticator.refresh()
        seen_ms.append(api.app.clock())  # no other task ran since the snapshot changed
        seen.set()

    try:
        tasks = [asyncio.create_task(revoker())]
        for i in range(launched_before):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0.002)
        await asyncio.wait_for(seen.wait(), 60)
        tasks += [asyncio.create_task(one(i)) for i in range(launched_before, calls)]
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    finally:
        await plain.close()

    codes = {r[2].code for r in results.values()}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED}, {
        (r[2].code.name, r[2].details) for r in results.values()
    }
    good = {i for i, r in results.items() if r[2].code == grpc.StatusCode.OK}
    bad = set(results) - good
    assert len(good) >= 40 and set(range(launched_before, calls)) <= bad
    assert all(f"token {token_id} was revoked" in results[i][2].details for i in bad)
    first_refusal = min(results[i][1] for i in bad)
    late = {i for i, r in results.items() if r[0] > first_refusal}
    assert late and late <= bad, "a call started after a client saw the revocation succeeded"

    # Admitted means audited (refusals before the handler are not): every
    # admitted call began before the process saw the revocation.
    rows = sql(
        "SELECT request->>'idempotency_key', outcome, occurred_at FROM audit_log "
        "WHERE tenant_id = :t AND rpc = 'AdjustPoints' AND credential = :c",
        t=tenant,
        c=f"token {token_id}",
    )
    assert {r[0] for r in rows} == {f"k{i}" for i in good} and len(rows) == len(good)
    assert all(r[1] == "OK" for r in rows)
    seen_at = datetime.fromtimestamp(seen_ms[0] / 1000, UTC)
    assert all(r[2] <= seen_at for r in rows), "a call was admitted after the revocation was seen"

    balance = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=tenant, user_id="ann"))
    assert balance.available == len(good)

    async def flushed() -> bool:
        return ledger_count(sql, tenant) >= len(good)

    await wait_for(flushed, timeout_s=30)
    entries = sql("SELECT entry_key, points FROM ledger_entries WHERE tenant_id = :t", t=tenant)
    assert sorted(entries) == sorted((f"adj:ann:k{i}", 1) for i in good)
