"""Farming holds on the award path (award.lua, hold.lua): a held user's
awards reach the ledger as held, count toward caps, never raise available;
a release pays them exactly once, a void cancels them; reconcile stays
clean in every case. The flags themselves (PostgreSQL) are
tests/test_farming_store.py's; here a hold is set straight in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.domain import Period, PeriodRef, StoreCode
from pointsd.service.ops import reconcile
from pointsd.storage.redis import BalanceView
from tests.conftest import Api, ApiFactory
from tests.helpers import ev

FLAG = 900_001


async def balance(api: Api, user: str) -> BalanceView:
    # Any period and counter: only the balance fields are compared here.
    return await api.app.stores.balances.get(
        api.tenant, user, PeriodRef(Period.DAY, "1970-01-01", 0), "earned"
    )


async def record(api: Api, *events: pb.ActivityEvent) -> list[pb.ActivityResult]:
    got = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=list(events)))
    return list(got.results)


async def ledger_rows(api: Api, user: str, sql: Any) -> list[tuple[str, int, str, int | None]]:
    assert await api.app.flusher.drain(30)
    rows = sql(
        "SELECT kind, points, state, flag_id FROM ledger_entries "
        "WHERE tenant_id=:t AND user_id=:u ORDER BY id",
        t=api.tenant,
        u=user,
    )
    return [(str(k), int(p), str(s), None if f is None else int(f)) for k, p, s, f in rows]


async def test_a_held_users_awards_are_held_count_toward_caps_and_replay_as_held(
    api: Api, sql: Any
) -> None:
    holds = api.app.stores.holds
    assert (await holds.hold(api.tenant, "mallory", FLAG)).points == FLAG
    # A second flag does not take over a held user.
    assert (await holds.hold(api.tenant, "mallory", FLAG + 1)).points == FLAG

    likes = [ev(api.tenant, "mallory", "like", target_user_id=f"c{i}") for i in range(12)]
    results = await record(api, *likes)
    actor = [r.credits[0] for r in results]
    # The actor's like pays 1, at most 10 a day: held ones count.
    assert [c.outcome for c in actor] == [pb.AWARDED] * 10 + [pb.CAPPED] * 2
    assert all(c.held and "held for review" in c.reason for c in actor[:10])
    # The receivers are not held: they are paid.
    assert all(r.credits[1].points == 1 and "held" not in r.credits[1].reason for r in results)
    b = await balance(api, "mallory")
    assert (b.available, b.earned, b.held) == (0, 0, 10)

    # A replay is a duplicate, still held.
    again = await record(api, likes[0])
    assert again[0].outcome == pb.DUPLICATE and "held for review" in again[0].credits[0].reason

    rows = await ledger_rows(api, "mallory", sql)
    assert rows == [("award", 1, "held", FLAG)] * 10
    assert (await reconcile(api.app)).clean


async def test_release_pays_the_held_points_exactly_once(api: Api, sql: Any) -> None:
    holds = api.app.stores.holds
    await holds.hold(api.tenant, "mallory", FLAG)
    await record(
        api, *[ev(api.tenant, "mallory", "like", target_user_id=f"c{i}") for i in range(4)]
    )

    # Concurrent releases (two admins, a retry): one moves the points.
    settled = await asyncio.gather(
        *(holds.settle(api.tenant, "mallory", FLAG, release=True, reason="ok") for _ in range(5))
    )
    assert sorted(s.code for s in settled) == [StoreCode.APPLIED] + [StoreCode.DUPLICATE] * 4
    assert {s.points for s in settled} == {4}
    b = await balance(api, "mallory")
    assert (b.available, b.earned, b.held) == (4, 4, 0)

    # No longer held: the next like is paid, and a released flag holds nobody again.
    assert (await holds.hold(api.tenant, "mallory", FLAG)).code is StoreCode.DUPLICATE
    late = await record(api, ev(api.tenant, "mallory", "like", target_user_id="d1"))
    assert "held" not in late[0].credits[0].reason
    assert (await balance(api, "mallory")).available == 5

    rows = await ledger_rows(api, "mallory", sql)
    assert rows[:4] == [("award", 1, "held", FLAG)] * 4
    assert rows[4:] == [("release", -4, "held", FLAG), ("release", 4, "paid", FLAG),
                        ("award", 1, "paid", None)]  # fmt: skip
    assert (await reconcile(api.app)).clean


async def test_void_cancels_the_held_points_with_compensating_rows(api: Api, sql: Any) -> None:
    holds = api.app.stores.holds
    await holds.hold(api.tenant, "mallory", FLAG)
    await record(
        api, *[ev(api.tenant, "mallory", "like", target_user_id=f"c{i}") for i in range(3)]
    )
    first = await holds.settle(api.tenant, "mallory", FLAG, release=False, reason="farming")
    assert (first.code, first.points) == (StoreCode.APPLIED, 3)
    # Voided once: a later release of the same flag moves nothing.
    again = await holds.settle(api.tenant, "mallory", FLAG, release=True, reason="oops")
    assert (again.code, again.points) == (StoreCode.DUPLICATE, 3)
    b = await balance(api, "mallory")
    assert (b.available, b.earned, b.held) == (0, 0, 0)
    rows = await ledger_rows(api, "mallory", sql)
    assert rows == [("award", 1, "held", FLAG)] * 3 + [("void", -3, "held", FLAG)]
    assert (await reconcile(api.app)).clean


async def test_a_settlement_of_a_flag_that_never_held_moves_nothing(api: Api, sql: Any) -> None:
    await record(api, ev(api.tenant, "alice", "like", target_user_id="bob"))
    got = await api.app.stores.holds.settle(api.tenant, "alice", FLAG, release=True, reason="x")
    assert (got.code, got.points) == (StoreCode.APPLIED, 0)
    assert (await balance(api, "alice")).available == 1
    assert await ledger_rows(api, "alice", sql) == [("award", 1, "paid", None)]


async def test_a_held_event_earns_no_bonus_streak_or_board_points(
    make_api: ApiFactory, tenant: str
) -> None:
    api = await make_api([tenant], progression=True)
    await api.app.stores.holds.hold(tenant, "mallory", FLAG)
    # Three messages make a daily task done (a bonus) for alice, not mallory.
    results = await record(
        api, *[ev(tenant, u, "message.text") for u in ("mallory", "alice") for _ in range(3)]
    )
    assert all(r.outcome == pb.AWARDED for r in results)
    assert [len(r.bonuses) for r in results] == [0, 0, 0, 0, 0, 1]
    board = await api.stub.Leaderboard(
        pb.LeaderboardRequest(tenant_id=tenant, board="points", period=pb.WEEK, limit=10)
    )
    # The same event of a user who is not held ranks.
    assert [e.member_id for e in board.entries] == ["alice"]
    b = await balance(api, "mallory")
    assert (b.available, b.held) == (0, 6)
    assert (await reconcile(api.app)).clean


async def test_rebuild_restores_held_balances_and_the_holds_of_open_flags(
    api: Api, sql: Any, lose_redis_data: Any
) -> None:
    from pointsd.service.ops import rebuild
    from pointsd.service.rules.farming import Finding, Signal

    app = api.app
    finding = Finding("mallory", Signal.RATE, "2026-W49", (), "test evidence")
    [(flag_id, user)] = await app.stores.farming.record(api.tenant, [finding], app.clock())
    await app.stores.holds.hold(api.tenant, user, flag_id)
    await record(
        api, *[ev(api.tenant, "mallory", "like", target_user_id=f"c{i}") for i in range(3)]
    )
    assert await app.flusher.drain(30)

    lose_redis_data(api.tenant)
    await rebuild(app)
    b = await balance(api, "mallory")
    assert (b.available, b.held) == (0, 3)
    # Still held after the rebuild: the next like is held too.
    late = await record(api, ev(api.tenant, "mallory", "like", target_user_id="d1"))
    assert late[0].credits[0].held
    assert (await reconcile(app)).clean
    got = await app.stores.holds.settle(api.tenant, "mallory", flag_id, release=True, reason="ok")
    assert got.points == 4
    assert (await balance(api, "mallory")).available == 4
    assert (await reconcile(app)).clean


# -- two flags of one user, and rebuilds between decision and settlement ------


async def _flag(api: Api, period: str) -> int:
    from pointsd.service.rules.farming import Finding, Signal

    app = api.app
    finding = Finding("mallory", Signal.RATE, period, (), "evidence")
    [(flag_id, _)] = await app.stores.farming.record(api.tenant, [finding], app.clock())
    return flag_id


async def _likes(api: Api, prefix: str, n: int) -> None:
    await record(
        api, *[ev(api.tenant, "mallory", "like", target_user_id=f"{prefix}{i}") for i in range(n)]
    )


async def test_each_flag_settles_only_what_it_held_through_a_rebuild(
    api: Api, lose_redis_data: Any
) -> None:
    """A voided (its settlement not run yet) while B opened: after a rebuild
    the pass voids A's 3 points, and B's release pays only B's 2."""
    from pointsd.service.farming import FarmingPass, decide
    from pointsd.service.ops import rebuild
    from pointsd.storage.postgres.farming import VOIDED

    app = api.app
    a = await _flag(api, "2026-W01")
    await app.stores.holds.hold(api.tenant, "mallory", a)
    await _likes(api, "c", 3)
    # The decision committed; the process died before hold.lua ran.
    await app.stores.farming.decide(api.tenant, a, state=VOIDED, decided_by="adm", note="x",
                                    now_ms=app.clock())  # fmt: skip
    b = await _flag(api, "2026-W02")
    assert await app.flusher.drain(30)
    lose_redis_data(api.tenant)
    await rebuild(app)
    await _likes(api, "d", 2)  # held under B, the open flag
    await FarmingPass(app).run_once()
    assert (await app.stores.farming.get(api.tenant, a)).settled_points == 3  # type: ignore[union-attr]
    await decide(app, api.tenant, b, release=True, note="ok", decided_by="adm", audit_row=None)
    got = await balance(api, "mallory")
    assert (got.available, got.held) == (2, 0)
    assert (await reconcile(app)).clean


