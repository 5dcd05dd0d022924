"""Load generation shared by `scripts/loadtest.py` and `scripts/bench.py`.

Traffic: IM-like events from a seeded RNG (Zipf-skewed users, an action mix,
targets for likes/thanks/replies, re-delivered duplicates, heavy users that
run into caps). Runners: unary, batch and stream, closed-loop (max
throughput) or open-loop (a fixed arrival rate; latency is measured from the
scheduled send time, so a slow server cannot hide queueing). Every loop is
bounded in events and in seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_MIX",
    "RunResult",
    "Stats",
    "Traffic",
    "TrafficSpec",
    "parse_mix",
    "run_load",
]

DEFAULT_MIX = {
    "message.text": 55.0,
    "reply": 10.0,
    "like": 10.0,
    "file": 5.0,
    "image": 3.0,
    "message.voice": 3.0,
    "thanks_card": 2.0,
    "login": 5.0,
    "online": 4.0,
    "vote": 1.5,
    "feature.first_use": 1.5,
}
_TARGETED = {"like", "thanks_card", "invite"}
_FEATURES = ["calendar", "docs", "meeting", "approval", "wiki", "task", "drive", "mail"]
_OUTCOME_NAMES = {v: k for k, v in pb.Outcome.items()}


def parse_mix(text: str) -> dict[str, float]:
    """ "message.text=60,like=10" -> {"message.text": 60.0, "like": 10.0}."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        mix[name.strip()] = float(weight or 1)
    return mix


@dataclass(frozen=True)
class TrafficSpec:
    tenants: list[str]
    users: int = 10_000
    zipf_s: float = 1.1
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    dup_rate: float = 0.02
    seed: int = 1
    # Prefix of every user and event id, so runs never collide.
    run_id: str = "run"


class Traffic:
    """A deterministic event sequence for a spec (same seed, same events)."""

    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        weights = [1 / (k**spec.zipf_s) for k in range(1, spec.users + 1)]
        self._user_cum = list(itertools.accumulate(weights))
        self._actions = list(spec.mix)
        self._action_cum = list(itertools.accumulate(spec.mix.values()))
        self._seq = itertools.count()
        self._recent: deque[pb.ActivityEvent] = deque(maxlen=2048)
        self.generated = 0
        self.duplicates = 0

    def _user(self) -> int:
        total = self._user_cum[-1]
        return bisect.bisect_left(self._user_cum, self.rng.random() * total)

    def next_event(self, now_ms: int) -> pb.ActivityEvent:
        self.generated += 1
        if self._recent and self.rng.random() < self.spec.dup_rate:
            self.duplicates += 1
            return self._recent[self.rng.randrange(len(self._recent))]
        spec = self.spec
        n = next(self._seq)
        tenant = spec.tenants[n % len(spec.tenants)]
        actor = self._user()
        action = self._actions[
            bisect.bisect_left(self._action_cum, self.rng.random() * self._action_cum[-1])
        ]
        ts = Timestamp()
        ts.FromMilliseconds(now_ms)
        event = pb.ActivityEvent(
            tenant_id=tenant,
            event_id=f"{spec.run_id}-{n}",
            user_id=f"{spec.run_id}-u{actor}",
            action=action,
            occurred_at=ts,
            group_id=f"{spec.run_id}-g{actor % 97}",
            department_id=f"d{actor % 13}",
        )
        if action in _TARGETED or (action == "reply" and self.rng.random() < 0.5):
            target = self._user()
            if target == actor:
                target = (actor + 1) % spec.users
            event.target_user_id = f"{spec.run_id}-u{target}"
        if action == "online":
            event.quantity = self.rng.choice((5, 10, 15, 30))
        elif action == "feature.first_use":
            event.attributes["feature"] = self.rng.choice(_FEATURES)
        self._recent.append(event)
        return event

    def batch(self, size: int, now_ms: int) -> list[pb.ActivityEvent]:
        return [self.next_event(now_ms) for _ in range(size)]


