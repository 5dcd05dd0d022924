"""Guarantees G2, G3, G7 and G9: every award reaches the ledger exactly once,
through redelivery, dead flushers and refused entries (parked, never
dropped); one row per payment; balances equal ledger sums."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.domain import CreditOp, LedgerFacts, Role
from pointsd.service.ops import reconcile
from pointsd.storage.entries import LedgerRow, award_data, decode_entry
from pointsd.storage.flusher import Flusher
from pointsd.storage.keys import OUTBOX_GROUP
from pointsd.storage.redis import Outbox
from tests.conftest import Api, ApiFactory, new_tenant
from tests.helpers import ev, ledger_count, ledger_sum, tenant_keys


async def test_every_award_reaches_the_ledger_once_and_reconciles(api: Api, sql) -> None:
    t = api.tenant
    events = [
        ev(t, f"u{i % 13}", a, target_user_id=f"u{(i + 1) % 13}")
        for i, a in enumerate(["like", "reply", "file", "login", "thanks_card"] * 60)
    ]
    resp = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    expected = {}
    for e, r in zip(events, resp.results, strict=True):
        for c in r.credits:
            if c.outcome == pb.AWARDED and c.points:
                role = "a" if c.role == pb.ACTOR else "t"
                expected[f"e:{e.event_id}:{role}:{c.user_id}"] = (c.user_id, c.points, c.balance)
    assert await api.app.flusher.drain(30)
    rows = sql(
        "SELECT entry_key, user_id, points, balance_after FROM ledger_entries WHERE tenant_id=:t",
        t=t,
    )
    assert {k: (u, p, b) for k, u, p, b in rows} == expected
    report = await reconcile(api.app)
    assert report.clean and report.users == 13


async def test_ids_with_colons_never_share_a_ledger_key(make_api: ApiFactory, sql) -> None:
    """Event "x:a:u" of user "v" and event "x" of user "u:a:v" are two
    payments; joined with ':' unescaped they would make one entry key, and
    the ledger would keep only one of them."""
    api = await make_api({new_tenant(): {"shards": 4}})
    t = api.tenant
    events = [ev(t, "v", "file", event_id="x:a:u"), ev(t, "u:a:v", "file", event_id="x")]
    resp = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    assert [r.outcome for r in resp.results] == [pb.AWARDED, pb.AWARDED]
    assert await api.app.flusher.drain(30)
    rows = sql("SELECT entry_key, user_id FROM ledger_entries WHERE tenant_id = :t", t=t)
    assert sorted(tuple(r) for r in rows) == [
        ("e:x%3Aa%3Au:a:v", "v"),
        ("e:x:a:u%3Aa%3Av", "u:a:v"),
    ]
    assert (await reconcile(api.app)).clean


async def test_ledger_write_is_idempotent(api: Api, sql) -> None:
    row = LedgerRow(
        tenant_id=api.tenant,
        entry_key="e:x:a",
        user_id="u1",
        points=5,
        balance_after=5,
        kind="award",
        action="login",
        event_id="x",
        role="a",
        counterpart_id="",
        group_id="",
        department_id="",
        quantity=1,
        reason="test",
        occurred_at_ms=1_700_000_000_000,
        recorded_at_ms=1_700_000_000_000,
        attributes={"k": "v"},
    )
    ledger = api.app.stores.ledger
    assert (await ledger.write([row, row])).inserted == 1
    again = await ledger.write([row])
    assert (again.inserted, again.conflicts) == (0, [])
    assert ledger_count(sql, api.tenant) == 1
    # Same key, other content: two payments claiming one key are reported.
    clash = dataclasses.replace(row, points=7, balance_after=12)
    other = dataclasses.replace(row, entry_key="e:y:a:u1")
    result = await ledger.write([clash, other])
    assert (result.inserted, result.conflicts) == (1, [clash])
    assert ledger_sum(sql, api.tenant) == 5 + 5
    # Same user, points and kind but another payment (a reused id whose dedup
    # record had expired: recorded later, another balance after): reported.
    later = dataclasses.replace(row, balance_after=10, recorded_at_ms=1_700_000_900_000)
    assert (await ledger.write([later])).conflicts == [later]
    # Two different rows under one new key in one batch: the one written is
    # not reported, the other is.
    first = dataclasses.replace(row, entry_key="e:z:a:u1", balance_after=15)
    second = dataclasses.replace(first, points=3, balance_after=18)
    both = await ledger.write([first, second])
    assert both.inserted == 1 and len(both.conflicts) == 1
    stored = sql(
        "SELECT points FROM ledger_entries WHERE tenant_id = :t AND entry_key = 'e:z:a:u1'",
        t=api.tenant,
    )[0][0]
    assert both.conflicts[0].points != stored


async def test_entries_of_a_dead_flusher_are_claimed(
    make_api: ApiFactory, tenant: str, sql
) -> None:
    api = await make_api([tenant], flusher="off")
    for i in range(20):
        await api.stub.RecordActivity(ev(tenant, f"u{i}", "login"))
    shards = api.app.shards()
    dead = Outbox(api.app.stores.redis, consumer="dead-flusher")
    await dead.ensure_groups(shards)
    taken = await dead.read(shards, 100)
    assert len(taken) == 20  # delivered to a flusher that then died: pending, not acked
    live = Flusher(
        Outbox(api.app.stores.redis, consumer="live"),
        api.app.stores.ledger,
        lambda: shards,
        claim_idle_ms=200,
        interval_ms=10,
        clock=api.app.clock,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(live.run(stop))
    try:
        for _ in range(200):
            if ledger_count(sql, tenant) == 20:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert ledger_count(sql, tenant) == 20
    assert await api.app.stores.outbox.backlog(shards) == 0
    info = await api.app.stores.redis.xinfo_groups(shards[0].outbox)
    assert info[0]["pending"] == 0


async def test_refused_entry_is_parked_and_the_rest_flows(
    make_api: ApiFactory, tenant: str, sql, rds
) -> None:
    api = await make_api([tenant], flusher="off")
    await api.stub.RecordActivity(ev(tenant, "u1", "login"))
    shard = api.app.shards()[0]
    # An entry the ledger cannot accept (points must be non-zero) and one that
    # is not even decodable.
    rds.xadd(
        shard.outbox,
        {
            "p": 0,
            "b": 0,
            "d": "\x1f".join(
                [
                    "1",
                    "award",
                    "e:bad:a",
                    "u1",
                    "bad",
                    "a",
                    "",
                    "",
                    "",
                    "",
                    "1",
                    "1700000000000",
                    "1700000000000",
                    "",
                    "x",
                ]
            ),
        },
    )
    rds.xadd(shard.outbox, {"garbage": "1"})
    await api.stub.RecordActivity(ev(tenant, "u2", "login"))
    assert await api.app.flusher.drain(30)
    assert ledger_count(sql, tenant) == 2
    assert rds.xlen(shard.dead_letters) == 2
    report = await reconcile(api.app)
    assert report.clean


def _entry(occurred_ms: str = "1700000000000", attributes: str = "") -> dict[str, str]:
    parts = ["1", "award", "e:odd:a:u1", "u1", "odd", "a", "login", "", "", "", "1",
             occurred_ms, "1700000000000", attributes, "x"]  # fmt: skip
    return {"p": "5", "b": "5", "d": "\x1f".join(parts)}


@pytest.mark.parametrize(
    "odd",
    [
        _entry(occurred_ms=str(10**17)),  # a year datetime cannot hold
        _entry(occurred_ms=str(10**20)),  # fromtimestamp: OSError, not an outage
        _entry(attributes="[1]"),  # attributes not a map
    ],
    ids=["year-3170843", "year-overflow", "attributes-list"],
)
async def test_entries_no_row_can_hold_are_parked_not_fatal(
    make_api: ApiFactory, tenant: str, sql, rds, odd: dict[str, str]
) -> None:
    api = await make_api([tenant], flusher="off", flush_backoff_max_ms=200)
    shard = api.app.shards()[0]
    rds.xadd(shard.outbox, odd)
    await api.stub.RecordActivity(ev(tenant, "u2", "login"))
    stop = asyncio.Event()
    runner = asyncio.create_task(api.app.flusher.run(stop))
    try:
        assert await api.app.flusher.drain(30)
        assert not runner.done()  # the flusher lives on
    finally:
        stop.set()
        await runner
    assert ledger_count(sql, tenant) == 1
    assert rds.xlen(shard.dead_letters) == 1
    assert (await reconcile(api.app)).clean


async def test_full_outbox_refuses_awards_without_side_effects(
    make_api: ApiFactory, tenant: str, rds
) -> None:
    api = await make_api([tenant], flusher="off", outbox_entries_max=3)
    for i in range(3):
        assert (await api.stub.RecordActivity(ev(tenant, "u1", "reply", event_id=f"r{i}"))).points
    before = tenant_keys(rds, tenant)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(ev(tenant, "u1", "reply", event_id="r3"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "outbox is full" in (err.value.details() or "")
    assert tenant_keys(rds, tenant) == before
    # Duplicates are still answered; once drained, the same event goes through.
    dup = await api.stub.RecordActivity(ev(tenant, "u1", "reply", event_id="r0"))
    assert dup.outcome == pb.DUPLICATE
    assert await api.app.flusher.drain(30)
    retry = await api.stub.RecordActivity(ev(tenant, "u1", "reply", event_id="r3"))
    assert (retry.outcome, retry.balance) == (pb.AWARDED, 12)


async def test_script_cache_flush_is_survived(api: Api, rds) -> None:
    assert (await api.stub.RecordActivity(ev(api.tenant, "u1", "file"))).outcome == pb.AWARDED
    rds.script_flush()
    results = await asyncio.gather(
        *(api.stub.RecordActivity(ev(api.tenant, f"u{i}", "file")) for i in range(20))
    )
    assert all(r.outcome == pb.AWARDED for r in results)


async def test_lost_consumer_group_is_recreated(api: Api, sql, rds) -> None:
    await api.stub.RecordActivity(ev(api.tenant, "u1", "file"))
    assert await api.app.flusher.drain(30)
    shard = api.app.shards()[0]
    rds.delete(shard.outbox)  # as after a Redis data loss
    await api.stub.RecordActivity(ev(api.tenant, "u2", "file"))
    assert await api.app.flusher.drain(30)
    assert ledger_count(sql, api.tenant) == 2
    assert rds.xinfo_groups(shard.outbox)[0]["name"] == OUTBOX_GROUP.encode()


async def test_reconcile_reports_a_tampered_balance(api: Api, rds, sql) -> None:
    await api.stub.RecordActivity(ev(api.tenant, "u1", "file"))
    await api.stub.RecordActivity(ev(api.tenant, "u2", "file"))
    shard = api.app.shards()[0]
    rds.hincrby(shard.balances, "u2|a", 7)
    report = await reconcile(api.app)
    assert not report.clean
    assert [(m.user_id, m.redis.available, m.ledger.available) for m in report.mismatches] == [
        ("u2", 17, 10)
    ]
    assert ledger_sum(sql, api.tenant) == 20


def test_outbox_entry_round_trip() -> None:
    op = CreditOp(
        tenant_id="t",
        user_id="u",
        role=Role.TARGET,
        event_id="1",
        fingerprint="f",
        points_per_unit=3,
        quantity=1,
        occurred_at_ms=5,
        recorded_at_ms=6,
        dedup_expires_at_s=7,
        facts=LedgerFacts(
            action="reply",
            counterpart_id="v",
            group_id="g",
            department_id="d",
            quantity=2,
            attributes={"x": "中"},
            reason="Reply",
        ),
    )
    fields = {b"p": b"3", b"b": b"9", b"d": award_data(op).encode()}
    row = decode_entry("t", fields)
    assert (row.entry_key, row.points, row.balance_after, row.action) == ("e:1:t:u", 3, 9, "reply")
    assert (row.role, row.counterpart_id, row.quantity, row.reason) == ("t", "v", 2, "Reply")
    assert (row.occurred_at_ms, row.recorded_at_ms) == (5, 6)
    assert row.attributes == {"x": "中"}
    # Compact JSON, UTF-8 as is: the form every row written so far has.
    assert '\x1f{"x":"中"}\x1f' in award_data(op)


async def test_consumers_of_dead_processes_are_forgotten(
    make_api: ApiFactory, tenant: str, rds
) -> None:
    """Every process joins the group under a new name; the idle ones that own
    nothing are dropped, the live one and any owning entries are kept."""
    from pointsd.storage.redis.outbox import Outbox

    api = await make_api([tenant], flusher="off")
    shard = api.app.shards()[0]
    outbox = api.app.stores.outbox
    await outbox.ensure_groups([shard])
    await api.stub.RecordActivity(ev(api.tenant, "u1", "login"))
    holder = Outbox(api.app.stores.redis, consumer="dead-holder")
    held = await holder.read([shard], 10)
    assert held
    rds.xgroup_createconsumer(shard.outbox, OUTBOX_GROUP, "dead-idle")
    await asyncio.sleep(0.05)
    assert await outbox.forget_stale_consumers([shard], idle_ms=10) == 1
    names = {c["name"] for c in rds.xinfo_consumers(shard.outbox, OUTBOX_GROUP)}
    assert b"dead-idle" not in names and b"dead-holder" in names
    assert await api.app.flusher.drain(30, [shard])


def test_migration_0005_keeps_rows_and_admits_zero_point_milestones(servers) -> None:
    """Data written at revision 0004 stays through the upgrade; afterwards a
    zero-point row is accepted for a bonus (a milestone), still refused for
    an award; the downgrade keeps the milestone rows."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from pointsd.storage.postgres import migrate, sqlalchemy_url

    name = f"pointsd_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(sqlalchemy_url(servers.database_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(sqlalchemy_url(servers.database_url)).set(database=name)
    scratch = url.render_as_string(hide_password=False).replace("+psycopg", "")
    row = (
        "INSERT INTO ledger_entries (tenant_id, entry_key, user_id, points, balance_after, kind, "
        "occurred_at, recorded_at) VALUES ('t', :k, 'u', :p, 0, :kind, now(), now())"
    )
    engine = create_engine(url)
    try:
        migrate.upgrade(scratch, "0004")
        with engine.begin() as conn:
            conn.execute(text(row), {"k": "e:1:a:u", "p": 5, "kind": "award"})
        migrate.upgrade(scratch, "0005")
        assert migrate.current_revision(scratch) == "0005"
        with engine.begin() as conn:
            conn.execute(text(row), {"k": "e:1:a:u:level-2", "p": 0, "kind": "bonus"})
            kept = conn.execute(text("SELECT entry_key, points FROM ledger_entries ORDER BY id"))
            assert [tuple(r) for r in kept] == [("e:1:a:u", 5), ("e:1:a:u:level-2", 0)]
        with pytest.raises(Exception, match="points_nonzero"), engine.begin() as conn:
            conn.execute(text(row), {"k": "e:2:a:u", "p": 0, "kind": "award"})
        migrate.downgrade(scratch, "0004")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM ledger_entries")).scalar_one() == 2
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


