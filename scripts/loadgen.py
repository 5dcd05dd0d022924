"""Load generation shared by `scripts/loadtest.py` and `scripts/bench.py`.

Traffic: IM-like events from a seeded RNG (Zipf-skewed users, an action mix,
targets for likes/thanks/replies, re-delivered duplicates, heavy users that
run into caps). Runners: unary, batch and stream, closed-loop (max
throughput) or open-loop (a fixed arrival rate; latency is measured from the
scheduled send time, so a slow server cannot hide queueing). Every loop is
bounded in events and in seconds.

Errors are counted in events, by kind (a gRPC status name, or
CLIENT_OVERLOADED for arrivals the open loop dropped itself); `ERROR_KINDS`
says what each kind means, and the reports print that beside the count.

Importing this module checks that the load tools (the `loadtest` extra:
hdrh, matplotlib, psycopg_pool, and psutil from `dev`) are installed, and
exits 2 with one line naming the install command if not: every entry script
(loadtest, bench, bench_boards, crosscheck) imports it before anything that
needs them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import importlib.util
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
from scripts.tokens import aio_channel

__all__ = [
    "DEFAULT_MIX",
    "ERROR_KINDS",
    "LOAD_TOOLS",
    "PROGRESSION_MIX",
    "RunResult",
    "Stats",
    "Traffic",
    "TrafficSpec",
    "explain_error",
    "missing_load_tools",
    "parse_mix",
    "require_load_tools",
    "run_load",
]

# Modules of the `loadtest` extra (and psutil, of `dev`) the load tools import.
LOAD_TOOLS = ("hdrh", "matplotlib", "psycopg_pool", "psutil")
INSTALL_HINT = "the load tools need the dev install: run ./scripts/install dev"


def missing_load_tools() -> list[str]:
    missing = []
    for name in LOAD_TOOLS:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_load_tools() -> None:
    """Exit 2 with one line when the load tools are not installed: a runtime
    install (`scripts/install` without `dev`) lacks them, and a traceback
    ending in ModuleNotFoundError would not say what to run."""
    missing = missing_load_tools()
    if missing:
        sys.stderr.write(f"{INSTALL_HINT} (missing: {', '.join(missing)})\n")
        raise SystemExit(2)


require_load_tools()

# What each error kind means, for the reports. Every gRPC status is here
# (tests/test_scripts.py checks it) because a failed call counts as its code.
_MAYBE = "the event may or may not have been applied (the self-check leaves it out)"
ERROR_KINDS: dict[str, str] = {
    "CLIENT_OVERLOADED": (
        "dropped by the load generator itself, never sent: the open loop already had "
        "its in-flight cap of calls out (--inflight-max), so the server never saw these "
        "events; the client or the server cannot keep up with --rate"
    ),
    "CANCELLED": (
        "the server's gRPC layer cancelled the call before an answer, mostly before any "
        "pointsd code saw it (so the server's own counters miss it): more calls were "
        "waiting to be taken up than gRPC queues (grpc.server.max_pending_requests, "
        "default 1,000), i.e. the server is overloaded; also a call cut off by shutdown; "
        "not the generator's deadline (that is DEADLINE_EXCEEDED); counted as in doubt"
    ),
    "DEADLINE_EXCEEDED": (
        f"the generator gave up waiting: no answer within its deadline (--timeout); {_MAYBE}"
    ),
    "UNAVAILABLE": (
        "the server refused the call or is gone: nothing listening, connection lost, "
        "shutting down, Redis unreachable, or a rebuild owns the tenant"
    ),
    "RESOURCE_EXHAUSTED": (
        "the server refused for lack of room: a shard's outbox is full (PostgreSQL is "
        "behind or down) or the message is too big; nothing was recorded"
    ),
    "INVALID_ARGUMENT": (
        "the server rejected the event: unknown tenant (not in its rule file), a bad id, "
        "an event too old for its clock, or a missing field"
    ),
    "ALREADY_EXISTS": "the event id was used before for a different event (ids collide)",
    "NOT_FOUND": "the server does not know a tenant, board or item the request names",
    "FAILED_PRECONDITION": "the server's state refuses the request (see its log)",
    "ABORTED": "the server aborted on a concurrent change; a retry would do",
    "OUT_OF_RANGE": "a value the server takes only within limits was outside them",
    "PERMISSION_DENIED": "the server refused the caller's permission",
    "UNAUTHENTICATED": "the server wants credentials the generator does not send",
    "UNIMPLEMENTED": "the target does not serve this method: is it a pointsd?",
    "INTERNAL": "a server bug or a store refusing data: the server's log has details",
    "UNKNOWN": "the server's handler raised an unexpected error: the server's log has it",
    "DATA_LOSS": "the server reported unrecoverable data loss",
    "OK": "the call ended with status OK but without the answer it owed",
}


def explain_error(kind: str) -> str:
    return ERROR_KINDS.get(kind, "an error this table does not know (see the server's log)")


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
# The progression benchmark's mix (scripts/bench.py): DEFAULT_MIX with some of
# its text messages moved to the actions only tasks pay for or count (advanced
# features used, votes started, a created group's member count), so that
# daily, weekly and growth tasks, levels and badges all get work. Used with
# TrafficSpec.groups_per_user > 1, for the "speak in several groups" task.
PROGRESSION_MIX = {
    **DEFAULT_MIX,
    "message.text": 45.0,
    "feature.use": 6.0,
    "vote.start": 2.0,
    "group.members": 2.0,
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
    # Groups a user writes in: 1 (the default) is always the same one; more
    # spreads each event over that many (weekly "speak in N groups" tasks).
    groups_per_user: int = 1


class Traffic:
    """A deterministic event sequence for a spec (same seed, same events).
    Re-deliveries are drawn from the last `REDELIVERY_WINDOW` new events."""

    REDELIVERY_WINDOW = 2048

    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        weights = [1 / (k**spec.zipf_s) for k in range(1, spec.users + 1)]
        self._user_cum = list(itertools.accumulate(weights))
        self._actions = list(spec.mix)
        self._action_cum = list(itertools.accumulate(spec.mix.values()))
        self._seq = itertools.count()
        self._recent: deque[pb.ActivityEvent] = deque(maxlen=self.REDELIVERY_WINDOW)
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
        group = actor % 97
        if spec.groups_per_user > 1:
            # Only then a draw: the default traffic stays the same sequence.
            group = (group + 7 * self.rng.randrange(spec.groups_per_user)) % 97
        event = pb.ActivityEvent(
            tenant_id=tenant,
            event_id=f"{spec.run_id}-{n}",
            user_id=f"{spec.run_id}-u{actor}",
            action=action,
            occurred_at=ts,
            group_id=f"{spec.run_id}-g{group}",
            department_id=f"d{actor % 13}",
        )
        if action in _TARGETED or (action == "reply" and self.rng.random() < 0.5):
            target = self._user()
            if target == actor:
                target = (actor + 1) % spec.users
            event.target_user_id = f"{spec.run_id}-u{target}"
        if action == "online":
            event.quantity = self.rng.choice((5, 10, 15, 30))
        elif action in ("feature.first_use", "feature.use"):
            event.attributes["feature"] = self.rng.choice(_FEATURES)
        elif action == "group.members":
            # A created group's member count now; some pass 50 (a growth task).
            event.quantity = self.rng.randint(2, 60)
        self._recent.append(event)
        return event

    def batch(self, size: int, now_ms: int) -> list[pb.ActivityEvent]:
        return [self.next_event(now_ms) for _ in range(size)]


class Stats:
    """Outcomes, errors and latency (HDR histogram, µs), overall and per second.

    `errors` counts events by kind (a failed batch counts its events, a failed
    stream the events it had in flight, at least one), `failed_calls` the
    calls. The first answer for an event says what the ledger holds for it
    (an award, or a DUPLICATE repeating one); later answers and failures of
    re-deliveries change nothing. `in_doubt` holds the ids of events sent in
    a failed call and never answered: the server may have applied them.
    `answer_memory` bounds how many answered ids are remembered; it must
    cover the re-delivery window plus the events in flight."""

    def __init__(self, answer_memory: int = 1 << 18) -> None:
        from hdrh.histogram import HdrHistogram

        self._new_hist = lambda: HdrHistogram(1, 120_000_000, 3)
        self.hist = self._new_hist()
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.failed_calls: Counter[str] = Counter()
        self.events = 0
        self.sent = 0
        self.rpcs = 0
        self.awarded_points = 0
        self.in_doubt: set[str] = set()
        self._answered: dict[str, None] = {}
        self._answer_memory = answer_memory
        self.start = time.monotonic()
        self.timeline: list[dict[str, Any]] = []
        self._second = 0
        self._sec_hist = self._new_hist()
        self._sec_events = 0
        self._sec_errors: Counter[str] = Counter()

    def _tick(self, now: float) -> None:
        second = int(now - self.start)
        while second > self._second:
            self.timeline.append(
                {
                    "t": self._second,
                    "events": self._sec_events,
                    "errors": sum(self._sec_errors.values()),
                    "errors_by_kind": dict(self._sec_errors),
                    "p50_ms": self._sec_hist.get_value_at_percentile(50) / 1000,
                    "p99_ms": self._sec_hist.get_value_at_percentile(99) / 1000,
                }
            )
            self._second += 1
            self._sec_hist = self._new_hist()
            self._sec_events = 0
            self._sec_errors = Counter()

    def flush(self, now: float) -> None:
        """Close the timeline's last full seconds (quiet ones included)."""
        self._tick(now)

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
            self._learn(r)

    def _learn(self, r: Any) -> None:
        if r.event_id in self._answered:
            return
        self._answered[r.event_id] = None
        if len(self._answered) > self._answer_memory:
            del self._answered[next(iter(self._answered))]
        self.in_doubt.discard(r.event_id)
        if r.outcome == pb.AWARDED or (
            r.outcome == pb.DUPLICATE and r.original_outcome == pb.AWARDED
        ):
            self.awarded_points += r.points

    def error(
        self, kind: str, events: list[pb.ActivityEvent], now: float, *, sent: bool = True
    ) -> None:
        """A failed call (`sent`) or an arrival dropped before sending."""
        self._tick(now)
        n = max(1, len(events))
        self.errors[kind] += n
        self.failed_calls[kind] += 1
        self._sec_errors[kind] += n
        if sent:
            answered = self._answered
            self.in_doubt.update(e.event_id for e in events if e.event_id not in answered)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def attempted(self) -> int:
        """Events answered plus events that failed or were dropped."""
        return self.events + self.error_count

    def error_rate(self) -> float:
        return self.error_count / self.attempted if self.attempted else 0.0

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
    inflight_max: int = 0

    @property
    def events_per_s(self) -> float:
        return self.stats.events / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict[str, Any]:
        """`events` are the answered ones; `errors` counts events by kind,
        explained in `error_meanings`; `error_rate` = errors / attempted."""
        s = self.stats
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "batch": self.batch if self.mode == "batch" else None,
            "target_rate": self.rate or None,
            "achieved_rate": round(self.events_per_s, 1),
            "inflight_max": self.inflight_max if self.rate and self.mode != "stream" else None,
            "duration_s": round(self.duration_s, 3),
            "attempted": s.attempted,
            "sent": s.sent,
            "events": s.events,
            "events_per_s": round(self.events_per_s, 1),
            "rpcs": s.rpcs,
            "rpcs_per_s": round(s.rpcs / self.duration_s, 1) if self.duration_s else 0,
            "outcomes": dict(s.outcomes),
            "errors": dict(s.errors),
            "failed_calls": dict(s.failed_calls),
            "error_rate": round(s.error_rate(), 6),
            "error_meanings": {k: explain_error(k) for k in s.errors},
            "in_doubt": len(s.in_doubt),
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


