"""Ingest at its edges: cancelled and corrupt streams, replays after a rule
change, balances past 10^14, and throttles against backdated events."""

from __future__ import annotations

import asyncio

import grpc

from pointsd.service.api.points.v1 import points_pb2 as pb
from tests.conftest import ApiFactory
from tests.helpers import ev, now_ms


def _readers() -> list[asyncio.Task[object]]:
    return [
        t for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__name__", "") == "reader" and not t.done()
    ]  # fmt: skip


async def test_a_cancelled_stream_leaves_no_task_behind(make_api: ApiFactory, tenant: str) -> None:
    # A slow round trip and a small read-ahead: the reader is parked on a
    # full queue when the client cancels.
    api = await make_api([tenant], stream_inflight_max=2, ingest_coalesce_us=500_000)
    before = len(_readers())
    for _ in range(3):
        call = api.stub.StreamActivities()
        for i in range(20):
            await call.write(ev(tenant, f"u{i}", "file"))
        await asyncio.sleep(0.3)
        call.cancel()
    for _ in range(100):
        if len(_readers()) == before:
            break
        await asyncio.sleep(0.05)
    assert len(_readers()) == before


async def test_a_corrupt_stream_message_is_invalid_argument(
    make_api: ApiFactory, tenant: str
) -> None:
    api = await make_api([tenant])
    call = api.channel.stream_stream(
        "/points.v1.PointsService/StreamActivities",
        request_serializer=lambda b: b,
        response_deserializer=pb.ActivityResult.FromString,
    )()
    for i in range(3):
        await call.write(ev(tenant, f"u{i}", "file", event_id=f"g{i}").SerializeToString())
    await call.write(b"\xff\xff\xff\xff")
    await call.done_writing()
    got = []
    code = details = None
    try:
        async for r in call:
            got.append((r.event_id, r.outcome))
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
    assert got == [(f"g{i}", pb.AWARDED) for i in range(3)]
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details is not None and details.startswith("events: stream message #4")


async def test_replaying_a_capped_event_after_its_cap_was_removed(
    make_api: ApiFactory, tenant: str
) -> None:
    old = await make_api([tenant], actions={"x": {"actor": {"points": 1, "daily_count_max": 1}}})
    first, capped = ev(tenant, "u1", "x", event_id="e1"), ev(tenant, "u1", "x", event_id="e2")
    assert (await old.stub.RecordActivity(first)).outcome == pb.AWARDED
    assert (await old.stub.RecordActivity(capped)).outcome == pb.CAPPED
    new = await make_api([tenant], actions={"x": {"actor": {"points": 1}}})
    resp = await new.stub.RecordActivities(
        pb.RecordActivitiesRequest(events=[capped, ev(tenant, "u2", "x", event_id="e3")])
    )
    assert [(r.outcome, r.original_outcome) for r in resp.results] == [
        (pb.DUPLICATE, pb.CAPPED),
        (pb.AWARDED, pb.OUTCOME_UNSPECIFIED),
    ]
    assert "limit reached (a limit)" in resp.results[0].reason


async def test_replays_stay_exact_past_a_balance_of_10_to_the_14(
    make_api: ApiFactory, tenant: str
) -> None:
    api = await make_api(
        [tenant], actions={"bonus": {"actor": {"points": 1_000_000, "per_quantity": 1}}}
    )
    events = [ev(tenant, "rich", "bonus", event_id=f"b{i}", quantity=100_000) for i in range(1001)]
    resp = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events[:1000]))
    assert resp.results[-1].balance == 10**14
    last = await api.stub.RecordActivity(events[1000])
    assert last.balance == 10**14 + 10**11
    again = await api.stub.RecordActivities(
        pb.RecordActivitiesRequest(events=[events[999], events[1000], ev(tenant, "o", "login")])
    )
    assert [(r.outcome, r.balance) for r in again.results] == [
        (pb.DUPLICATE, 10**14),
        (pb.DUPLICATE, 10**14 + 10**11),
        (pb.AWARDED, 5),
    ]


async def test_backdated_events_cannot_slip_past_a_minimum_interval(
    make_api: ApiFactory, tenant: str
) -> None:
    """Every awarded event is compared with all awarded neighbours in time,
    not only the newest: events sent out of order stay throttled."""
    api = await make_api(
        [tenant], actions={"poke": {"actor": {"points": 1, "min_interval_ms": 60_000}}}
    )
    t0 = now_ms() - 3_600_000
    at = [t0, t0 - 120_000, t0 - 119_000, t0 - 118_000, t0 - 30_000, t0 + 61_000, t0 - 7_200_000]
    outcomes = []
    for i, ms in enumerate(at):
        r = await api.stub.RecordActivity(ev(tenant, "u1", "poke", event_id=f"p{i}", at_ms=ms))
        outcomes.append(r.outcome)
    A, T = pb.AWARDED, pb.THROTTLED
    # t0 | t0-120 s (far from t0) | -119 s and -118 s (1 s after -120 s) |
    # -30 s (near t0) | +61 s | two hours earlier (far from all)
    assert outcomes == [A, A, T, T, T, A, A]


async def test_a_throttle_keeps_bounded_memory_and_never_pays_what_it_forgot(
    make_api: ApiFactory, tenant: str, rds
) -> None:
    api = await make_api(
        [tenant], actions={"tick": {"actor": {"points": 1, "min_interval_ms": 1000}}}
    )
    t0 = now_ms() - 3_600_000
    events = [ev(tenant, "u1", "tick", event_id=f"k{i}", at_ms=t0 + i * 2000) for i in range(70)]
    resp = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    assert all(r.outcome == pb.AWARDED for r in resp.results)
    (key,) = list(rds.scan_iter(match=f"pts:{{{tenant}:*ivz*"))
    assert rds.zcard(key) == 64
    # Older than every time it still keeps: refused, though nothing near it
    # is remembered; within what it keeps, judged exactly.
    early = await api.stub.RecordActivity(ev(tenant, "u1", "tick", at_ms=t0 - 10_000))
    between = await api.stub.RecordActivity(ev(tenant, "u1", "tick", at_ms=t0 + 138_500))
    assert (early.outcome, between.outcome) == (pb.THROTTLED, pb.THROTTLED)
    later = await api.stub.RecordActivity(ev(tenant, "u1", "tick", at_ms=t0 + 150_000))
    assert later.outcome == pb.AWARDED