async def test_corrections_are_new_rows_and_earlier_rows_never_change(api: Api, sql) -> None:
    """G8: refunds, spends and adjustments add rows; no row already written
    is ever updated or deleted."""
    from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc

    admin = pb_grpc.AdminServiceStub(api.channel)
    t = api.tenant

    async def rows() -> list[tuple]:
        assert await api.app.flusher.drain(30)
        return [
            tuple(r)
            for r in sql(
                "SELECT id, entry_key, user_id, points, balance_after, kind, reason, "
                "occurred_at, recorded_at FROM ledger_entries WHERE tenant_id = :t ORDER BY id",
                t=t,
            )
        ]

    seen: list[tuple] = []
    steps = [
        lambda: api.stub.RecordActivity(ev(t, "ann", "file")),
        lambda: admin.AdjustPoints(
            pb.AdjustPointsRequest(tenant_id=t, user_id="ann", points=50, reason="gift",
                                   idempotency_key="g1")
        ),
        lambda: admin.CreateItem(
            pb.CreateItemRequest(item=pb.Item(tenant_id=t, item_id="mug", name="Mug",
                                              kind=pb.PHYSICAL, cost=20, enabled=True))
        ),
        lambda: api.stub.Redeem(
            pb.RedeemRequest(tenant_id=t, user_id="ann", item_id="mug", request_id="r1")
        ),
    ]  # fmt: skip
    for step in steps:
        await step()
        now = await rows()
        assert now[: len(seen)] == seen
        seen = now
    redemption = (
        await api.stub.ListRedemptions(pb.ListRedemptionsRequest(tenant_id=t, user_id="ann"))
    ).redemptions[0]
    await admin.RefundRedemption(
        pb.RefundRedemptionRequest(tenant_id=t, redemption_id=redemption.redemption_id, reason="x")
    )
    final = await rows()
    assert final[: len(seen)] == seen
    assert [r[5] for r in final] == ["award", "adjust", "spend", "refund"]


