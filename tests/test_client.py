"""The Python client (client/, `pointsd_client`) against a real in-process
server on real Redis and PostgreSQL: replays come back DUPLICATE (G1), a retry
resends the same event ids, deadlines reach the server, batches fit the
server's limits, the batcher and the stream helper keep their promises, and
the snippet of docs/client.md runs.

Faults come from `FaultProxy`, a real gRPC server in front of the service
that forwards every call and fails the ones a test asks for: before
forwarding (the service never saw the call) or after it (the service did the
work and the answer is lost), and from tests/proxy.py (the service's address
going away and coming back)."""

from __future__ import annotations

import asyncio
import re
import time
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import grpc
import grpc.aio
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from pointsd.service.api.points.v1 import points_pb2_grpc as server_pb_grpc
from pointsd_client import (
    BATCH_EVENTS_MAX,
    NO_RETRY,
    Batcher,
    PointsClient,
    RetryPolicy,
    SyncPointsClient,
    chunk_events,
    make_event,
    pb,
)
from pointsd_client.v1 import points_pb2_grpc as client_pb_grpc
from scripts.procs import ROOT
from scripts.tokens import aio_channel
from tests.conftest import Api
from tests.proxy import TcpProxy

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# Quick retries: the tests wait for faults, not for politeness.
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


# --------------------------------------------------------------------------
# The fault proxy


@dataclass(frozen=True)
class Fault:
    """What the proxy does to one call: wait `delay_s`, then fail it with
    `code` (None: go on), before forwarding it or, with `after`, once the
    service has answered (the answer is then lost)."""

    code: grpc.StatusCode | None = UNAVAILABLE
    after: bool = False
    delay_s: float = 0.0


@dataclass
class Seen:
    method: str
    request: bytes
    time_remaining: float | None
    stream: int = 0  # StreamActivities: which stream carried it (1, 2, ...)


