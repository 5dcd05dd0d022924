"""Guarantee G3: after Redis data loss, `rebuild` restores balances from the
ledger, and with them exactly-once (dedup records) and caps (counters)."""

from __future__ import annotations

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.ops import rebuild, reconcile
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory, LoseRedisData
from tests.helpers import ev, tenant_keys


async def balances(api: Api, users: list[str]) -> dict[str, tuple[int, int, int]]:
    out = {}
    for u in users:
        b = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id=u))
        out[u] = (b.available, b.lifetime_earned, b.earned_today)
    return out


async def boards(api: Api) -> list[list[tuple[int, str, int]]]:
    out = []
    for name, period in [
        ("points", pb.WEEK),
        ("points", pb.ALL_TIME),
        ("helpers", pb.MONTH),
        ("newcomers", pb.WEEK),
    ]:
        got = await api.stub.Leaderboard(
            pb.LeaderboardRequest(tenant_id=api.tenant, board=name, period=period, limit=1000)
        )
        out.append([(e.rank, e.member_id, e.score) for e in got.entries])
    assert out[0], "the boards must have content to compare"
    return out


@pytest.mark.slow
async def test_rebuild_after_flushall_restores_balances_dedup_and_caps(
    make_api: ApiFactory, tenant: str, rds, lose_redis_data: LoseRedisData
) -> None:
    api = await make_api({tenant: {"shards": 4}})
    users = [f"u{i}" for i in range(30)]
    events = []
    for i, u in enumerate(users):
        events.append(ev(tenant, u, "login", event_id=f"login-{u}"))
        events.append(
            ev(
                tenant,
                u,
                "feature.first_use",
                event_id=f"feat-{u}",
                attributes={"feature": "calendar"},
            )
        )
        events.append(
            ev(tenant, u, "like", event_id=f"like-{u}", target_user_id=users[(i + 1) % 30])
        )
        events += [ev(tenant, u, "file", event_id=f"file-{u}-{k}") for k in range(6)]
    first = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    before = await balances(api, users)
    boards_before = await boards(api)
    assert sum(v[0] for v in before.values()) == sum(r.points for r in first.results)
    assert await api.app.flusher.drain(30)

    lose_redis_data(tenant)
    assert tenant_keys(rds, tenant) == []
    report = await rebuild(api.app)
    assert report.users == 30 and report.entries == sum(
        len([c for c in r.credits if c.points]) for r in first.results
    )
    assert await balances(api, users) == before
    assert await boards(api) == boards_before
    assert (await reconcile(api.app)).clean

    # Replays are still duplicates, with their original outcome and figures.
    again = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    for a, b in zip(first.results, again.results, strict=True):
        assert a.outcome in (pb.AWARDED, pb.CAPPED)
        if a.outcome == pb.AWARDED:
            assert (b.outcome, b.original_outcome, b.points, b.balance) == (
                pb.DUPLICATE,
                pb.AWARDED,
                a.points,
                a.balance,
            )
    # Caps still hold: once a day, once ever, the 50-point file cap.
    u = users[0]
    assert (await api.stub.RecordActivity(ev(tenant, u, "login"))).outcome == pb.CAPPED
    feat = ev(tenant, u, "feature.first_use", attributes={"feature": "calendar"})
    assert (await api.stub.RecordActivity(feat)).outcome == pb.CAPPED
    assert (await api.stub.RecordActivity(ev(tenant, u, "file"))).outcome == pb.CAPPED
    assert await balances(api, users) == before


async def test_writes_are_refused_while_a_rebuild_owns_the_tenant(api: Api, rds) -> None:
    await api.stub.RecordActivity(ev(api.tenant, "u1", "file"))
    shard = api.app.shards()[0]
    # The flusher may empty the outbox at any moment: let it, before looking.
    assert await api.app.flusher.drain(30)
    before = tenant_keys(rds, api.tenant)
    await api.app.stores.balances.set_maintenance(shard, True)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.RecordActivity(ev(api.tenant, "u1", "file"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "rebuild" in (err.value.details() or "")
        assert [k for k in tenant_keys(rds, api.tenant) if not k.endswith(b":maint")] == before
    finally:
        await api.app.stores.balances.set_maintenance(shard, False)
    assert (await api.stub.RecordActivity(ev(api.tenant, "u1", "file"))).outcome == pb.AWARDED


async def test_old_awards_stay_on_all_time_boards_and_dead_letters_survive(
    api: Api, rds, clock: TestClock
) -> None:
    """Entries whose dedup records and counters expired long ago still count on
    all-time boards after a rebuild; parked entries are not wiped."""
    now = clock()
    past = now - 10 * 86_400_000
    clock.set(past)
    for user, n in [("carol", 2), ("dave", 1)]:
        for _ in range(n):
            await api.stub.RecordActivity(ev(api.tenant, user, "file", at_ms=past))
    clock.set(now)
    await api.stub.RecordActivity(ev(api.tenant, "dave", "reply"))
    request = pb.LeaderboardRequest(tenant_id=api.tenant, board="points", period=pb.ALL_TIME)
    before = [(e.member_id, e.score) for e in (await api.stub.Leaderboard(request)).entries]
    assert before == [("carol", 20), ("dave", 13)]
    shard = api.app.shards()[0]
    rds.xadd(shard.dead_letters, {"d": "kept for the operator"})
    await rebuild(api.app)
    after = [(e.member_id, e.score) for e in (await api.stub.Leaderboard(request)).entries]
    assert after == before
    assert rds.xlen(shard.dead_letters) == 1


async def test_a_rebuild_that_fails_half_way_keeps_writes_refused(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pointsd.service.ops import RebuildFailed
    from pointsd.storage.errors import StorageUnavailable

    await api.stub.RecordActivity(ev(api.tenant, "u1", "file"))
    assert await api.app.flusher.drain(30)

    async def broken(tenant_id: str) -> None:
        raise StorageUnavailable("postgresql went away")

    monkeypatch.setattr(api.app.stores.ledger, "sums", broken)
    with pytest.raises(RebuildFailed, match="writes stay refused"):
        await rebuild(api.app)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(ev(api.tenant, "u1", "file"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    monkeypatch.undo()
    await rebuild(api.app)
    assert (await api.stub.RecordActivity(ev(api.tenant, "u1", "file"))).balance == 20


async def test_rebuild_keeps_the_identity_of_events_paid_only_to_their_target(
    api: Api, lose_redis_data: LoseRedisData
) -> None:
    """The giver's 11th like is capped and the receiver's paid: the ledger has
    only the receiver's row, yet the event must stay a duplicate after a rebuild."""
    t = api.tenant
    likes = [ev(t, "giver", "like", event_id=f"lk{i}", target_user_id=f"r{i}") for i in range(11)]
    for like in likes:
        await api.stub.RecordActivity(like)
    last = await api.stub.RecordActivity(likes[-1])
    assert [c.outcome for c in last.credits] == [pb.DUPLICATE, pb.DUPLICATE]
    assert await api.app.flusher.drain(30)
    lose_redis_data(t)
    await rebuild(api.app)
    again = await api.stub.RecordActivity(likes[-1])
    assert (again.outcome, again.original_outcome, again.points) == (pb.DUPLICATE, pb.AWARDED, 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(
            ev(t, "someone", "like", event_id="lk10", target_user_id="r10")
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (
        await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=t, user_id="giver"))
    ).available == 10