def progress_line(stats: Stats, now: float, rate: float, target_rate: float) -> str:
    """elapsed, events sent / answered, the recent rate, errors by kind, p99."""
    target = f" (target {target_rate:,.0f})" if target_rate else ""
    kinds = ", ".join(f"{k} {v:,}" for k, v in stats.errors.most_common())
    p99 = stats.hist.get_value_at_percentile(99) / 1000
    return (
        f"[{now - stats.start:6.1f}s] sent {stats.sent:,} answered {stats.events:,}  "
        f"{rate:,.0f} ev/s{target}  errors {stats.error_count:,}"
        + (f" ({kinds})" if kinds else "")
        + f"  p99 {p99:.2f} ms"
    )


async def _progress(
    stats: Stats, stop: asyncio.Event, mode: str, interval_s: float, target_rate: float
) -> None:
    """A terminal ("live") gets one line rewritten every second; a pipe or a
    CI log ("plain"), where carriage returns pile up, a new line every
    `interval_s`."""
    if mode not in ("live", "plain") or (mode == "plain" and interval_s <= 0):
        return
    every = 1.0 if mode == "live" else interval_s
    last_events, last_t = 0, time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        now = time.monotonic()
        rate = (stats.events - last_events) / max(1e-9, now - last_t)
        last_events, last_t = stats.events, now
        line = progress_line(stats, now, rate, target_rate)
        sys.stderr.write(f"\r{line} " if mode == "live" else f"{line}\n")
        sys.stderr.flush()
    if mode == "live":
        sys.stderr.write("\n")