@dataclass
class FaultProxy:
    upstream: str
    # Sent upstream with every call: the service's token (the client under
    # test talks to the proxy, which stands in for an authorised gateway).
    token: str
    seen: list[Seen] = field(default_factory=list)
    # Per method, the faults of its next calls in order (None: no fault).
    plans: dict[str, list[Fault | None]] = field(default_factory=dict)
    # Per StreamActivities call in order: drop result n (0-based), then fail.
    stream_cuts: list[int | None] = field(default_factory=list)
    streams: int = 0
    port: int = 0

    async def start(self) -> str:
        self._channel = aio_channel(self.upstream, self.token)
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers([_Forward(self)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self._server.stop(grace=None)
        await self._channel.close()

    def plan(self, method: str, *faults: Fault | None) -> None:
        self.plans.setdefault(method, []).extend(faults)

    def requests(self, method: str) -> list[bytes]:
        return [s.request for s in self.seen if s.method == method]

    def events(self, method: str) -> list[list[pb.ActivityEvent]]:
        """The events of each call of `method`, as the proxy received them."""
        if method == "RecordActivity":
            return [[pb.ActivityEvent.FromString(r)] for r in self.requests(method)]
        return [
            list(pb.RecordActivitiesRequest.FromString(r).events) for r in self.requests(method)
        ]

    async def unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = method.rsplit("/", 1)[1]
        self.seen.append(Seen(name, request, context.time_remaining()))
        queue = self.plans.get(name, [])
        fault = queue.pop(0) if queue else None
        if fault is not None and not fault.after:
            await self._apply(fault, context)
        rpc = self._channel.unary_unary(method, _raw, _raw)
        try:
            answer = await rpc(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as exc:  # the service's own answer, passed on
            await context.abort(exc.code(), exc.details() or "")
        if fault is not None and fault.after:
            await self._apply(fault, context)
        return answer

    @staticmethod
    async def _apply(fault: Fault, context: grpc.aio.ServicerContext) -> None:
        await asyncio.sleep(fault.delay_s)
        if fault.code is not None:
            await context.abort(fault.code, "injected by the test proxy")

    async def stream(
        self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self.streams += 1
        number = self.streams
        cut = self.stream_cuts.pop(0) if self.stream_cuts else None

        async def forward() -> AsyncIterator[bytes]:
            async for request in requests:
                self.seen.append(Seen("StreamActivities", request, None, number))
                yield request

        call = self._channel.stream_stream(method, _raw, _raw)(forward())
        delivered = 0
        try:
            async for answer in call:
                if delivered == cut:  # this answer is lost, and the stream breaks
                    call.cancel()
                    break
                delivered += 1
                yield answer
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        if delivered == cut:
            await context.abort(UNAVAILABLE, "stream cut by the test proxy")

    def stream_events(self, number: int) -> list[pb.ActivityEvent]:
        return [
            pb.ActivityEvent.FromString(s.request)
            for s in self.seen
            if s.method == "StreamActivities" and s.stream == number
        ]


def _raw(message: bytes) -> bytes:
    """The proxy forwards messages as it gets them: bytes."""
    return message


class _Forward(grpc.GenericRpcHandler):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        proxy = self.proxy
        if method.endswith("/StreamActivities"):

            async def stream(
                requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[bytes]:
                # grpc.aio serves an async generator function only.
                async for answer in proxy.stream(method, requests, context):
                    yield answer

            return grpc.stream_stream_rpc_method_handler(stream)

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await proxy.unary(method, request, context)

        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture
async def proxy(api: Api) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(api.target, api.token)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def points(api: Api, proxy: FaultProxy) -> AsyncIterator[PointsClient]:
    """A client of the service through the proxy."""
    async with PointsClient(f"127.0.0.1:{proxy.port}", tenant_id=api.tenant, retry=FAST) as c:
        yield c


def file_events(client: PointsClient, n: int, prefix: str = "f") -> list[pb.ActivityEvent]:
    """n events of n users, 10 points each: one user's balance shows how
    often the service awarded that user's event."""
    return [
        client.event(event_id=f"{prefix}-{i}", user_id=f"{prefix}u{i}", action="file")
        for i in range(n)
    ]


async def balance(client: PointsClient, user: str) -> int:
    return (await client.get_balance(user)).available


# --------------------------------------------------------------------------
# Events, chunks and the policy (no server)


def test_events_from_keyword_arguments() -> None:
    at = datetime(2030, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=8)))
    e = make_event(
        tenant_id="t", user_id="u", action="like", target_user_id="v", occurred_at=at,
        quantity=3, attributes={"feature": "x"},
    )  # fmt: skip
    assert (e.tenant_id, e.user_id, e.action, e.target_user_id, e.quantity) == (
        "t",
        "u",
        "like",
        "v",
        3,
    )
    assert e.occurred_at.ToDatetime(UTC) == at.astimezone(UTC)
    assert dict(e.attributes) == {"feature": "x"}
    assert re.fullmatch(r"[0-9a-f]{32}", e.event_id)
    assert make_event(tenant_id="t", user_id="u", action="a", event_id="m-1").event_id == "m-1"
    ts = Timestamp(seconds=1_900_000_000)
    assert make_event(tenant_id="t", user_id="u", action="a", occurred_at=ts).occurred_at == ts
    assert not make_event(tenant_id="t", user_id="u", action="a").HasField("occurred_at")
    with pytest.raises(ValueError, match="time zone"):
        make_event(tenant_id="t", user_id="u", action="a", occurred_at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="tenant_id is required"):
        make_event(user_id="u", action="a")


def test_chunks_hold_the_request_size_they_compute() -> None:
    events = [
        make_event(
            tenant_id="t", user_id=f"u{i}", action="a", attributes={"k": "v" * (i * 7 % 250)}
        )
        for i in range(600)
    ]
    for max_events, max_bytes in (
        (1000, 4 * 1024 * 1024),
        (100, 10**9),
        (1000, 20_000),
        (7, 3_000),
    ):
        chunks = chunk_events(events, max_events, max_bytes)
        assert [e for c in chunks for e in c] == events
        sizes = [pb.RecordActivitiesRequest(events=c).ByteSize() for c in chunks]
        assert all(len(c) <= max_events for c in chunks) and max(sizes) <= max_bytes
        # Full: each chunk but the last could not take the next event.
        for chunk, nxt, size in zip(chunks, chunks[1:], sizes, strict=False):
            grown = pb.RecordActivitiesRequest(events=[*chunk, nxt[0]]).ByteSize()
            assert len(chunk) == max_events or grown > max_bytes, size


def test_backoff_is_exponential_with_full_jitter() -> None:
    import random

    policy = RetryPolicy(max_attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2.0)
    rng = random.Random(7)
    for attempt, ceiling in zip(range(1, 6), (0.1, 0.2, 0.4, 0.5, 0.5), strict=True):
        sleeps = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert min(sleeps) >= 0 and max(sleeps) <= ceiling
        assert max(sleeps) > 0.8 * ceiling and len(set(sleeps)) == 200  # spread, not fixed
    assert policy.retries(UNAVAILABLE, 5) and not policy.retries(UNAVAILABLE, 6)
    assert policy.retries(grpc.StatusCode.RESOURCE_EXHAUSTED, 1)
    assert policy.retries(grpc.StatusCode.DEADLINE_EXCEEDED, 1)
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS,
                 grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL):  # fmt: skip
        assert not policy.retries(code, 1)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_the_budget_bounds_all_attempts_and_overload_waits_longer() -> None:
    import random

    policy = RetryPolicy(max_attempts=100, budget_s=2.0, overload_backoff_s=0.5)
    assert policy.retries(UNAVAILABLE, 3, elapsed_s=1.9)
    assert not policy.retries(UNAVAILABLE, 3, elapsed_s=2.0)
    assert RetryPolicy(max_attempts=100, budget_s=None).retries(UNAVAILABLE, 99, 3600.0)
    rng = random.Random(3)
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert all(policy.backoff_s(1, rng, code=exhausted) >= 0.5 for _ in range(100))
    assert min(policy.backoff_s(1, rng, code=UNAVAILABLE) for _ in range(100)) < 0.05
    with pytest.raises(ValueError):
        RetryPolicy(budget_s=0)


async def test_a_call_that_keeps_failing_stops_at_its_budget(
    points: PointsClient, proxy: FaultProxy
) -> None:
    """However many attempts are allowed, none starts after the budget: a
    failing service is not sent the same work over and over."""
    proxy.plan("RecordActivity", *[Fault(UNAVAILABLE)] * 100)
    bounded = RetryPolicy(max_attempts=100, initial_backoff_s=0.1, max_backoff_s=0.1, budget_s=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await points.record(event_id="m-budget", user_id="ann", action="file", retry=bounded)
    assert failed.value.code() == UNAVAILABLE
    sent = proxy.events("RecordActivity")
    # Backoffs average 0.05 s: about 10 attempts fit in 0.5 s, never 100.
    assert 1 < len(sent) < 50
    assert {e[0].event_id for e in sent} == {"m-budget"}


# --------------------------------------------------------------------------
# Replays and retries (G1)


async def test_a_replay_is_duplicate_with_the_first_result(points: PointsClient) -> None:
    first = await points.record(event_id="m-1", user_id="ann", action="file")
    assert (first.event_id, first.outcome, first.points, first.balance) == (
        "m-1",
        pb.AWARDED,
        10,
        10,
    )
    again = await points.record(event_id="m-1", user_id="ann", action="file")
    assert (again.outcome, again.original_outcome) == (pb.DUPLICATE, pb.AWARDED)
    assert (again.points, again.balance) == (10, 10)
    # An event without an id gets one written into it before the first attempt.
    unnamed = points.event(user_id="ann", action="login")
    made = await points.record_activity(unnamed)
    assert made.outcome == pb.AWARDED and re.fullmatch(r"[0-9a-f]{32}", made.event_id)
    assert unnamed.event_id == made.event_id
    replay = await points.record_activity(
        points.event(event_id=made.event_id, user_id="ann", action="login")
    )
    assert (replay.outcome, replay.original_outcome) == (pb.DUPLICATE, pb.AWARDED)
    assert await balance(points, "ann") == 15


async def test_a_lost_answer_is_retried_with_the_same_event_id(
    points: PointsClient, proxy: FaultProxy
) -> None:
    proxy.plan("RecordActivity", Fault(UNAVAILABLE, after=True))
    result = await points.record_activity(points.event(user_id="ann", action="file"))
    sent = proxy.events("RecordActivity")
    assert len(sent) == 2 and sent[0] == sent[1]
    assert sent[0][0].event_id == result.event_id
    # The first attempt was recorded; the retry learns its result.
    assert (result.outcome, result.original_outcome, result.points) == (
        pb.DUPLICATE,
        pb.AWARDED,
        10,
    )
    assert await balance(points, "ann") == 10


@pytest.mark.parametrize("code", [UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
async def test_retryable_failures_before_the_service_are_retried(
    points: PointsClient, proxy: FaultProxy, code: grpc.StatusCode
) -> None:
    proxy.plan("RecordActivity", Fault(code), Fault(code))
    result = await points.record(event_id="m-9", user_id="ann", action="file")
    assert result.outcome == pb.AWARDED
    assert [e[0].event_id for e in proxy.events("RecordActivity")] == ["m-9"] * 3


async def test_retries_stop_after_max_attempts(points: PointsClient, proxy: FaultProxy) -> None:
    proxy.plan("RecordActivity", *[Fault()] * 5)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await points.record(event_id="m-2", user_id="ann", action="file", retry=FAST)
    assert failed.value.code() == UNAVAILABLE
    assert len(proxy.requests("RecordActivity")) == FAST.max_attempts
    proxy.plans.clear()
    proxy.plan("RecordActivity", Fault())
    with pytest.raises(grpc.aio.AioRpcError):
        await points.record(event_id="m-2", user_id="ann", action="file", retry=NO_RETRY)
    assert len(proxy.requests("RecordActivity")) == FAST.max_attempts + 1


async def test_answers_are_never_retried(points: PointsClient, proxy: FaultProxy) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await points.record(event_id="{bad}", user_id="ann", action="file")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await points.record(event_id="m-3", user_id="ann", action="file")
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await points.record(event_id="m-3", user_id="ann", action="image")
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert len(proxy.requests("RecordActivity")) == 3  # one attempt each


async def test_deadlines_are_applied_per_attempt(
    api: Api, points: PointsClient, proxy: FaultProxy
) -> None:
    await points.get_balance("ann")
    await points.get_balance("ann", timeout_s=5)
    default, override = (s.time_remaining for s in proxy.seen)
    # Up to a few ms more than asked: gRPC rounds deadlines on the wire.
    assert default is not None and 1.0 < default <= 2.05  # DEFAULT_TIMEOUT_S
    assert override is not None and 4.0 < override <= 5.05
    # An attempt that outlives its deadline is cut there, and the retry (the
    # same id) learns what the first one did.
    proxy.plan("RecordActivity", Fault(None, after=True, delay_s=3.0))
    started = time.monotonic()
    result = await points.record(event_id="m-4", user_id="ann", action="file", timeout_s=0.3)
    assert time.monotonic() - started < 2.5
    assert (result.outcome, result.original_outcome) == (pb.DUPLICATE, pb.AWARDED)
    first = proxy.seen[2].time_remaining
    assert first is not None and 0 < first <= 0.35
    # Without retries the deadline is the error.
    proxy.plan("RecordActivity", Fault(None, delay_s=3.0))
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await points.record(
            event_id="m-5", user_id="ann", action="file", timeout_s=0.2, retry=NO_RETRY
        )
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    async with PointsClient(f"127.0.0.1:{proxy.port}", tenant_id=api.tenant, timeout_s=None) as c:
        await c.get_balance("ann")
    assert proxy.seen[-1].time_remaining is None


async def test_redeem_is_retried_only_with_its_request_id(
    api: Api, points: PointsClient, proxy: FaultProxy
) -> None:
    admin = server_pb_grpc.AdminServiceStub(api.channel)
    await admin.CreateItem(
        pb.CreateItemRequest(
            item=pb.Item(
                tenant_id=api.tenant,
                item_id="coffee",
                name="Coffee",
                kind=pb.PHYSICAL,
                cost=30,
                stock=5,
                enabled=True,
            )
        )
    )
    await admin.AdjustPoints(
        pb.AdjustPointsRequest(
            tenant_id=api.tenant, user_id="ann", points=100, reason="seed", idempotency_key="k1"
        )
    )
    request = pb.RedeemRequest(
        tenant_id=api.tenant, user_id="ann", item_id="coffee", request_id="r-1"
    )
    proxy.plan("Redeem", Fault(UNAVAILABLE, after=True))
    done = await points.redeem(request)
    assert done.status == pb.COMPLETED and done.balance == 70
    assert len(proxy.requests("Redeem")) == 2
    assert await balance(points, "ann") == 70  # spent once
    proxy.plan("Redeem", Fault(UNAVAILABLE))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await points.redeem(pb.RedeemRequest(tenant_id=api.tenant, user_id="ann", item_id="coffee"))
    assert failed.value.code() == UNAVAILABLE
    assert len(proxy.requests("Redeem")) == 3


async def test_a_service_that_goes_away_and_comes_back(api: Api) -> None:
    tcp = TcpProxy("127.0.0.1", api.running.port)
    await tcp.start()
    patient = RetryPolicy(max_attempts=40, initial_backoff_s=0.02, max_backoff_s=0.1, budget_s=None)
    # Reconnect quickly: gRPC's own reconnect backoff starts at 1 s.
    options = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100),
               ("grpc.min_reconnect_backoff_ms", 50)]  # fmt: skip
    async with PointsClient(
        f"127.0.0.1:{tcp.port}",
        tenant_id=api.tenant,
        retry=patient,
        options=options,
        token=api.token,
    ) as c:
        assert (await c.record(event_id="m-6", user_id="ann", action="file")).outcome == pb.AWARDED
        await tcp.cut()

        async def come_back() -> None:
            await asyncio.sleep(0.5)
            await tcp.start()

        back = asyncio.create_task(come_back())
        result = await c.record(event_id="m-7", user_id="ann", action="file")
        await back
        assert result.outcome == pb.AWARDED
        assert await balance(c, "ann") == 20
    await tcp.cut()


# --------------------------------------------------------------------------
# Batches


async def test_record_many_splits_into_calls_the_server_takes(
    points: PointsClient, proxy: FaultProxy
) -> None:
    events = file_events(points, 2345)
    results = await points.record_many(events)
    assert [len(c) for c in proxy.events("RecordActivities")] == [1000, 1000, 345]
    assert [r.event_id for r in results] == [e.event_id for e in events]
    assert {r.outcome for r in results} == {pb.AWARDED}
    with pytest.raises(ValueError, match="batch_size"):
        await points.record_many(events, batch_size=BATCH_EVENTS_MAX + 1)
    proxy.seen.clear()
    # The second call's answer is lost: only it is sent again, the same ids,
    # and its events come back DUPLICATE with their first results.
    proxy.plan("RecordActivities", None, Fault(UNAVAILABLE, after=True))
    again = file_events(points, 50, prefix="g")
    results = await points.record_many(again, batch_size=20)
    calls = proxy.events("RecordActivities")
    assert [len(c) for c in calls] == [20, 20, 20, 10]
    assert calls[1] == calls[2]
    outcomes = [r.outcome for r in results]
    assert outcomes == [pb.AWARDED] * 20 + [pb.DUPLICATE] * 20 + [pb.AWARDED] * 10
    assert {(await balance(points, e.user_id)) for e in again} == {10}


async def test_record_many_keeps_requests_under_the_byte_limit(api: Api, proxy: FaultProxy) -> None:
    async with PointsClient(
        f"127.0.0.1:{proxy.port}", tenant_id=api.tenant, request_bytes_max=20_000
    ) as small:
        events = [
            small.event(
                user_id=f"u{i}", action="feature.first_use", attributes={"feature": f"x{i:0>200}"}
            )
            for i in range(300)
        ]
        results = await small.record_many(events)
    sizes = [len(r) for r in proxy.requests("RecordActivities")]
    assert len(sizes) > 1 and max(sizes) <= 20_000
    assert [r.event_id for r in results] == [e.event_id for e in events]
    assert {r.outcome for r in results} == {pb.AWARDED}


async def test_the_batcher_sends_when_full(points: PointsClient, proxy: FaultProxy) -> None:
    async with Batcher(points, max_events=10, max_delay_s=60) as batcher:
        events = file_events(points, 25)
        futures = [await batcher.add(e) for e in events]
        results = await asyncio.wait_for(asyncio.gather(*futures[:20]), 10)
        assert [len(c) for c in proxy.events("RecordActivities")] == [10, 10]
    assert [len(c) for c in proxy.events("RecordActivities")] == [10, 10, 5]  # flushed on exit
    results += [f.result() for f in futures[20:]]
    assert [r.event_id for r in results] == [e.event_id for e in events]


async def test_the_batcher_sends_after_max_delay(points: PointsClient, proxy: FaultProxy) -> None:
    async with Batcher(points, max_events=500, max_delay_s=0.05) as batcher:
        futures = [await batcher.add(e) for e in file_events(points, 3)]
        results = await asyncio.wait_for(asyncio.gather(*futures), 10)  # no flush: the timer
        assert [r.outcome for r in results] == [pb.AWARDED] * 3
        assert [len(c) for c in proxy.events("RecordActivities")] == [3]


async def test_the_batcher_holds_callers_back_and_reports_failures(
    points: PointsClient, proxy: FaultProxy
) -> None:
    failures: list[tuple[list[str], grpc.StatusCode]] = []

    def on_error(events: object, error: BaseException) -> None:
        assert isinstance(error, grpc.aio.AioRpcError)
        failures.append(([e.event_id for e in events], error.code()))  # type: ignore[attr-defined]

    async with Batcher(
        points, max_events=5, max_pending=5, retry=NO_RETRY, on_error=on_error
    ) as batcher:
        proxy.plan("RecordActivities", Fault(None, delay_s=0.5), Fault(UNAVAILABLE))
        slow = [await batcher.add(e) for e in file_events(points, 5)]
        sixth = asyncio.create_task(
            batcher.add(points.event(event_id="x-1", user_id="x", action="file"))
        )
        await asyncio.sleep(0.2)
        assert not sixth.done() and not any(f.done() for f in slow)  # 5 pending: wait
        assert {r.outcome for r in await asyncio.gather(*slow)} == {pb.AWARDED}
        failed = await asyncio.wait_for(sixth, 5)
    with pytest.raises(grpc.aio.AioRpcError):
        failed.result()
    assert failures == [(["x-1"], UNAVAILABLE)]


# --------------------------------------------------------------------------
# Streams


async def test_the_stream_answers_each_event_in_order(points: PointsClient) -> None:
    events = file_events(points, 30)
    events[7] = points.event(event_id=events[3].event_id, user_id=events[3].user_id, action="file")
    events[9].user_id = ""  # invalid: its own REJECTED result, the stream goes on
    async with points.stream() as stream:
        for e in events:
            await stream.send(e)
        stream.end()
        results = [r async for r in stream]
    assert [r.event_id for r in results] == [e.event_id for e in events]
    assert results[7].outcome == pb.DUPLICATE and results[9].outcome == pb.REJECTED
    assert results[9].field == "user_id"
    assert [r.outcome for i, r in enumerate(results) if i not in (7, 9)] == [pb.AWARDED] * 28


async def test_streams_and_batchers_refuse_misuse(points: PointsClient) -> None:
    event = points.event(user_id="ann", action="file")
    with pytest.raises(RuntimeError, match="async with"):
        await points.stream().send(event)
    async with points.stream() as stream:
        stream.end()
        with pytest.raises(RuntimeError, match="ended"):
            await stream.send(event)
    batcher = Batcher(points)
    await batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.add(event)
    with pytest.raises(ValueError, match="max_events"):
        Batcher(points, max_events=BATCH_EVENTS_MAX + 1)


async def test_the_stream_sends_and_reads_concurrently_within_max_inflight(
    points: PointsClient,
) -> None:
    events = file_events(points, 60)

    async def source() -> AsyncIterator[pb.ActivityEvent]:
        for e in events:
            yield e

    async with points.stream(source(), max_inflight=4) as stream:
        results = [r async for r in stream]
    assert [r.event_id for r in results] == [e.event_id for e in events]
    assert stream.unanswered == []


async def test_a_broken_stream_resumes_and_resends_what_it_did_not_answer(
    points: PointsClient, proxy: FaultProxy
) -> None:
    proxy.stream_cuts.append(5)  # answer 5 is lost, then the stream breaks
    events = file_events(points, 20)
    async with points.stream(events) as stream:
        results = [r async for r in stream]
    assert stream.reconnects == 1
    assert [r.event_id for r in results] == [e.event_id for e in events]
    # The lost answer's event was recorded: resent, it comes back DUPLICATE.
    assert results[5].outcome == pb.DUPLICATE and results[5].original_outcome == pb.AWARDED
    assert proxy.stream_events(2)[0].event_id == events[5].event_id
    assert {(await balance(points, e.user_id)) for e in events} == {10}


async def test_a_stream_that_gives_up_names_what_to_send_again(
    points: PointsClient, proxy: FaultProxy
) -> None:
    proxy.stream_cuts.append(5)
    events = file_events(points, 20)
    results: list[pb.ActivityResult] = []
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async with points.stream(retry=NO_RETRY) as stream:
            for e in events:
                await stream.send(e)
            stream.end()
            async for r in stream:
                results.append(r)
    assert failed.value.code() == UNAVAILABLE
    assert [r.event_id for r in results] == [e.event_id for e in events[:5]]
    assert [e.event_id for e in stream.unanswered] == [e.event_id for e in events[5:]]
    again = await points.record_many(stream.unanswered)
    assert again[0].outcome == pb.DUPLICATE  # recorded before the answer was lost
    assert {(await balance(points, e.user_id)) for e in events} == {10}


# --------------------------------------------------------------------------
# The blocking client, the generated stubs, the docs


async def test_the_blocking_client_retries_the_same_way(api: Api, proxy: FaultProxy) -> None:
    proxy.plan("RecordActivity", Fault(UNAVAILABLE, after=True))

    def work() -> tuple[pb.ActivityResult, list[pb.ActivityResult], pb.Balance]:
        with SyncPointsClient(f"127.0.0.1:{proxy.port}", tenant_id=api.tenant, retry=FAST) as c:
            one = c.record_activity(c.event(user_id="ann", action="file"))
            many = c.record_many(
                [c.event(event_id=f"s-{i}", user_id=f"s{i}", action="file") for i in range(15)],
                batch_size=10,
            )
            return one, many, c.get_balance("ann")

    # Its own thread: the server under test runs on this event loop.
    one, many, ann = await asyncio.to_thread(work)
    sent = proxy.events("RecordActivity")
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0][0].event_id == one.event_id
    assert (one.outcome, ann.available) == (pb.DUPLICATE, 10)
    assert [len(c) for c in proxy.events("RecordActivities")] == [10, 5]
    assert [r.event_id for r in many] == [f"s-{i}" for i in range(15)]


async def test_the_generated_stubs_of_the_client_talk_to_the_server(api: Api) -> None:
    stub = client_pb_grpc.PointsServiceStub(api.channel)
    got = await stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id="nobody"))
    assert isinstance(got, pb.Balance) and got.available == 0