class Stats:
    """Outcomes, errors and latency (HDR histogram, µs), overall and per second."""

    def __init__(self) -> None:
        from hdrh.histogram import HdrHistogram

        self._new_hist = lambda: HdrHistogram(1, 120_000_000, 3)
        self.hist = self._new_hist()
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.events = 0
        self.rpcs = 0
        self.awarded_points = 0
        self.in_doubt: set[str] = set()
        self.start = time.monotonic()
        self.timeline: list[dict[str, Any]] = []
        self._second = 0
        self._sec_hist = self._new_hist()
        self._sec_events = 0
        self._sec_errors = 0

    def _tick(self, now: float) -> None:
        second = int(now - self.start)
        while second > self._second:
            self.timeline.append(
                {
                    "t": self._second,
                    "events": self._sec_events,
                    "errors": self._sec_errors,
                    "p50_ms": self._sec_hist.get_value_at_percentile(50) / 1000,
                    "p99_ms": self._sec_hist.get_value_at_percentile(99) / 1000,
                }
            )
            self._second += 1
            self._sec_hist = self._new_hist()
            self._sec_events = self._sec_errors = 0

    def record(self, results: Any, latency_us: float, now: float) -> None:
        self._tick(now)
        self.rpcs += 1
        lat = max(1, int(latency_us))
        self.hist.record_value(lat)
        self._sec_hist.record_value(lat)
        for r in results:
            self.events += 1
            self._sec_events += 1
            name = _OUTCOME_NAMES.get(r.outcome, str(r.outcome))
            self.outcomes[name] += 1
            if r.outcome == pb.AWARDED:
                self.awarded_points += r.points
            elif r.outcome == pb.DUPLICATE and r.event_id in self.in_doubt:
                # A retry after an error: the first attempt was applied.
                self.in_doubt.discard(r.event_id)
                if r.original_outcome == pb.AWARDED:
                    self.awarded_points += r.points

    def error(self, code: str, events: list[pb.ActivityEvent], now: float) -> None:
        self._tick(now)
        self.errors[code] += 1
        self._sec_errors += 1
        self.in_doubt.update(e.event_id for e in events)

    def latency_ms(self) -> dict[str, float]:
        h = self.hist
        return {
            "p50": h.get_value_at_percentile(50) / 1000,
            "p90": h.get_value_at_percentile(90) / 1000,
            "p99": h.get_value_at_percentile(99) / 1000,
            "p99.9": h.get_value_at_percentile(99.9) / 1000,
            "max": h.get_max_value() / 1000,
        }


@dataclass
class RunResult:
    mode: str
    duration_s: float
    stats: Stats
    traffic: Traffic
    concurrency: int
    batch: int
    rate: float

    @property
    def events_per_s(self) -> float:
        return self.stats.events / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "batch": self.batch if self.mode == "batch" else None,
            "target_rate": self.rate or None,
            "duration_s": round(self.duration_s, 3),
            "events": s.events,
            "events_per_s": round(self.events_per_s, 1),
            "rpcs": s.rpcs,
            "rpcs_per_s": round(s.rpcs / self.duration_s, 1) if self.duration_s else 0,
            "outcomes": dict(s.outcomes),
            "errors": dict(s.errors),
            "latency_ms": self.stats.latency_ms(),
            "awarded_points": s.awarded_points,
            "duplicates_sent": self.traffic.duplicates,
        }


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Budget:
    """Bounds a run by events and seconds."""

    def __init__(self, events: int, seconds: float) -> None:
        self.events_left = events
        self.deadline = time.monotonic() + seconds

    def take(self, n: int) -> int:
        if time.monotonic() >= self.deadline or self.events_left <= 0:
            return 0
        n = min(n, self.events_left)
        self.events_left -= n
        return n


async def _progress(stats: Stats, stop: asyncio.Event, enabled: bool) -> None:
    if not enabled:
        return
    last_events, last_t = 0, time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        now = time.monotonic()
        rate = (stats.events - last_events) / max(1e-9, now - last_t)
        last_events, last_t = stats.events, now
        p99 = stats.hist.get_value_at_percentile(99) / 1000
        errors = sum(stats.errors.values())
        sys.stderr.write(
            f"\r[{now - stats.start:6.1f}s] {rate:9,.0f} ev/s  total {stats.events:>10,}  "
            f"errors {errors:>6,}  p99 {p99:8.2f} ms "
        )
        sys.stderr.flush()
    sys.stderr.write("\n")


RpcCall = Callable[[list[pb.ActivityEvent]], Awaitable[Any]]


async def _call(
    stats: Stats, events: list[pb.ActivityEvent], call: RpcCall, t_sched: float
) -> None:
    try:
        results = await call(events)
    except grpc.aio.AioRpcError as exc:
        stats.error(exc.code().name, events, time.monotonic())
        return
    now = time.monotonic()
    stats.record(results, (now - t_sched) * 1e6, now)