RpcCall = Callable[[list[pb.ActivityEvent]], Awaitable[Any]]


async def _call(
    stats: Stats, events: list[pb.ActivityEvent], call: RpcCall, t_sched: float
) -> None:
    stats.sent += len(events)
    try:
        results = await call(events)
    except grpc.aio.AioRpcError as exc:
        stats.error(exc.code().name, events, time.monotonic())
        return
    now = time.monotonic()
    stats.record(results, (now - t_sched) * 1e6, now)


def _calls(mode: str, stubs: Iterator[Any], count: int, timeout_s: float) -> list[RpcCall]:
    def unary_call(stub: Any) -> RpcCall:
        async def call(events: list[pb.ActivityEvent]) -> Any:
            return [await stub.RecordActivity(events[0], timeout=timeout_s)]

        return call

    def batch_call(stub: Any) -> RpcCall:
        async def call(events: list[pb.ActivityEvent]) -> Any:
            req = pb.RecordActivitiesRequest(events=events)
            return (await stub.RecordActivities(req, timeout=timeout_s)).results

        return call

    make = unary_call if mode == "unary" else batch_call
    return [make(next(stubs)) for _ in range(count)]


@dataclass(frozen=True)
class _Shape:
    mode: str
    concurrency: int
    batch: int
    rate: float
    inflight_max: int
    timeout_s: float

    def events_in_flight(self) -> int:
        """At most this many events are out at once."""
        if self.mode == "stream":
            return self.concurrency * max(1, self.batch)
        calls = self.inflight_max if self.rate > 0 else self.concurrency
        return calls * (1 if self.mode == "unary" else self.batch)