def _docs_example() -> types.ModuleType:
    text = (ROOT / "docs" / "client.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    module = types.ModuleType("client_example")
    exec(compile(code, "docs/client.md", "exec"), module.__dict__)
    return module


async def test_the_documented_example_runs(
    api: Api, points: PointsClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await _docs_example().main(api.target, api.tenant, api.token)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "AWARDED 2 2"
    assert printed[1:4] == [f"like-{n} AWARDED" for n in range(3)]
    assert printed[4] == "5"
    # The batcher's 1,000 messages: 10 per user at 2 points.
    assert {(await balance(points, f"user-{n}")) for n in range(100)} == {20}
    assert await balance(points, "bob") == 3


async def test_progress_and_thanks_through_both_clients(api: Api) -> None:
    target = f"127.0.0.1:{api.running.port}"
    async with PointsClient(target, tenant_id=api.tenant, token=api.token) as points:
        await points.record(event_id="p-1", user_id="ann", action="thanks_card",
                            target_user_id="bo", attributes={"message": "thanks!"})  # fmt: skip
        progress = await points.get_progress("ann")
        assert progress.user_id == "ann"
        assert await api.app.flusher.drain(30)
        cards = await points.list_thanks(pb.ListThanksRequest(tenant_id=api.tenant))
        assert [(c.sender_user_id, c.receiver_user_id, c.message) for c in cards.cards] == [
            ("ann", "bo", "thanks!")
        ]

    def blocking() -> tuple[pb.Progress, pb.ListThanksResponse]:
        with SyncPointsClient(target, tenant_id=api.tenant, token=api.token) as c:
            return c.get_progress("bo"), c.list_thanks(
                pb.ListThanksRequest(tenant_id=api.tenant, user_id="bo")
            )

    progress_bo, cards_bo = await asyncio.to_thread(blocking)
    assert progress_bo.user_id == "bo" and len(cards_bo.cards) == 1
