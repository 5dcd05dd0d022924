"""Guarantees G1 and G5 under concurrency: exactly-once awarding and caps that
hold, with many callers, several channels and two server instances at once."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from scripts.tokens import aio_channel
from tests.conftest import Api, ApiFactory, wait_for
from tests.helpers import ev, ledger_count, ledger_sum


def stubs(api: Api, n: int) -> tuple[list[grpc.aio.Channel], list[pb_grpc.PointsServiceStub]]:
    channels = [aio_channel(api.target, api.token) for _ in range(n)]
    return channels, [pb_grpc.PointsServiceStub(c) for c in channels]


async def test_1000_concurrent_copies_of_one_event_award_once(api: Api, sql) -> None:
    event = ev(api.tenant, "u1", "login", event_id="the-one")
    channels, clients = stubs(api, 8)
    try:
        results = await asyncio.gather(*(clients[i % 8].RecordActivity(event) for i in range(1000)))
    finally:
        for c in channels:
            await c.close()
    counts = Counter(r.outcome for r in results)
    assert counts == {pb.AWARDED: 1, pb.DUPLICATE: 999}
    assert all(r.points == 5 and r.balance == 5 for r in results)
    assert {r.original_outcome for r in results if r.outcome == pb.DUPLICATE} == {pb.AWARDED}
    b = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id="u1"))
    assert b.available == 5
    assert await api.app.flusher.drain(30)
    assert ledger_count(sql, api.tenant) == 1


async def test_1000_concurrent_distinct_likes_against_cap_10(api: Api, sql) -> None:
    channels, clients = stubs(api, 8)
    try:
        results = await asyncio.gather(
            *(
                clients[i % 8].RecordActivity(ev(api.tenant, "fan", "like", target_user_id=f"p{i}"))
                for i in range(1000)
            )
        )
    finally:
        for c in channels:
            await c.close()
    actor = Counter(r.credits[0].outcome for r in results)
    assert actor == {pb.AWARDED: 10, pb.CAPPED: 990}
    assert all(r.credits[1].outcome == pb.AWARDED for r in results)
    b = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id="fan"))
    assert b.available == 10
    assert await api.app.flusher.drain(30)
    assert ledger_sum(sql, api.tenant, "fan") == 10
    assert ledger_count(sql, api.tenant) == 1010


async def test_cap_holds_across_two_server_instances(
    make_api: ApiFactory, tenant: str, sql
) -> None:
    one = await make_api([tenant])
    two = await make_api([tenant], ingest_inflight_max=1)

    async def burst(api: Api, offset: int) -> list[pb.ActivityResult]:
        return await asyncio.gather(
            *(
                api.stub.RecordActivity(ev(tenant, "voter", "vote", event_id=f"v{offset + i}"))
                for i in range(300)
            )
        )

    a, b = await asyncio.gather(burst(one, 0), burst(two, 1000))
    awarded = [r for r in a + b if r.outcome == pb.AWARDED]
    assert len(awarded) == 3  # vote: at most 3 a day
    assert sorted(r.balance for r in awarded) == [8, 16, 24]
    assert await one.app.flusher.drain(30)
    assert await two.app.flusher.drain(30)
    assert ledger_sum(sql, tenant, "voter") == 24


async def test_same_batch_sent_concurrently_awards_each_event_once(api: Api, sql) -> None:
    events = [ev(api.tenant, f"u{i}", "file", event_id=f"f{i}") for i in range(200)]
    request = pb.RecordActivitiesRequest(events=events)
    responses = await asyncio.gather(*(api.stub.RecordActivities(request) for _ in range(10)))
    per_event: Counter[tuple[str, int]] = Counter()
    for resp in responses:
        for r in resp.results:
            per_event[(r.event_id, r.outcome)] += 1
    for e in events:
        assert per_event[(e.event_id, pb.AWARDED)] == 1
        assert per_event[(e.event_id, pb.DUPLICATE)] == 9

    async def flushed() -> bool:
        return ledger_count(sql, api.tenant) == 200

    await wait_for(flushed)
    assert ledger_sum(sql, api.tenant) == 2000


async def test_concurrent_copies_of_a_two_credit_event_have_one_owner(api: Api, sql) -> None:
    """Copies of a like race for the giver's and the receiver's credit
    separately; still exactly one answer is not DUPLICATE, and it carries the
    event's full points, so callers summing AWARDED points match the ledger."""
    channels, clients = stubs(api, 8)
    try:
        for round_ in range(20):
            event = ev(api.tenant, f"g{round_}", "like", target_user_id=f"r{round_}")
            results = await asyncio.gather(
                *(clients[i % 8].RecordActivity(event) for i in range(50))
            )
            owners = [r for r in results if r.outcome != pb.DUPLICATE]
            assert len(owners) == 1
            assert owners[0].outcome == pb.AWARDED and owners[0].points == 2
            assert all(r.points == 2 for r in results)
    finally:
        for c in channels:
            await c.close()
    assert await api.app.flusher.drain(30)
    assert ledger_sum(sql, api.tenant) == 40