async def test_a_settlement_run_before_a_rebuild_is_not_run_again(
    api: Api, lose_redis_data: Any
) -> None:
    """hold.lua settled A, then the process died before PostgreSQL recorded
    it; a rebuild restores the settlement record from the ledger: the pass
    records it, nothing moves twice, A holds nobody again."""
    from pointsd.service.farming import FarmingPass
    from pointsd.service.ops import rebuild
    from pointsd.storage.postgres.farming import RELEASED

    app = api.app
    a = await _flag(api, "2026-W01")
    await app.stores.holds.hold(api.tenant, "mallory", a)
    await _likes(api, "c", 3)
    await app.stores.farming.decide(api.tenant, a, state=RELEASED, decided_by="adm", note="x",
                                    now_ms=app.clock())  # fmt: skip
    assert (await app.stores.holds.settle(api.tenant, "mallory", a, release=True,
                                          reason="r")).points == 3  # fmt: skip
    assert await app.flusher.drain(30)
    lose_redis_data(api.tenant)
    await rebuild(app)
    await _likes(api, "d", 2)  # paid: A is settled, nobody holds mallory
    # A pass that read the open flags before the decision holds A again: refused.
    assert (await app.stores.holds.hold(api.tenant, "mallory", a)).code is StoreCode.DUPLICATE
    await FarmingPass(app).run_once()
    assert (await app.stores.farming.get(api.tenant, a)).settled_points == 3  # type: ignore[union-attr]
    got = await balance(api, "mallory")
    assert (got.available, got.held) == (5, 0)
    assert await app.flusher.drain(30)
    assert (await reconcile(app)).clean


