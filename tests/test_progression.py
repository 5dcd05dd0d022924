"""Levels, tasks and badges through the real gRPC API on real Redis and
PostgreSQL: bonuses in results, once per period (G12), replays, GetProgress,
rebuild, and concurrency. Dates are set on the test clock, never today's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis as sync_redis

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.clock import parse_instant
from pointsd.service.ops import rebuild, reconcile
from pointsd.service.rules import RuleBook, load_rule_file, parse_rule_book
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory, LoseRedisData
from tests.helpers import ev

# Monday 7 December 2026, 10:00 in Shanghai (ISO week 2026-W50).
MONDAY = "2026-12-07T10:00:00+08:00"
DAY_MS = 86_400_000


def book(tenant: str, edit: Callable[[dict[str, Any]], None] | None = None) -> RuleBook:
    """The default rules, progression included, for one Shanghai tenant on
    the example calendar; `edit` changes the default rule set first."""
    doc = load_rule_file(None)
    doc["tenants"] = [{"id": tenant, "timezone": "Asia/Shanghai", "calendar": "example-cn-2026"}]
    if edit is not None:
        edit(doc["rule_sets"]["default"])
    return parse_rule_book(doc)


def low_levels(rs: dict[str, Any]) -> None:
    rs["levels"][1]["from"] = 10
    rs["levels"][2]["from"] = 30


async def record(api: Api, user: str, action: str, **fields: Any) -> pb.ActivityResult:
    return await api.stub.RecordActivity(ev(api.tenant, user, action, **fields))


async def progress_of(api: Api, user: str) -> pb.Progress:
    return await api.stub.GetProgress(pb.GetProgressRequest(tenant_id=api.tenant, user_id=user))


def task(p: pb.Progress, task_id: str) -> pb.TaskProgress:
    return next(t for t in p.tasks if t.id == task_id)


@pytest.fixture
async def papi(make_api: ApiFactory, tenant: str, clock: TestClock) -> Api:
    clock.set(parse_instant(MONDAY))
    return await make_api(book=book(tenant))


async def test_a_daily_task_pays_once_in_the_call_that_completes_it(papi: Api, sql: Any) -> None:
    results = [await record(papi, "ann", "message.text", event_id=f"m{i}") for i in range(4)]
    assert [len(r.bonuses) for r in results] == [0, 0, 1, 0]
    bonus = results[2].bonuses[0]
    assert (bonus.kind, bonus.id, bonus.points, bonus.period_key, bonus.user_id) == (
        "task", "send-3-messages", 5, "2026-12-07", "ann",
    )  # fmt: skip
    assert bonus.name == "发送 3 条消息" and bonus.name_en == "Send 3 messages"
    assert "Daily task done: Send 3 messages" in bonus.reason
    # The result says it at once, and the bonus is in its points and balance.
    assert (results[2].points, results[2].balance) == (2 + 5, 11)
    assert results[2].reason.endswith("Daily task done: Send 3 messages (发送 3 条消息) +5")
    # A replay answers with the same bonus and pays nothing.
    replay = await papi.stub.RecordActivity(ev(papi.tenant, "ann", "message.text", event_id="m2"))
    assert replay.outcome == pb.DUPLICATE
    assert [(b.id, b.points) for b in replay.bonuses] == [("send-3-messages", 5)]
    balance = await papi.stub.GetBalance(pb.GetBalanceRequest(tenant_id=papi.tenant, user_id="ann"))
    assert balance.available == 4 * 2 + 5
    # Its own ledger row, keyed by user, task and period, naming the event.
    await papi.app.flusher.drain(30)
    rows = sql(
        "SELECT entry_key, kind, points, event_id, attributes FROM ledger_entries "
        "WHERE tenant_id = :t AND kind = 'bonus'",
        t=papi.tenant,
    )
    assert [tuple(r) for r in rows] == [
        ("b:ann:task.send-3-messages.2026-12-07", "bonus", 5, "m2",
         {"bonus": "task.send-3-messages.2026-12-07"}),
    ]  # fmt: skip
    assert (await reconcile(papi.app)).clean


async def test_the_next_day_is_a_new_period(papi: Api, clock: TestClock) -> None:
    for i in range(3):
        await record(papi, "ann", "message.text", event_id=f"d1-{i}")
    clock.set(parse_instant(MONDAY) + DAY_MS)
    got = [await record(papi, "ann", "message.text", event_id=f"d2-{i}") for i in range(3)]
    assert [b.period_key for r in got for b in r.bonuses] == ["2026-12-08"]


async def test_distinct_colleagues_and_groups(papi: Api) -> None:
    liked = [
        await record(papi, "ann", "like", target_user_id=who, event_id=f"l-{i}")
        for i, who in enumerate(["bo", "bo", "cy"])
    ]
    done = [(r.bonuses[0].user_id, r.bonuses[0].id) for r in liked if r.bonuses]
    assert done == [("ann", "like-2-colleagues")]
    assert liked[2].bonuses[0].period_key == "2026-12-07"
    spoke = [
        await record(papi, "bo", "message.text", group_id=g, event_id=f"g-{i}")
        for i, g in enumerate(["g1", "g1", "g2", "g3", "g4"])
    ]
    weekly = [b for r in spoke for b in r.bonuses if b.id == "speak-in-3-groups"]
    assert [(b.points, b.period_key) for b in weekly] == [(20, "2026-W50")]
    assert [b.id for b in spoke[3].bonuses] == ["speak-in-3-groups"]


async def test_growth_task_badge_and_progress(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    clock.set(parse_instant(MONDAY))

    def edit(rs: dict[str, Any]) -> None:
        rs["tasks"]["100-likes-received"]["at_least"] = 3

    api = await make_api(book=book(tenant, edit))
    got = [
        await record(api, f"fan{i}", "like", target_user_id="star", event_id=f"f{i}")
        for i in range(4)
    ]
    earned = [b for r in got for b in r.bonuses if b.user_id == "star"]
    assert [(b.id, b.badge, b.points, b.period_key) for b in earned] == [
        ("100-likes-received", "well-liked", 100, "")
    ]
    p = await progress_of(api, "star")
    assert [(b.id, b.name_en) for b in p.badges] == [("well-liked", "Well liked")]
    assert p.badges[0].earned_at.ToMilliseconds() > 0
    growth = task(p, "100-likes-received")
    assert (growth.kind, growth.progress, growth.target, growth.completed) == (
        pb.GROWTH, 4, 3, True,
    )  # fmt: skip
    assert not growth.HasField("ends_at") and growth.period_key == "all"


async def test_get_progress_lists_every_task_with_time_left(papi: Api) -> None:
    await record(papi, "ann", "message.text")
    p = await progress_of(papi, "ann")
    daily = task(p, "send-3-messages")
    assert (daily.kind, daily.period, daily.period_key) == (pb.DAILY, pb.DAY, "2026-12-07")
    assert (daily.progress, daily.target, daily.reward_points, daily.completed) == (1, 3, 5, False)
    # 10:00 in Shanghai (and a moment): 14 hours to midnight.
    assert 14 * 3600 - 30 <= daily.seconds_left <= 14 * 3600
    assert daily.ends_at.ToMilliseconds() == parse_instant("2026-12-08T00:00:00+08:00")
    weekly = task(p, "over-100-messages")
    assert (weekly.kind, weekly.period_key, weekly.target) == (pb.WEEKLY, "2026-W50", 101)
    assert weekly.seconds_left - daily.seconds_left == 6 * 86_400
    assert {t.id for t in p.tasks} == set(papi.app.rules.tenants[papi.tenant].parts["tasks"])
    assert (p.level.current.id, p.level.next.id, p.level.points_to_next) == (
        "newcomer", "communicator", 500 - 2,
    )  # fmt: skip


async def test_level_up_is_reported_written_and_never_lost_by_spending(
    make_api: ApiFactory, tenant: str, clock: TestClock, sql: Any
) -> None:
    clock.set(parse_instant(MONDAY))
    api = await make_api(book=book(tenant, low_levels))
    first = await record(api, "ann", "file", event_id="f1")  # 10 points: Communicator
    assert [(u.user_id, u.level.id, u.level.name) for u in first.level_ups] == [
        ("ann", "communicator", "沟通达人")
    ]
    assert list(first.level_ups[0].level.privileges) == ["tag.communicator", "frame.silver"]
    assert [(b.kind, b.id, b.points) for b in first.bonuses] == [("level", "communicator", 0)]
    assert "Level up: Communicator (沟通达人)" in first.reason
    assert not (await record(api, "ann", "image", event_id="f2")).level_ups  # 20
    # A task reward that lifts the user a level reports it in the same call.
    for i in range(2):
        await record(api, "ann", "message.text", event_id=f"m{i}")  # 24
    third = await record(api, "ann", "message.text", event_id="m2")  # 26 + 5 = 31
    assert [b.id for b in third.bonuses] == ["send-3-messages", "team-star"]
    assert [u.level.id for u in third.level_ups] == ["team-star"]
    # Spending does not lower it.
    mug = pb.Item(
        tenant_id=api.tenant, item_id="mug", name="Mug", kind=pb.PHYSICAL, cost=25, enabled=True
    )
    await pb_admin(api).CreateItem(pb.CreateItemRequest(item=mug))
    await api.stub.Redeem(
        pb.RedeemRequest(tenant_id=api.tenant, user_id="ann", item_id="mug", request_id="r1")
    )
    p = await progress_of(api, "ann")
    assert (p.level.current.id, p.level.lifetime_earned, p.level.points_to_next) == (
        "team-star", 31, 0,
    )  # fmt: skip
    assert not p.level.HasField("next")
    await api.app.flusher.drain(30)
    rows = sql(
        "SELECT entry_key, points FROM ledger_entries WHERE tenant_id = :t AND kind = 'bonus' "
        "AND entry_key LIKE 'b:ann:level.%' ORDER BY id",
        t=api.tenant,
    )
    assert [tuple(r) for r in rows] == [("b:ann:level.communicator", 0),
                                        ("b:ann:level.team-star", 0)]  # fmt: skip


def pb_admin(api: Api) -> Any:
    from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc

    return pb_grpc.AdminServiceStub(api.channel)


async def test_a_peak_task_reads_the_reported_count(papi: Api) -> None:
    counts = [12, 49, 55, 60, 30]
    got = [
        await record(papi, "owner", "group.members", group_id="g1", quantity=n, event_id=f"n{i}")
        for i, n in enumerate(counts)
    ]
    assert [r.points for r in got] == [0, 0, 50, 0, 0]
    assert [(b.id, b.badge) for r in got for b in r.bonuses] == [
        ("group-of-50", "community-builder")
    ]
    assert task(await progress_of(papi, "owner"), "group-of-50").progress == 60


async def test_the_third_use_of_each_feature_in_a_week(papi: Api, clock: TestClock) -> None:
    def use(feature: str, n: int) -> pb.ActivityEvent:
        return ev(papi.tenant, "ann", "feature.use", event_id=f"{feature}-{n}",
                  attributes={"feature": feature})  # fmt: skip

    got = [await papi.stub.RecordActivity(use(f, n)) for f, n in
           [("video", 1), ("video", 2), ("docs", 1), ("video", 3), ("docs", 2), ("video", 4),
            ("docs", 3)]]  # fmt: skip
    paid = [(b.id, b.period_key) for r in got for b in r.bonuses]
    assert paid == [("third-feature-use", "2026-W50")] * 2
    assert [i for i, r in enumerate(got) if r.bonuses] == [3, 6]
    # The next week counts again.
    clock.set(parse_instant(MONDAY) + 7 * DAY_MS)
    again = [await papi.stub.RecordActivity(use("video", 10 + n)) for n in range(3)]
    assert [b.period_key for r in again for b in r.bonuses] == ["2026-W51"]


async def test_working_day_logins_in_iso_week_53(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    # Saturday 26 Dec 2026 .. Friday 1 Jan 2027: Monday 28 Dec to Friday 1 Jan
    # are ISO week 2026-W53 (year 2027 begins inside it) and working days.
    clock.set(parse_instant("2027-01-01T20:00:00+08:00"))
    api = await make_api(book=book(tenant), event_max_age_s=14 * 86_400)
    start = parse_instant("2026-12-26T09:00:00+08:00")
    got = [
        await record(api, "ann", "login", at_ms=start + d * DAY_MS, event_id=f"d{d}")
        for d in range(7)
    ]
    assert all(r.outcome == pb.AWARDED for r in got)
    done = [(i, b.period_key) for i, r in enumerate(got) for b in r.bonuses
            if b.id == "log-in-5-working-days"]  # fmt: skip
    assert done == [(6, "2026-W53")]
    weekly = task(await progress_of(api, "ann"), "log-in-5-working-days")
    assert (weekly.period_key, weekly.progress, weekly.completed) == ("2026-W53", 5, True)


async def test_holidays_do_not_count_and_a_make_up_saturday_does(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    # Week 2026-W41 on the example calendar: Monday 5 to Wednesday 7 October
    # are National Day holidays, Saturday 10 October is a make-up working day.
    clock.set(parse_instant("2026-10-11T20:00:00+08:00"))
    api = await make_api(book=book(tenant), event_max_age_s=14 * 86_400)
    start = parse_instant("2026-10-05T09:00:00+08:00")
    for d in range(7):
        await record(api, "ann", "login", at_ms=start + d * DAY_MS, event_id=f"d{d}")
    weekly = task(await progress_of(api, "ann"), "log-in-5-working-days")
    # Thursday 8, Friday 9 and Saturday 10.
    assert (weekly.period_key, weekly.progress) == ("2026-W41", 3)


async def test_200_concurrent_events_complete_a_task_once(papi: Api, sql: Any) -> None:
    events = [
        ev(papi.tenant, "ann", "like", target_user_id=f"c{i % 7}", event_id=f"x{i}")
        for i in range(200)
    ]
    results = await asyncio.gather(*(papi.stub.RecordActivity(e) for e in events))
    mine = [b for r in results for b in r.bonuses if b.user_id == "ann"]
    assert [b.id for b in mine] == ["like-2-colleagues"]
    again = await asyncio.gather(*(papi.stub.RecordActivity(e) for e in events))
    assert [b.id for r in again for b in r.bonuses if b.user_id == "ann"] == ["like-2-colleagues"]
    await papi.app.flusher.drain(30)
    rows = sql(
        "SELECT count(*) FROM ledger_entries WHERE tenant_id = :t AND entry_key LIKE 'b:ann:%'",
        t=papi.tenant,
    )
    assert rows[0][0] == 1
    assert (await reconcile(papi.app)).clean


async def test_rebuild_restores_progress_badges_and_replays_pay_nothing(
    make_api: ApiFactory,
    tenant: str,
    clock: TestClock,
    lose_redis_data: LoseRedisData,
    rds: sync_redis.Redis,
) -> None:
    clock.set(parse_instant(MONDAY))

    def edit(rs: dict[str, Any]) -> None:
        low_levels(rs)
        rs["tasks"]["1000-messages"]["at_least"] = 4

    api = await make_api(book=book(tenant, edit))
    sent = [ev(api.tenant, "ann", "message.text", event_id=f"m{i}") for i in range(5)]
    first = [await api.stub.RecordActivity(e) for e in sent]
    members = ev(api.tenant, "ann", "group.members", group_id="g", quantity=51, event_id="gm")
    peak = await api.stub.RecordActivity(members)
    assert [b.id for b in peak.bonuses] == ["group-of-50"]
    before = await progress_of(api, "ann")
    assert {b.id for b in before.badges} == {"chatterbox", "community-builder"}
    assert await api.app.flusher.drain(30)

    lose_redis_data(api.tenant)
    await rebuild(api.app)
    after = await progress_of(api, "ann")
    assert [(t.id, t.progress, t.completed) for t in after.tasks] == [
        (t.id, t.progress, t.completed) for t in before.tasks
    ]
    assert [(b.id, b.earned_at) for b in after.badges] == [
        (b.id, b.earned_at) for b in before.badges
    ]
    assert after.level == before.level
    # Replays are duplicates with the same bonuses; nothing is paid again.
    again = [await api.stub.RecordActivity(e) for e in sent]
    assert [r.outcome for r in again] == [pb.DUPLICATE] * 5
    assert [[b.id for b in r.bonuses] for r in again] == [[b.id for b in r.bonuses] for r in first]
    assert not (await api.stub.RecordActivity(members)).bonuses
    more = await record(api, "ann", "message.text", event_id="m9")
    assert not more.bonuses
    assert (await reconcile(api.app)).clean


async def test_an_item_may_require_a_level(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    clock.set(parse_instant(MONDAY))
    api = await make_api(book=book(tenant, low_levels))
    admin = pb_admin(api)
    frame = pb.Item(tenant_id=api.tenant, item_id="gold-frame", name="Gold frame",
                    kind=pb.VIRTUAL, cost=5, enabled=True, min_level="team-star")  # fmt: skip
    created = await admin.CreateItem(pb.CreateItemRequest(item=frame))
    assert created.min_level == "team-star"
    await record(api, "ann", "file", event_id="f1")  # 10 points: Communicator

    def redeem(request_id: str) -> Any:
        return api.stub.Redeem(
            pb.RedeemRequest(
                tenant_id=api.tenant, user_id="ann", item_id="gold-frame", request_id=request_id
            )
        )

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await redeem("r1")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == (
        "item 'gold-frame' requires level Team star (团队之星) (30 lifetime points); "
        "'ann' is Communicator (沟通达人) with 10"
    )
    for i in range(2):
        await record(api, "ann", "image", event_id=f"i{i}")  # 30: Team star
    done = await redeem("r2")
    assert done.redemption.status == pb.COMPLETED
    wrong = pb.Item(tenant_id=api.tenant, item_id="x", name="X", kind=pb.VIRTUAL, cost=1,
                    min_level="guru")  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await admin.CreateItem(pb.CreateItemRequest(item=wrong))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = invalid.value.details() or ""
    assert "item.min_level: no level 'guru'" in details
    assert "newcomer, communicator, team-star" in details


async def test_a_daily_task_rolls_over_at_midnight_in_a_zone_with_dst(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    # Berlin, Sunday 28 March 2027: clocks skip 02:00-03:00, a 23-hour day.
    doc = load_rule_file(None)
    doc["tenants"] = [{"id": tenant, "timezone": "Europe/Berlin"}]
    clock.set(parse_instant("2027-03-28T01:30:00+01:00"))
    api = await make_api(book=parse_rule_book(doc))
    times = ["2027-03-27T23:20:00+01:00", "2027-03-27T23:40:00+01:00",
             "2027-03-28T00:10:00+01:00", "2027-03-28T01:00:00+01:00",
             "2027-03-28T01:20:00+01:00"]  # fmt: skip
    got = [
        await record(api, "ann", "message.text", at_ms=parse_instant(t), event_id=f"m{i}")
        for i, t in enumerate(times)
    ]
    done = [(i, b.period_key) for i, r in enumerate(got) for b in r.bonuses]
    assert done == [(4, "2027-03-28")]
    daily = task(await progress_of(api, "ann"), "send-3-messages")
    # 01:30 CET to midnight CEST: 21.5 hours of a 23-hour day.
    assert 21 * 3600 + 1800 - 30 <= daily.seconds_left <= 21 * 3600 + 1800
    assert daily.ends_at.ToMilliseconds() == parse_instant("2027-03-29T00:00:00+02:00")