async def run_load(
    target: str,
    spec: TrafficSpec,
    *,
    mode: str = "batch",
    concurrency: int = 16,
    batch: int = 500,
    rate: float = 0.0,
    duration_s: float = 10.0,
    events_max: int = 10_000_000,
    channels: int = 4,
    progress: bool = False,
    timeout_s: float = 30.0,
) -> RunResult:
    """Drive `target` (host:port) with `spec` traffic; bounded by `duration_s`
    and `events_max`. `rate` > 0 means open-loop at that many events/s."""
    traffic = Traffic(spec)
    stats = Stats()
    budget = _Budget(events_max, duration_s)
    # A local subchannel pool per channel: otherwise channels to one target
    # share one TCP connection, and SO_REUSEPORT workers could not split it.
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, channels))
    ]
    stubs = [pb_grpc.PointsServiceStub(c) for c in chans]
    stubs_cycle = itertools.cycle(stubs)
    stop = asyncio.Event()
    progress_task = asyncio.create_task(_progress(stats, stop, progress))
    started = time.monotonic()
    stats.start = started

    def unary_call(stub: Any) -> RpcCall:
        async def call(events: list[pb.ActivityEvent]) -> Any:
            return [await stub.RecordActivity(events[0], timeout=timeout_s)]

        return call

    def batch_call(stub: Any) -> RpcCall:
        async def call(events: list[pb.ActivityEvent]) -> Any:
            req = pb.RecordActivitiesRequest(events=events)
            return (await stub.RecordActivities(req, timeout=timeout_s)).results

        return call

    per_rpc = 1 if mode == "unary" else batch
    try:
        if mode in ("unary", "batch"):
            calls = [
                (unary_call if mode == "unary" else batch_call)(next(stubs_cycle))
                for _ in range(concurrency)
            ]
            if rate > 0:
                await _open_loop(stats, traffic, budget, calls, per_rpc, rate, concurrency)
            else:
                await _closed_loop(stats, traffic, budget, calls, per_rpc)
        elif mode == "stream":
            await asyncio.gather(
                *(
                    _stream_worker(
                        next(stubs_cycle),
                        stats,
                        traffic,
                        budget,
                        rate / concurrency,
                        window=max(1, batch),
                    )
                    for _ in range(concurrency)
                )
            )
        else:
            raise ValueError(f"unknown mode {mode!r}")
    finally:
        elapsed = time.monotonic() - started
        stop.set()
        await progress_task
        for c in chans:
            await c.close()
    return RunResult(mode, elapsed, stats, traffic, concurrency, batch, rate)


async def _closed_loop(
    stats: Stats, traffic: Traffic, budget: _Budget, calls: list[RpcCall], per_rpc: int
) -> None:
    async def worker(call: RpcCall) -> None:
        while n := budget.take(per_rpc):
            events = traffic.batch(n, _now_ms())
            await _call(stats, events, call, time.monotonic())

    await asyncio.gather(*(worker(c) for c in calls))


async def _open_loop(
    stats: Stats,
    traffic: Traffic,
    budget: _Budget,
    calls: list[RpcCall],
    per_rpc: int,
    rate: float,
    concurrency: int,
) -> None:
    """Send per_rpc events every per_rpc/rate seconds, whatever the answers do.
    In-flight RPCs are bounded by 64 x concurrency; past that, arrivals are
    counted as CLIENT_OVERLOADED instead of piling up without bound."""
    interval = per_rpc / rate
    in_flight: set[asyncio.Task[None]] = set()
    limit = 64 * concurrency
    start = time.monotonic()
    call_cycle = itertools.cycle(calls)
    for i in itertools.count():
        t_sched = start + i * interval
        delay = t_sched - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        n = budget.take(per_rpc)
        if not n:
            break
        events = traffic.batch(n, _now_ms())
        if len(in_flight) >= limit:
            stats.error("CLIENT_OVERLOADED", [], time.monotonic())
            continue
        task = asyncio.create_task(_call(stats, events, next(call_cycle), t_sched))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)


async def _stream_worker(
    stub: Any, stats: Stats, traffic: Traffic, budget: _Budget, rate: float, window: int
) -> None:
    """One bidi stream: at most `window` events in flight; results arrive in
    order, so a FIFO of send times gives each event's latency."""
    sent: deque[tuple[float, pb.ActivityEvent]] = deque()
    room = asyncio.Semaphore(window)
    call = stub.StreamActivities()

    async def writer() -> None:
        start = time.monotonic()
        for i in itertools.count():
            if not budget.take(1):
                break
            await room.acquire()
            t_sched = time.monotonic()
            if rate > 0:
                t_sched = start + i / rate
                delay = t_sched - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            event = traffic.next_event(_now_ms())
            sent.append((t_sched, event))
            await call.write(event)
        await call.done_writing()

    async def reader() -> None:
        while True:
            result = await call.read()
            if result is grpc.aio.EOF:
                return
            t_sched, _event = sent.popleft()
            room.release()
            now = time.monotonic()
            stats.record((result,), (now - t_sched) * 1e6, now)

    try:
        await asyncio.gather(writer(), reader())
    except grpc.aio.AioRpcError as exc:
        stats.error(exc.code().name, [e for _, e in sent], time.monotonic())


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