async def test_migration_0006_keeps_items_gives_them_no_level_and_admits_streak_freezes(
    servers,
) -> None:
    """Catalog items written at revision 0005 stay through the upgrade and
    read as open to anyone (min_level ''); afterwards an item of the kind
    'streak_freeze' is accepted; the downgrade keeps every row, and new rows
    meet the old kinds again."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from pointsd.storage.postgres import create_engine as create_async_engine
    from pointsd.storage.postgres import migrate, sqlalchemy_url
    from pointsd.storage.postgres.catalog import CatalogStore

    name = f"pointsd_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(sqlalchemy_url(servers.database_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(sqlalchemy_url(servers.database_url)).set(database=name)
    scratch = url.render_as_string(hide_password=False).replace("+psycopg", "")
    item = (
        "INSERT INTO catalog_items (tenant_id, item_id, name, kind, cost) "
        "VALUES ('t', :i, :i, :kind, 10)"
    )
    engine = create_engine(url)
    async_engine = create_async_engine(scratch)
    try:
        await asyncio.to_thread(migrate.upgrade, scratch, "0005")
        with engine.begin() as conn:
            conn.execute(text(item), {"i": "mug", "kind": "physical"})
        with pytest.raises(Exception, match="ck_catalog_items_kind"), engine.begin() as conn:
            conn.execute(text(item), {"i": "freeze", "kind": "streak_freeze"})
        await asyncio.to_thread(migrate.upgrade, scratch, "0006")
        assert migrate.current_revision(scratch) == "0006"
        # The store reads the old item, open to anyone, and can still change it.
        catalog = CatalogStore(async_engine)
        mug = await catalog.get_item("t", "mug")
        assert mug is not None and (mug.kind, mug.cost, mug.min_level) == ("physical", 10, "")
        updated = await catalog.update_item(dataclasses.replace(mug, cost=12, min_level="star"))
        assert (updated.cost, updated.min_level) == (12, "star")
        with engine.begin() as conn:
            conn.execute(text(item), {"i": "freeze", "kind": "streak_freeze"})
        assert [i.item_id for i in await catalog.list_items("t", include_disabled=True)] == [
            "freeze", "mug",
        ]  # fmt: skip
        await async_engine.dispose()
        await asyncio.to_thread(migrate.downgrade, scratch, "0005")
        with engine.begin() as conn:
            kept = conn.execute(text("SELECT item_id, kind FROM catalog_items ORDER BY item_id"))
            assert [tuple(r) for r in kept] == [("freeze", "streak_freeze"), ("mug", "physical")]
        with pytest.raises(Exception, match="ck_catalog_items_kind"), engine.begin() as conn:
            conn.execute(text(item), {"i": "freeze-2", "kind": "streak_freeze"})
    finally:
        await async_engine.dispose()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
