"""Redemption through the gRPC API on real Redis and PostgreSQL (G4): never a
negative balance, never oversold, never past a limit, idempotent, refunds
once, adjustments, and a catalog with clear errors (G6)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.ops import rebuild, reconcile
from scripts.tokens import aio_channel
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory, LoseRedisData, new_tenant
from tests.helpers import ev

TZ = ZoneInfo("Asia/Shanghai")


def admin(api: Api) -> pb_grpc.AdminServiceStub:
    return pb_grpc.AdminServiceStub(api.channel)


async def grant(api: Api, user: str, points: int) -> pb.AdjustPointsResponse:
    return await admin(api).AdjustPoints(
        pb.AdjustPointsRequest(
            tenant_id=api.tenant,
            user_id=user,
            points=points,
            reason="seed",
            idempotency_key=uuid.uuid4().hex,
        )
    )


async def create_item(
    api: Api, item_id: str, cost: int, stock: int | None = None, **extra: Any
) -> pb.Item:
    item = pb.Item(
        tenant_id=api.tenant,
        item_id=item_id,
        name=f"Reward {item_id}",
        kind=pb.PHYSICAL,
        cost=cost,
        enabled=True,
        **extra,
    )
    if stock is not None:
        item.stock = stock
    return await admin(api).CreateItem(pb.CreateItemRequest(item=item))


async def redeem(
    api: Api,
    user: str,
    item: str,
    request_id: str | None = None,
    quantity: int = 1,
    stub: Any = None,
) -> pb.RedeemResponse:
    return await (stub or api.stub).Redeem(
        pb.RedeemRequest(
            tenant_id=api.tenant,
            user_id=user,
            item_id=item,
            quantity=quantity,
            request_id=request_id or uuid.uuid4().hex,
        )
    )


async def balance(api: Api, user: str) -> pb.Balance:
    return await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id=user))


async def stock_of(api: Api, item: str) -> int | None:
    items = await admin(api).ListItems(
        pb.ListItemsRequest(tenant_id=api.tenant, include_disabled=True)
    )
    found = next(i for i in items.items if i.item_id == item)
    return found.stock if found.HasField("stock") else None


async def failure(coro: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded")


async def test_catalog_is_managed_with_clear_errors(api: Api) -> None:
    item = await create_item(api, "coffee", 30, 5, description="A coffee voucher")
    assert (item.cost, item.stock, item.enabled, item.kind) == (30, 5, True, pb.PHYSICAL)
    code, msg = await failure(create_item(api, "coffee", 30, 5))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "coffee" in msg
    item.stock = 50
    item.name = "Big coffee"
    updated = await admin(api).UpdateItem(pb.UpdateItemRequest(item=item))
    assert (updated.stock, updated.name) == (50, "Big coffee")
    disabled = await admin(api).DisableItem(
        pb.DisableItemRequest(tenant_id=api.tenant, item_id="coffee")
    )
    assert not disabled.enabled
    listed = await admin(api).ListItems(pb.ListItemsRequest(tenant_id=api.tenant))
    assert list(listed.items) == []
    bad: list[tuple[dict[str, Any], str]] = [
        ({"cost": 0}, "item.cost"),
        ({"kind": pb.ITEM_KIND_UNSPECIFIED}, "item.kind"),
        ({"per_user_limit": 1}, "item.limit_period"),
        ({"limit_period": pb.MONTH}, "item.limit_period"),
        ({"item_id": "a{b"}, "item.item_id"),
        ({"tenant_id": "nope"}, "item.tenant_id"),
        ({"name": ""}, "item.name"),
        ({"stock": 2**63 - 1}, "item.stock"),  # a refund could overflow it
        ({"item_id": "a\x85b"}, "item.item_id"),  # C1 control character
    ]
    for change, field in bad:
        msg_item = pb.Item(tenant_id=api.tenant, item_id="x", name="X", kind=pb.VIRTUAL, cost=5)
        for key, value in change.items():
            setattr(msg_item, key, value)
        code, msg = await failure(admin(api).CreateItem(pb.CreateItemRequest(item=msg_item)))
        assert (code, msg.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, field), change
    late = pb.Item(tenant_id=api.tenant, item_id="x", name="X", kind=pb.VIRTUAL, cost=5)
    late.starts_at.FromDatetime(datetime(2026, 2, 1))
    late.ends_at.FromDatetime(datetime(2026, 1, 1))
    code, msg = await failure(admin(api).CreateItem(pb.CreateItemRequest(item=late)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("item.ends_at")
    for field, seconds, nanos in [
        ("starts_at", 253_402_300_800, 0),  # year 10000
        ("ends_at", -62_135_596_801, 0),
        ("starts_at", 10, -1),
        ("ends_at", 10, 1_000_000_000),
    ]:
        odd = pb.Item(tenant_id=api.tenant, item_id="x", name="X", kind=pb.VIRTUAL, cost=5)
        getattr(odd, field).seconds = seconds
        getattr(odd, field).nanos = nanos
        code, msg = await failure(admin(api).CreateItem(pb.CreateItemRequest(item=odd)))
        assert (code, msg.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, f"item.{field}")
    stale = pb.Item()
    stale.CopyFrom(updated)
    stale.updated_at.nanos = -1
    code, msg = await failure(admin(api).UpdateItem(pb.UpdateItemRequest(item=stale)))
    assert (code, msg.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "item.updated_at")
    ghost = pb.Item(tenant_id=api.tenant, item_id="ghost", name="G", kind=pb.VIRTUAL, cost=5)
    code, _ = await failure(admin(api).UpdateItem(pb.UpdateItemRequest(item=ghost)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_rewards_list_what_is_redeemable_now(api: Api, clock: TestClock) -> None:
    await create_item(api, "frame", 20)  # unlimited stock
    await create_item(api, "parking", 100, 3, per_user_limit=1, limit_period=pb.MONTH)
    await create_item(api, "gone", 10, 0)
    soon = pb.Item(
        tenant_id=api.tenant, item_id="soon", name="Soon", kind=pb.BENEFIT, cost=5, enabled=True
    )
    soon.starts_at.FromDatetime(clock.datetime(UTC) + timedelta(days=3))
    await admin(api).CreateItem(pb.CreateItemRequest(item=soon))
    await grant(api, "ann", 500)
    await redeem(api, "ann", "parking")
    listed = await api.stub.ListRewards(pb.ListRewardsRequest(tenant_id=api.tenant, user_id="ann"))
    by_id = {r.item.item_id: r for r in listed.rewards}
    assert set(by_id) == {"frame", "parking"}
    assert by_id["parking"].item.stock == 2 and by_id["parking"].user_remaining == 0
    assert not by_id["frame"].HasField("user_remaining")
    anonymous = await api.stub.ListRewards(pb.ListRewardsRequest(tenant_id=api.tenant))
    assert not anonymous.rewards[0].HasField("user_remaining")


async def test_redeem_spends_points_records_it_and_reaches_the_ledger(api: Api, sql) -> None:
    await create_item(api, "mug", 30, 10)
    await grant(api, "ann", 100)
    done = await redeem(api, "ann", "mug", request_id="req-1", quantity=2)
    assert (done.status, done.points_spent, done.balance) == (pb.COMPLETED, 60, 40)
    assert done.item.stock == 8 and done.redemption.request_id == "req-1"
    b = await balance(api, "ann")
    assert (b.available, b.lifetime_earned, b.spent) == (40, 100, 60)
    assert await api.app.flusher.drain(30)
    rows = sql(
        "SELECT entry_key, kind, points, balance_after, event_id FROM ledger_entries "
        "WHERE tenant_id = :t AND user_id = 'ann' ORDER BY id",
        t=api.tenant,
    )
    assert [(k.split(":")[0], kind, p, bal) for k, kind, p, bal, _ in rows] == [
        ("adj", "adjust", 100, 100),
        ("r", "spend", -60, 40),
    ]
    assert rows[1][4] == done.redemption_id
    history = await api.stub.ListLedger(pb.ListLedgerRequest(tenant_id=api.tenant, user_id="ann"))
    assert [e.kind for e in history.entries] == [pb.SPEND, pb.ADJUSTMENT]
    mine = await api.stub.ListRedemptions(
        pb.ListRedemptionsRequest(tenant_id=api.tenant, user_id="ann")
    )
    assert [(r.redemption_id, r.status, r.points) for r in mine.redemptions] == [
        (done.redemption_id, pb.COMPLETED, 60)
    ]
    assert (await reconcile(api.app)).clean


@pytest.mark.slow
async def test_500_concurrent_redemptions_of_stock_10(api: Api, sql) -> None:
    await create_item(api, "ticket", 30, 10)
    await asyncio.gather(*(grant(api, f"u{i}", 100) for i in range(500)))
    channels = [aio_channel(api.target, api.token) for _ in range(8)]
    stubs = [pb_grpc.PointsServiceStub(c) for c in channels]

    async def attempt(i: int) -> str:
        try:
            await redeem(api, f"u{i}", "ticket", stub=stubs[i % 8])
            return "ok"
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            assert "out of stock" in (exc.details() or "")
            return "out"

    try:
        outcomes = Counter(await asyncio.gather(*(attempt(i) for i in range(500))))
    finally:
        for c in channels:
            await c.close()
    assert outcomes == {"ok": 10, "out": 490}
    assert await stock_of(api, "ticket") == 0
    assert await api.app.flusher.drain(30)
    spends = sql(
        "SELECT COUNT(*), SUM(points) FROM ledger_entries WHERE tenant_id = :t AND kind = 'spend'",
        t=api.tenant,
    )[0]
    assert tuple(spends) == (10, -300)


async def test_one_user_20_concurrent_redemptions_never_go_negative(api: Api) -> None:
    await create_item(api, "pen", 30, 50)
    await grant(api, "solo", 100)
    results = await asyncio.gather(
        *(redeem(api, "solo", "pen") for _ in range(20)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, pb.RedeemResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 3 and len(refused) == 17
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in refused)
    assert all("insufficient points" in (e.details() or "") for e in refused)
    assert sorted(r.balance for r in ok) == [10, 40, 70]
    assert (await balance(api, "solo")).available == 10
    assert await stock_of(api, "pen") == 47  # the failed attempts gave their stock back


async def test_same_request_id_50_times_spends_once(api: Api, sql) -> None:
    await create_item(api, "cap", 25, 5)
    await grant(api, "ann", 100)
    replies = await asyncio.gather(
        *(redeem(api, "ann", "cap", request_id="once") for _ in range(50))
    )
    assert len({r.SerializeToString(deterministic=True) for r in replies}) == 1
    assert replies[0].status == pb.COMPLETED and replies[0].balance == 75
    assert (await balance(api, "ann")).available == 75
    assert await stock_of(api, "cap") == 4
    assert await api.app.flusher.drain(30)
    assert (
        sql(
            "SELECT COUNT(*) FROM ledger_entries WHERE tenant_id = :t AND kind = 'spend'",
            t=api.tenant,
        )[0][0]
        == 1
    )
    assert sql("SELECT COUNT(*) FROM redemptions WHERE tenant_id = :t", t=api.tenant)[0][0] == 1
    code, msg = await failure(redeem(api, "ann", "cap", request_id="once", quantity=2))
    assert code == grpc.StatusCode.ALREADY_EXISTS and msg.startswith("request_id")


@pytest.mark.calendar
async def test_per_user_monthly_limit_follows_the_tenant_time_zone(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    """Shanghai's month starts at 16:00 UTC on the last day of the previous one."""
    api = await make_api({tenant: {"timezone": "Asia/Shanghai"}})
    await create_item(api, "parking", 10, per_user_limit=1, limit_period=pb.MONTH)
    await grant(api, "ann", 100)
    first_of_month = clock.datetime(TZ).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    boundary = int(first_of_month.timestamp() * 1000)
    clock.set(boundary - 1_800_000)
    assert (await redeem(api, "ann", "parking")).status == pb.COMPLETED
    code, msg = await failure(redeem(api, "ann", "parking"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "limit reached" in msg
    clock.set(boundary + 1_800_000)
    assert (await redeem(api, "ann", "parking")).status == pb.COMPLETED
    code, msg = await failure(redeem(api, "ann", "parking"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "per month" in msg
    # Both instants fall in the same UTC month: a UTC month would refuse the second.
    assert (first_of_month - timedelta(minutes=30)).astimezone(ZoneInfo("UTC")).month == (
        first_of_month + timedelta(minutes=30)
    ).astimezone(ZoneInfo("UTC")).month


async def test_refund_twice_gives_back_points_and_stock_once(api: Api, sql) -> None:
    await create_item(api, "lamp", 40, 2)
    await grant(api, "ann", 100)
    done = await redeem(api, "ann", "lamp")
    request = pb.RefundRedemptionRequest(
        tenant_id=api.tenant, redemption_id=done.redemption_id, reason="broken on arrival"
    )
    first, second = await asyncio.gather(
        admin(api).RefundRedemption(request), admin(api).RefundRedemption(request)
    )
    assert first.status == second.status == pb.REFUNDED
    third = await admin(api).RefundRedemption(request)
    assert third.status == pb.REFUNDED and third.refund_reason == "broken on arrival"
    b = await balance(api, "ann")
    assert (b.available, b.spent) == (100, 0)
    assert await stock_of(api, "lamp") == 2
    assert await api.app.flusher.drain(30)
    kinds = sql(
        "SELECT kind, points FROM ledger_entries WHERE tenant_id = :t ORDER BY id", t=api.tenant
    )
    assert [tuple(r) for r in kinds] == [("adjust", 100), ("spend", -40), ("refund", 40)]
    code, _ = await failure(
        admin(api).RefundRedemption(
            pb.RefundRedemptionRequest(tenant_id=api.tenant, redemption_id="nope")
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    await grant(api, "bob", 10)
    code, msg = await failure(redeem(api, "bob", "lamp"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    failed = (
        await admin(api).ListRedemptions(
            pb.AdminListRedemptionsRequest(tenant_id=api.tenant, user_id="bob")
        )
    ).redemptions[0]
    assert failed.status == pb.FAILED and "insufficient" in failed.reason
    code, msg = await failure(
        admin(api).RefundRedemption(
            pb.RefundRedemptionRequest(tenant_id=api.tenant, redemption_id=failed.redemption_id)
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "only completed" in msg


async def test_adjustments_are_idempotent_and_never_go_below_zero(
    api: Api, lose_redis_data: LoseRedisData
) -> None:
    def adjust(points: int, key: str, reason: str = "bonus") -> Any:
        return admin(api).AdjustPoints(
            pb.AdjustPointsRequest(
                tenant_id=api.tenant,
                user_id="ann",
                points=points,
                reason=reason,
                idempotency_key=key,
            )
        )

    first = await adjust(50, "k1")
    again = await adjust(50, "k1")
    assert (first.balance, first.duplicate, again.balance, again.duplicate) == (50, False, 50, True)
    assert (await adjust(-20, "k2", "correction")).balance == 30
    code, msg = await failure(adjust(-31, "k3", "too much"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "below zero" in msg
    code, _ = await failure(adjust(60, "k1"))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    for points, reason, field in [
        (0, "x", "points"),
        (5, " ", "reason"),
        (2_000_000, "x", "points"),
    ]:
        code, msg = await failure(adjust(points, "k9", reason))
        assert (code, msg.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    b = await balance(api, "ann")
    assert (b.available, b.lifetime_earned, b.spent) == (30, 30, 0)
    # After Redis data loss, a rebuild keeps adjustments idempotent.
    assert await api.app.flusher.drain(30)
    lose_redis_data(api.tenant)
    await rebuild(api.app)
    replay = await adjust(50, "k1")
    assert (replay.duplicate, replay.balance) == (True, 50)
    assert (await balance(api, "ann")).available == 30


async def test_redeem_refuses_what_cannot_be_done(api: Api, clock: TestClock) -> None:
    await grant(api, "ann", 1000)
    await create_item(api, "cup", 10, 5)
    off = await create_item(api, "off", 10)
    await admin(api).DisableItem(pb.DisableItemRequest(tenant_id=api.tenant, item_id="off"))
    assert off.enabled
    later = pb.Item(
        tenant_id=api.tenant, item_id="later", name="L", kind=pb.DONATION, cost=5, enabled=True
    )
    start = Timestamp()
    start.FromDatetime(clock.datetime(UTC) + timedelta(days=1))
    later.starts_at.CopyFrom(start)
    await admin(api).CreateItem(pb.CreateItemRequest(item=later))
    cases = [
        (redeem(api, "ann", "none"), grpc.StatusCode.NOT_FOUND, "item_id"),
        (redeem(api, "ann", "off"), grpc.StatusCode.FAILED_PRECONDITION, "disabled"),
        (redeem(api, "ann", "later"), grpc.StatusCode.FAILED_PRECONDITION, "can be redeemed from"),
        (
            redeem(api, "ann", "cup", quantity=6),
            grpc.StatusCode.FAILED_PRECONDITION,
            "out of stock: 5 left",
        ),
        (redeem(api, "ann", "cup", quantity=101), grpc.StatusCode.INVALID_ARGUMENT, "quantity"),
        (
            redeem(api, "ann", "cup", request_id="a}b"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request_id",
        ),
        (redeem(api, "", "cup"), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
    ]
    for call, code, text in cases:
        got_code, msg = await failure(call)
        assert got_code == code and text in msg, (code, msg)
    assert (await balance(api, "ann")).available == 1000
    assert await stock_of(api, "cup") == 5


async def test_control_characters_in_free_text_are_refused_before_anything_is_stored(
    api: Api, rds
) -> None:
    code, msg = await failure(
        admin(api).AdjustPoints(
            pb.AdjustPointsRequest(
                tenant_id=api.tenant,
                user_id="bob",
                points=100,
                reason="bad\x00reason",
                idempotency_key="k",
            )
        )
    )
    assert (code, msg.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "reason")
    assert (await balance(api, "bob")).available == 0
    for field, value in [("name", "Mug\x00"), ("description", "ok\nbut\x00not")]:
        item = pb.Item(tenant_id=api.tenant, item_id="mug", name="Mug", kind=pb.PHYSICAL, cost=5)
        setattr(item, field, value)
        code, msg = await failure(admin(api).CreateItem(pb.CreateItemRequest(item=item)))
        assert (code, msg.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, f"item.{field}")
    multiline = pb.Item(
        tenant_id=api.tenant,
        item_id="mug",
        name="Mug",
        kind=pb.PHYSICAL,
        cost=5,
        description="two\nlines\tand a tab",
        enabled=True,
    )
    await admin(api).CreateItem(pb.CreateItemRequest(item=multiline))
    await grant(api, "bob", 10)
    done = await redeem(api, "bob", "mug")
    code, msg = await failure(
        admin(api).RefundRedemption(
            pb.RefundRedemptionRequest(
                tenant_id=api.tenant, redemption_id=done.redemption_id, reason="oops\x07"
            )
        )
    )
    assert (code, msg.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "reason")
    assert (await balance(api, "bob")).available == 5


async def test_update_from_a_stale_read_is_refused(api: Api) -> None:
    """An absolute stock written from a stale read would undo redemptions."""
    read = await create_item(api, "seat", 10, 1)
    await grant(api, "ann", 10)
    await redeem(api, "ann", "seat")  # stock 1 -> 0, and updated_at moves
    stale = pb.Item()
    stale.CopyFrom(read)
    stale.name = "Seat (renamed)"
    code, msg = await failure(admin(api).UpdateItem(pb.UpdateItemRequest(item=stale)))
    assert code == grpc.StatusCode.ABORTED and msg.startswith("item.updated_at")
    assert await stock_of(api, "seat") == 0
    fresh = next(
        i
        for i in (await admin(api).ListItems(pb.ListItemsRequest(tenant_id=api.tenant))).items
        if i.item_id == "seat"
    )
    fresh.name = "Seat (renamed)"
    updated = await admin(api).UpdateItem(pb.UpdateItemRequest(item=fresh))
    assert (updated.name, updated.stock) == ("Seat (renamed)", 0)


async def test_recovery_finishes_abandoned_redemptions_and_skips_unknown_tenants(
    api: Api, sql, clock: TestClock
) -> None:
    """A process that died after step 1 of the saga left `pending` records;
    the sweep finishes them, and older records of a tenant this deployment
    does not serve (shared database), more than a sweep's page, do not
    starve them."""
    from sqlalchemy import create_engine, text

    from pointsd.storage.postgres import sqlalchemy_url

    await create_item(api, "book", 20, 3)
    await grant(api, "ann", 30)
    catalog = api.app.stores.catalog
    now = clock.datetime(UTC)
    limit_key = api.app.redemptions._limit_key(api.tenant)
    mine, _ = await catalog.begin_redemption(
        api.tenant, "crash-1", "ann", "book", 1, now, limit_key
    )
    poor, _ = await catalog.begin_redemption(
        api.tenant, "crash-2", "ann", "book", 1, now, limit_key
    )
    engine = create_engine(sqlalchemy_url(api.app.database_url))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO redemptions (redemption_id, tenant_id, request_id, user_id, item_id, "
                "item_name, quantity, points, status, updated_at) SELECT md5(random()::text), "
                "'not-served-here', 'r' || g, 'u', 'i', 'I', 1, 5, 'pending', "
                "now() - interval '2 hours' FROM generate_series(1, 600) g"
            )
        )
        conn.execute(
            text(
                "UPDATE redemptions SET updated_at = now() - interval '1 hour' "
                "WHERE status = 'pending' AND tenant_id = :t"
            ),
            {"t": api.tenant},
        )
    try:
        assert await api.app.redemptions.recover() == 2
        states = dict(
            sql("SELECT request_id, status FROM redemptions WHERE tenant_id = :t", t=api.tenant)
        )
        # 30 points pay for one book of 20: one completes, the other fails.
        assert sorted(states) == ["crash-1", "crash-2"]
        assert sorted(states.values()) == ["completed", "failed"]
        assert (await balance(api, "ann")).available == 10
        assert await stock_of(api, "book") == 2
        assert mine.status == poor.status == "pending"
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM redemptions WHERE tenant_id = 'not-served-here'"))
        engine.dispose()


async def test_adjustment_keys_of_different_users_never_collide(
    make_api: ApiFactory, tenant: str, sql
) -> None:
    """Ids may hold ':'; ("a", "b:c") and ("a:b", "c") are different
    adjustments, on one shard or several, and both reach the ledger."""
    for shards in (1, 4):
        api = await make_api({f"{tenant}-{shards}": {"shards": shards}})
        for user, key, points in (("a", "b:c", 10), ("a:b", "c", 20), ("a%3Ab", "c", 30)):
            done = await admin(api).AdjustPoints(
                pb.AdjustPointsRequest(
                    tenant_id=api.tenant, user_id=user, points=points, reason="r",
                    idempotency_key=key,
                )
            )  # fmt: skip
            assert (done.duplicate, done.balance) == (False, points)
        assert await api.app.flusher.drain(30)
        rows = sql(
            "SELECT user_id, points FROM ledger_entries WHERE tenant_id = :t ORDER BY points",
            t=api.tenant,
        )
        assert [tuple(r) for r in rows] == [("a", 10), ("a:b", 20), ("a%3Ab", 30)]
        assert (await reconcile(api.app)).clean


async def test_a_refused_deduction_can_be_retried_once_the_points_are_there(api: Api) -> None:
    def fine() -> Any:
        return admin(api).AdjustPoints(
            pb.AdjustPointsRequest(
                tenant_id=api.tenant, user_id="ann", points=-10, reason="fine",
                idempotency_key="fine-1",
            )
        )  # fmt: skip

    code, msg = await failure(fine())
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "(has 0)" in msg
    await grant(api, "ann", 100)
    done = await fine()
    assert (done.duplicate, done.balance) == (False, 90)
    assert ((await fine()).duplicate, (await balance(api, "ann")).available) == (True, 90)


async def test_a_redemption_gives_back_only_the_stock_it_took(api: Api, clock: TestClock) -> None:
    """Made while the item was unlimited, then the admin starts counting
    stock: neither a refund nor a failed replay adds stock never taken."""
    await create_item(api, "mug", 10)
    await grant(api, "ann", 10)
    done = await redeem(api, "ann", "mug")
    crashed, _ = await api.app.stores.catalog.begin_redemption(
        api.tenant, "crash", "bob", "mug", 3, clock.datetime(UTC),
        api.app.redemptions._limit_key(api.tenant),
    )  # fmt: skip
    assert crashed.stock_taken == 0
    fresh = next(
        i
        for i in (await admin(api).ListItems(pb.ListItemsRequest(tenant_id=api.tenant))).items
        if i.item_id == "mug"
    )
    fresh.stock = 5
    await admin(api).UpdateItem(pb.UpdateItemRequest(item=fresh))
    await admin(api).RefundRedemption(
        pb.RefundRedemptionRequest(
            tenant_id=api.tenant, redemption_id=done.redemption_id, reason="broken"
        )
    )
    # Bob has no points: the replay fails the pending record.
    code, _ = await failure(redeem(api, "bob", "mug", quantity=3, request_id="crash"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert await stock_of(api, "mug") == 5
    # Stock that was taken comes back, exactly.
    await grant(api, "cy", 20)
    taken = await redeem(api, "cy", "mug", quantity=2)
    assert await stock_of(api, "mug") == 3
    await admin(api).RefundRedemption(
        pb.RefundRedemptionRequest(
            tenant_id=api.tenant, redemption_id=taken.redemption_id, reason="x"
        )
    )
    assert await stock_of(api, "mug") == 5


async def test_a_redemption_cut_short_by_a_rebuild_completes_once_on_retry(api: Api, sql) -> None:
    """UNAVAILABLE mid-saga leaves the record pending (stock held, nothing
    spent); the message says to retry the same request id, which finishes it."""
    await create_item(api, "pen", 10, 2)
    await grant(api, "ann", 25)
    shard = api.app.shards()[0]
    await api.app.stores.balances.set_maintenance(shard, True)
    try:
        code, msg = await failure(redeem(api, "ann", "pen", request_id="req-1"))
    finally:
        await api.app.stores.balances.set_maintenance(shard, False)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "pending" in msg and "same request_id" in msg
    assert (await balance(api, "ann")).available == 25
    assert await stock_of(api, "pen") == 1
    done = await redeem(api, "ann", "pen", request_id="req-1")
    again = await redeem(api, "ann", "pen", request_id="req-1")
    assert done == again and done.points_spent == 10 and done.balance == 15
    assert await stock_of(api, "pen") == 1
    assert await api.app.flusher.drain(30)
    assert sql(
        "SELECT count(*) FROM ledger_entries WHERE tenant_id = :t AND points < 0", t=api.tenant
    ) == [(1,)]


async def test_malformed_page_tokens_are_invalid_argument_everywhere(api: Api) -> None:
    import base64

    nested = base64.urlsafe_b64encode(b"[" * 100_000).decode()
    calls = [
        api.stub.ListLedger(
            pb.ListLedgerRequest(tenant_id=api.tenant, user_id="u", page_token=nested)
        ),
        api.stub.ListRedemptions(
            pb.ListRedemptionsRequest(tenant_id=api.tenant, user_id="u", page_token=nested)
        ),
        admin(api).ListRedemptions(
            pb.AdminListRedemptionsRequest(tenant_id=api.tenant, page_token=nested)
        ),
        api.stub.ListWinners(
            pb.ListWinnersRequest(
                tenant_id=api.tenant, board="points", period=pb.WEEK, page_token=nested
            )
        ),
    ]
    for call in calls:
        code, msg = await failure(call)
        assert (code, msg.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "page_token")


async def test_a_tenant_cannot_reach_another_tenants_state(make_api: ApiFactory) -> None:
    """Guarantee G6, cross-tenant: ids of one tenant mean nothing in another;
    asking with them is NOT_FOUND (or empty) and changes nothing."""
    mine, other = new_tenant(), new_tenant()
    api = await make_api([mine, other])
    home = Api(api.app, api.running, api.channel, api.stub, mine, api.tenants)
    away = Api(api.app, api.running, api.channel, api.stub, other, api.tenants)
    await create_item(home, "mug", 10, 3)
    await grant(home, "ann", 25)
    done = await redeem(home, "ann", "mug", request_id="r1")
    # The same event id and idempotency key are separate per tenant.
    for t in (mine, other):
        r = await api.stub.RecordActivity(ev(t, "ann", "login", event_id="same"))
        assert r.outcome == pb.AWARDED
    code, _ = await failure(
        admin(away).RefundRedemption(
            pb.RefundRedemptionRequest(tenant_id=other, redemption_id=done.redemption_id)
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, msg = await failure(redeem(away, "ann", "mug", request_id="r1"))
    assert code == grpc.StatusCode.NOT_FOUND and msg.startswith("item_id")
    listed = await api.stub.ListRedemptions(
        pb.ListRedemptionsRequest(tenant_id=other, user_id="ann")
    )
    assert list(listed.redemptions) == []
    assert (await balance(away, "ann")).available == 5  # its own login only
    assert (await balance(home, "ann")).available == 20
    assert await stock_of(home, "mug") == 2
    status = await api.stub.ListRedemptions(
        pb.ListRedemptionsRequest(tenant_id=mine, user_id="ann")
    )
    assert [r.status for r in status.redemptions] == [pb.COMPLETED]