async def _drive(
    shape: _Shape, stubs: Iterator[Any], stats: Stats, traffic: Traffic, budget: _Budget
) -> None:
    if shape.mode in ("unary", "batch"):
        per_rpc = 1 if shape.mode == "unary" else shape.batch
        calls = _calls(shape.mode, stubs, shape.concurrency, shape.timeout_s)
        if shape.rate > 0:
            await _open_loop(stats, traffic, budget, calls, per_rpc, shape.rate, shape.inflight_max)
        else:
            await _closed_loop(stats, traffic, budget, calls, per_rpc)
    elif shape.mode == "stream":
        rate, window = shape.rate / shape.concurrency, max(1, shape.batch)
        await asyncio.gather(
            *(
                _stream_worker(next(stubs), stats, traffic, budget, rate, window)
                for _ in range(shape.concurrency)
            )
        )
    else:
        raise ValueError(f"unknown mode {shape.mode!r}")


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
    progress: str = "off",
    progress_interval_s: float = 5.0,
    timeout_s: float = 30.0,
    inflight_max: int = 0,
    token: str = "",
) -> RunResult:
    """Drive `target` (host:port) with `spec` traffic; bounded by `duration_s`
    and `events_max`. `token`: sent as `authorization: Bearer` with every
    call (a token with the ingest role; empty for POINTS_AUTH=off). `rate` > 0
    means open-loop at that many events/s, with at most `inflight_max` calls
    out (0: 64 per caller). `progress` is "off", "live" (a terminal) or
    "plain" (a line every `progress_interval_s`)."""
    traffic = Traffic(spec)
    shape = _Shape(mode, concurrency, batch, rate, inflight_max or 64 * concurrency, timeout_s)
    stats = Stats(answer_memory=4 * (Traffic.REDELIVERY_WINDOW + shape.events_in_flight()))
    budget = _Budget(events_max, duration_s)
    # A local subchannel pool per channel: otherwise channels to one target
    # share one TCP connection, and SO_REUSEPORT workers could not split it.
    options = [("grpc.use_local_subchannel_pool", 1)]
    chans = [
        aio_channel(target, token, options) if token else grpc.aio.insecure_channel(target, options)
        for _ in range(max(1, channels))
    ]
    stubs = itertools.cycle([pb_grpc.PointsServiceStub(c) for c in chans])
    stop = asyncio.Event()
    progress_task = asyncio.create_task(_progress(stats, stop, progress, progress_interval_s, rate))
    started = time.monotonic()
    stats.start = started
    try:
        await _drive(shape, stubs, stats, traffic, budget)
    finally:
        elapsed = time.monotonic() - started
        stats.flush(time.monotonic())
        stop.set()
        await progress_task
        for c in chans:
            await c.close()
    return RunResult(mode, elapsed, stats, traffic, concurrency, batch, rate, shape.inflight_max)


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
    limit: int,
) -> None:
    """Send per_rpc events every per_rpc/rate seconds, whatever the answers do.
    In-flight RPCs are bounded by `limit`; past that, arrivals are dropped
    and counted as CLIENT_OVERLOADED instead of piling up without bound."""
    interval = per_rpc / rate
    in_flight: set[asyncio.Task[None]] = set()
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
            stats.error("CLIENT_OVERLOADED", events, time.monotonic(), sent=False)
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
            stats.sent += 1
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
        await _both_or_neither(call, writer(), reader())
    except grpc.aio.AioRpcError as exc:
        stats.error(exc.code().name, [e for _, e in sent], time.monotonic())


async def _both_or_neither(call: Any, *halves: Awaitable[None]) -> None:
    """Run a stream's writer and reader; when one fails, cancel the call and
    the other half, which would otherwise wait on a stream that is over."""
    tasks = [asyncio.ensure_future(h) for h in halves]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        call.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