async def test_a_flag_settled_with_nothing_held_holds_nobody_after_a_rebuild(
    api: Api, lose_redis_data: Any
) -> None:
    from pointsd.service.farming import FarmingPass, decide
    from pointsd.service.ops import rebuild

    app = api.app
    a = await _flag(api, "2026-W01")
    stale = await app.stores.farming.holding(api.tenant)  # a pass read this...
    await app.stores.holds.hold(api.tenant, "mallory", a)
    await decide(app, api.tenant, a, release=True, note="ok", decided_by="adm", audit_row=None)
    assert await app.flusher.drain(30)
    lose_redis_data(api.tenant)
    await rebuild(app)  # ...a rebuild ran meanwhile...
    for flag_id, user in stale:  # ...and the pass goes on with its list
        assert (await app.stores.holds.hold(api.tenant, user, flag_id)).code is StoreCode.DUPLICATE
    await _likes(api, "c", 3)
    await FarmingPass(app).run_once()
    got = await balance(api, "mallory")
    assert (got.available, got.held) == (3, 0)


async def test_caps_hold_for_held_credits_under_concurrency(api: Api) -> None:
    """G5 for a held user: 200 concurrent likes against the giver's cap of
    10 a day are 10 held awards and 190 CAPPED, whichever order they land."""
    await api.app.stores.holds.hold(api.tenant, "mallory", FLAG)
    likes = [ev(api.tenant, "mallory", "like", target_user_id=f"c{i}") for i in range(200)]
    results = await asyncio.gather(*(api.stub.RecordActivity(e) for e in likes))
    actor = [r.credits[0] for r in results]
    assert sum(c.outcome == pb.AWARDED and c.held for c in actor) == 10
    assert sum(c.outcome == pb.CAPPED for c in actor) == 190
    got = await balance(api, "mallory")
    assert (got.available, got.held) == (0, 10)
    assert (await api.app.stores.holds.shares(api.tenant, [("mallory", FLAG)])) == {
        ("mallory", FLAG): 10
    }
