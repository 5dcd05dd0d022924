"""Streaks on the business calendar through the real gRPC API on real Redis
and PostgreSQL: weekends, a public holiday, a make-up Saturday, late events
filling a gap, freezes used up and given back, and a rebuild. Every date is
set on the test clock (the example calendar example-cn-2026, Asia/Shanghai)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import redis as sync_redis

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.clock import parse_instant
from pointsd.service.ops import rebuild, reconcile
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory, LoseRedisData
from tests.helpers import ev
from tests.test_progression import book

AGE_S = 30 * 86_400


def at(day: str) -> int:
    return parse_instant(f"{day}T09:30:00+08:00")


async def login(api: Api, user: str, day: str) -> pb.ActivityResult:
    return await api.stub.RecordActivity(
        ev(api.tenant, user, "login", at_ms=at(day), event_id=f"{user}-{day}")
    )


async def streak(api: Api, user: str) -> pb.StreakProgress:
    p = await api.stub.GetProgress(pb.GetProgressRequest(tenant_id=api.tenant, user_id=user))
    return p.streak


def streak_bonuses(r: pb.ActivityResult) -> list[tuple[str, str, int, str]]:
    return [
        (b.kind, b.id, b.points, b.period_key) for b in r.bonuses if b.kind in ("streak", "freeze")
    ]


async def start(make_api: ApiFactory, tenant: str, clock: TestClock, now: str) -> Api:
    clock.set(parse_instant(now))
    return await make_api(book=book(tenant), event_max_age_s=AGE_S)


async def test_a_weekend_neither_breaks_nor_extends_a_streak(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    api = await start(make_api, tenant, clock, "2026-12-09T18:00:00+08:00")
    days = ["2026-12-03", "2026-12-04", "2026-12-05", "2026-12-07", "2026-12-08", "2026-12-09"]
    got = {d: await login(api, "ann", d) for d in days}
    # Saturday 5 December pays the login but is not a streak day.
    assert all(r.outcome == pb.AWARDED for r in got.values())
    assert [d for d, r in got.items() if streak_bonuses(r)] == ["2026-12-09"]
    # The fifth working day in a row (Thu, Fri, Mon, Tue, Wed): the milestone,
    # once per run, named by the run's first day; it grants a freeze.
    assert streak_bonuses(got["2026-12-09"]) == [("streak", "5", 20, "2026-12-03")]
    bonus = next(b for b in got["2026-12-09"].bonuses if b.kind == "streak")
    assert bonus.reason == "Streak: 5 working days in a row (Login streak (连续登录))"
    s = await streak(api, "ann")
    assert (s.current, s.best, s.freezes_held, s.freezes_max) == (5, 5, 1, 2)
    assert (s.today_needed, s.today_working_day) == (False, True)
    assert (s.next_milestone_days, s.next_milestone_points) == (20, 100)


async def test_a_public_holiday_and_a_make_up_saturday(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    # National Day: 1-7 October are holidays; Saturday 10 October is worked.
    api = await start(make_api, tenant, clock, "2026-10-12T10:00:00+08:00")
    for d in ["2026-09-29", "2026-09-30", "2026-10-08", "2026-10-09"]:
        assert not streak_bonuses(await login(api, "ann", d))
    done = await login(api, "ann", "2026-10-10")
    assert streak_bonuses(done) == [("streak", "5", 20, "2026-09-29")]
    # Bob skips the make-up Saturday: his streak breaks on Monday 12 October
    # (he holds no freeze).
    for d in ["2026-09-29", "2026-09-30", "2026-10-08", "2026-10-09", "2026-10-12"]:
        await login(api, "bob", d)
    assert (await streak(api, "bob")).current == 1
    # At 10:00 on Monday Ann has not logged in yet: still 5, today needed.
    s = await streak(api, "ann")
    assert (s.current, s.today_needed) == (5, True)


async def test_a_late_event_fills_a_gap_and_arrival_order_does_not_matter(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    api = await start(make_api, tenant, clock, "2026-12-11T20:00:00+08:00")
    week = ["2026-12-07", "2026-12-08", "2026-12-09", "2026-12-10", "2026-12-11"]
    order = [week[0], week[1], week[3], week[4], week[2]]  # Wednesday arrives last
    got = [await login(api, "ann", d) for d in order]
    assert [streak_bonuses(r) for r in got] == [[], [], [], [], [("streak", "5", 20, "2026-12-07")]]
    back = [await login(api, "bob", d) for d in reversed(week)]
    assert [b for r in back for b in streak_bonuses(r)] == [("streak", "5", 20, "2026-12-07")]
    assert (await streak(api, "ann")).current == (await streak(api, "bob")).current == 5


async def test_a_freeze_covers_a_missed_day_and_comes_back_for_a_late_event(
    make_api: ApiFactory, tenant: str, clock: TestClock, sql: Any
) -> None:
    api = await start(make_api, tenant, clock, "2026-12-16T20:00:00+08:00")
    for d in ["2026-12-07", "2026-12-08", "2026-12-09", "2026-12-10", "2026-12-11"]:
        await login(api, "ann", d)  # 5 in a row: +1 freeze
    assert (await streak(api, "ann")).freezes_held == 1
    # Monday 14 is missed; Tuesday 15 uses the freeze up and keeps the run.
    used = await login(api, "ann", "2026-12-15")
    assert streak_bonuses(used) == [("freeze", "used", 0, "2026-12-14")]
    s = await streak(api, "ann")
    assert (s.current, s.freezes_held) == (7, 0)
    # The late event for Monday 14 marks the day: the freeze is given back.
    late = await login(api, "ann", "2026-12-14")
    assert streak_bonuses(late) == [("freeze", "returned", 0, "2026-12-14")]
    s = await streak(api, "ann")
    assert (s.current, s.freezes_held) == (7, 1)
    await api.app.flusher.drain(30)
    rows = sql(
        "SELECT entry_key, points FROM ledger_entries WHERE tenant_id = :t AND kind = 'bonus' "
        "AND entry_key LIKE 'b:ann:freeze%' ORDER BY id",
        t=api.tenant,
    )
    assert [r[1] for r in rows] == [0, 0]
    assert [r[0].split(":")[2].split(".")[0] for r in rows] == ["freeze", "freeze-back"]


async def test_with_no_freeze_a_missed_working_day_resets_it(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    api = await start(make_api, tenant, clock, "2026-12-10T20:00:00+08:00")
    for d in ["2026-12-07", "2026-12-08", "2026-12-10"]:
        await login(api, "ann", d)
    s = await streak(api, "ann")
    assert (s.current, s.best, s.freezes_held) == (1, 2, 0)


async def test_rebuild_restores_streaks_covers_and_freezes(
    make_api: ApiFactory,
    tenant: str,
    clock: TestClock,
    lose_redis_data: LoseRedisData,
    rds: sync_redis.Redis,
) -> None:
    api = await start(make_api, tenant, clock, "2026-12-16T20:00:00+08:00")
    sent = ["2026-12-07", "2026-12-08", "2026-12-09", "2026-12-10", "2026-12-11", "2026-12-15"]
    first = [await login(api, "ann", d) for d in sent]
    before = await streak(api, "ann")
    assert (before.current, before.best, before.freezes_held) == (7, 7, 0)
    assert await api.app.flusher.drain(30)
    lose_redis_data(api.tenant)
    await rebuild(api.app)
    after = await streak(api, "ann")
    assert (after.current, after.best, after.freezes_held) == (7, 7, 0)
    again = [await login(api, "ann", d) for d in sent]
    assert [r.outcome for r in again] == [pb.DUPLICATE] * len(sent)
    assert [streak_bonuses(r) for r in again] == [streak_bonuses(r) for r in first]
    # Wednesday 16: the streak goes on from the rebuilt state, nothing paid twice.
    more = await login(api, "ann", "2026-12-16")
    assert not streak_bonuses(more)
    assert (await streak(api, "ann")).current == 8
    assert (await reconcile(api.app)).clean


async def test_freezes_redeemed_from_the_catalog_up_to_the_most_held(
    make_api: ApiFactory,
    tenant: str,
    clock: TestClock,
    lose_redis_data: LoseRedisData,
) -> None:
    api = await start(make_api, tenant, clock, "2026-12-11T20:00:00+08:00")
    admin = pb_grpc.AdminServiceStub(api.channel)
    freeze = pb.Item(tenant_id=api.tenant, item_id="freeze", name="Streak freeze",
                     kind=pb.STREAK_FREEZE, cost=5, enabled=True)  # fmt: skip
    await admin.CreateItem(pb.CreateItemRequest(item=freeze))
    for d in ["2026-12-07", "2026-12-08", "2026-12-09"]:
        await login(api, "ann", d)  # 15 points

    async def redeem(request_id: str, quantity: int) -> pb.RedeemResponse:
        return await api.stub.Redeem(
            pb.RedeemRequest(
                tenant_id=api.tenant,
                user_id="ann",
                item_id="freeze",
                quantity=quantity,
                request_id=request_id,
            )
        )

    done = await redeem("r1", 2)
    assert (done.status, done.points_spent) == (pb.COMPLETED, 10)
    assert (await streak(api, "ann")).freezes_held == 2
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await redeem("r2", 1)
    assert full.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert full.value.details() == (
        "'ann' holds 2 streak freeze(s); at most 2 may be held, so 1 more cannot be redeemed"
    )
    # A replay gives nothing more.
    assert (await redeem("r1", 2)).status == pb.COMPLETED
    assert (await streak(api, "ann")).freezes_held == 2
    # Thursday 10 missed: Friday uses one up and makes 5 in a row, whose
    # milestone gives one back; a rebuild counts what is held.
    used = await login(api, "ann", "2026-12-11")
    assert streak_bonuses(used) == [
        ("freeze", "used", 0, "2026-12-10"),
        ("streak", "5", 20, "2026-12-07"),
    ]
    assert (await streak(api, "ann")).freezes_held == 2
    assert await api.app.flusher.drain(30)
    lose_redis_data(api.tenant)
    await rebuild(api.app)
    s = await streak(api, "ann")
    assert (s.current, s.freezes_held) == (5, 2)
    assert (await reconcile(api.app)).clean


async def test_a_growth_task_on_the_best_streak_pays_once(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    def edit(rs: dict[str, Any]) -> None:
        rs["tasks"]["three-in-a-row"] = {
            "name": "连续 3 天", "name_en": "Three days in a row", "period": "ever",
            "streak": True, "at_least": 3, "reward": {"points": 7},
        }  # fmt: skip

    clock.set(parse_instant("2026-12-16T20:00:00+08:00"))
    api = await make_api(book=book(tenant, edit), event_max_age_s=AGE_S)
    days = ["2026-12-07", "2026-12-08", "2026-12-09", "2026-12-14", "2026-12-15", "2026-12-16"]
    got = [await login(api, "ann", d) for d in days]
    paid = [(i, b.id, b.points) for i, r in enumerate(got) for b in r.bonuses if b.kind == "task"]
    # The second run of three (after a missed Thursday, no freeze) pays nothing.
    assert paid == [(2, "three-in-a-row", 7)]
    p = await api.stub.GetProgress(pb.GetProgressRequest(tenant_id=api.tenant, user_id="ann"))
    task = next(t for t in p.tasks if t.id == "three-in-a-row")
    assert (task.progress, task.completed) == (3, True)


def short_milestones(rs: dict[str, Any]) -> None:
    rs["streak"]["milestones"] = [
        {"days": 3, "points": 10, "freezes": 1},
        {"days": 5, "points": 20},
    ]


async def test_a_covered_day_counts_for_a_milestone_and_its_late_event_pays_nothing_twice(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    clock.set(parse_instant("2026-12-15T20:00:00+08:00"))
    api = await make_api(book=book(tenant, short_milestones), event_max_age_s=AGE_S)
    got = {d: await login(api, "ann", d) for d in
           ["2026-12-07", "2026-12-08", "2026-12-09", "2026-12-10", "2026-12-14"]}  # fmt: skip
    # Wednesday 9: 3 in a row, +1 freeze. Friday 11 missed: Monday 14 uses
    # the freeze, and the covered Friday is the run's fifth day.
    assert streak_bonuses(got["2026-12-09"]) == [("streak", "3", 10, "2026-12-07")]
    assert streak_bonuses(got["2026-12-14"]) == [
        ("freeze", "used", 0, "2026-12-11"),
        ("streak", "5", 20, "2026-12-07"),
    ]
    # Friday's login, late: the freeze comes back; the run is the same, so
    # no milestone is paid again.
    late = await login(api, "ann", "2026-12-11")
    assert streak_bonuses(late) == [("freeze", "returned", 0, "2026-12-11")]
    s = await streak(api, "ann")
    assert (s.current, s.freezes_held) == (6, 1)
    assert (await reconcile(api.app)).clean


async def test_a_late_event_bridges_the_gap_after_it_as_in_order(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    api = await start(make_api, tenant, clock, "2026-12-10T20:00:00+08:00")
    admin = pb_grpc.AdminServiceStub(api.channel)
    freeze = pb.Item(tenant_id=api.tenant, item_id="freeze", name="Streak freeze",
                     kind=pb.STREAK_FREEZE, cost=1, enabled=True)  # fmt: skip
    await admin.CreateItem(pb.CreateItemRequest(item=freeze))
    for user in ("bob", "cy"):
        seed = pb.AdjustPointsRequest(
            tenant_id=api.tenant, user_id=user, points=5, idempotency_key=f"seed-{user}",
            reason="seed",
        )  # fmt: skip
        await admin.AdjustPoints(seed)
        buy = pb.RedeemRequest(
            tenant_id=api.tenant, user_id=user, item_id="freeze", request_id=f"fz-{user}"
        )
        await api.stub.Redeem(buy)
    # Wednesday 9 missed by both; Bob in order, Cy's Tuesday arrives late.
    for d in ["2026-12-08", "2026-12-10"]:
        await login(api, "bob", d)
    first = await login(api, "cy", "2026-12-10")
    late = await login(api, "cy", "2026-12-08")
    assert not streak_bonuses(first)
    assert streak_bonuses(late) == [("freeze", "used", 0, "2026-12-09")]
    bob, cy = await streak(api, "bob"), await streak(api, "cy")
    assert (bob.current, bob.freezes_held) == (cy.current, cy.freezes_held) == (3, 0)


async def test_raising_a_target_mid_period_pays_nothing_twice(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    clock.set(parse_instant("2026-12-07T10:00:00+08:00"))
    first = await make_api(book=book(tenant))
    for i in range(3):
        await first.stub.RecordActivity(ev(tenant, "ann", "message.text", event_id=f"m{i}"))

    def five(rs: dict[str, Any]) -> None:
        rs["tasks"]["send-3-messages"]["at_least"] = 5

    second = await make_api(book=book(tenant, five))
    more = [
        await second.stub.RecordActivity(ev(tenant, "ann", "message.text", event_id=f"n{i}"))
        for i in range(3)
    ]
    assert not [b for r in more for b in r.bonuses if b.id == "send-3-messages"]
    assert (await reconcile(second.app)).clean


async def test_concurrent_freeze_redemptions_never_pass_the_most_held(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    api = await start(make_api, tenant, clock, "2026-12-10T20:00:00+08:00")
    admin = pb_grpc.AdminServiceStub(api.channel)
    freeze = pb.Item(tenant_id=api.tenant, item_id="freeze", name="Streak freeze",
                     kind=pb.STREAK_FREEZE, cost=5, enabled=True)  # fmt: skip
    await admin.CreateItem(pb.CreateItemRequest(item=freeze))
    seed = pb.AdjustPointsRequest(tenant_id=api.tenant, user_id="ann", points=100,
                                  idempotency_key="seed", reason="seed")  # fmt: skip
    await admin.AdjustPoints(seed)

    async def buy(i: int) -> int:
        try:
            await api.stub.Redeem(pb.RedeemRequest(
                tenant_id=api.tenant, user_id="ann", item_id="freeze", quantity=1,
                request_id=f"c{i}"))  # fmt: skip
            return 1
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            return 0

    bought = sum(await asyncio.gather(*(buy(i) for i in range(8))))
    s = await streak(api, "ann")
    assert bought == s.freezes_held == 2
    balance = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id="ann"))
    assert balance.available == 100 - 2 * 5
