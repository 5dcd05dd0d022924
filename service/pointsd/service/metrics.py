"""Prometheus metrics, exported per process role (docs/metrics.md).

Roles: `server` (a `pointsd serve` process or worker: RPCs, events, the award
store) and `flusher` (the ledger flusher: rows, lag, dead letters, outbox
lengths). A process with the inline flusher has both. The metric objects
exist in every process (recording is cheap and needs no wiring);
`registry_for(roles)` decides what a process exports, so a server never shows
empty flush metrics and a flusher never shows RPC metrics: one owner per name.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import platform
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from pointsd.service.domain import Outcome, Role
from pointsd.storage.errors import StorageError
from pointsd.storage.keys import Shard
from pointsd.storage.redis.outbox import Outbox

if TYPE_CHECKING:
    from pointsd.service.ingest import EventResult

__all__ = [
    "FLUSHER",
    "OTHER_ACTION",
    "SERVER",
    "EventMeter",
    "FlushMeter",
    "RpcMeter",
    "count_store_error",
    "observe_award_round_trip",
    "registry_for",
    "roles_of",
    "serve_metrics",
    "shard_label",
    "watch_outbox",
]

log = logging.getLogger("pointsd.metrics")

SERVER = "server"
FLUSHER = "flusher"
# The label value of an action no rule knows: caller input must not create series.
OTHER_ACTION = "_other"
_OUTBOX_INTERVAL_S = 5.0
_DEAD_REASONS = ("malformed", "refused", "conflict")
# Shards measured concurrently: a few at a time, so the flusher's own reads
# never wait long for a pooled connection.
_OUTBOX_CONCURRENCY = 16

# --- server ---------------------------------------------------------------

RPC_REQUESTS = Counter(
    "points_rpc_requests_total",
    "RPCs finished, by service, method and status code (CANCELLED and DEADLINE_EXCEEDED too)",
    ["service", "method", "code"],
    registry=None,
)
RPC_SECONDS = Histogram(
    "points_rpc_duration_seconds",
    "Time in the handler, by service, method and status code (streams: the whole stream)",
    ["service", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=None,
)
EVENTS = Counter(
    "points_events_total",
    "Events answered, by outcome and action",
    ["outcome", "action"],
    registry=None,
)
CREDITS = Counter(
    "points_credits_total",
    "Credits (one per credited user of an event), by outcome, action and credit_role",
    # Not `role`: that names the process role (points_build_info, scrape targets).
    ["outcome", "action", "credit_role"],
    registry=None,
)
AWARD_SECONDS = Histogram(
    "points_award_lua_seconds",
    "One pipelined Redis round trip of award.lua calls",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=None,
)
AWARD_BATCH = Histogram(
    "points_award_lua_batch_ops",
    "Credit operations per award.lua call",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    registry=None,
)
# Shared by both roles, each with its own `op` values.
STORE_ERRORS = Counter(
    "points_store_errors_total",
    "Store failures seen, by store (redis, postgresql) and operation",
    ["store", "op"],
    registry=None,
)

# --- flusher --------------------------------------------------------------

FLUSH_ROWS = Counter(
    "points_flush_rows_total",
    "Ledger rows committed: inserted, or duplicate (already in the ledger: a redelivery)",
    ["result"],
    registry=None,
)
FLUSH_BATCHES = Counter("points_flush_batches_total", "Ledger batches committed", registry=None)
FLUSH_LAG = Histogram(
    "points_flush_lag_seconds",
    "From award (recorded_at) to ledger row committed",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    registry=None,
)
FLUSH_DEAD = Counter(
    "points_flush_dead_letters_total",
    "Outbox entries parked in a dead-letter stream, by reason",
    ["reason"],
    registry=None,
)
FLUSH_FAILURES = Counter(
    "points_flush_failures_total",
    "Flush attempts that failed (store unreachable or erroring); retried with backoff",
    registry=None,
)
OUTBOX_LENGTH = Gauge(
    "points_outbox_length",
    "Entries in the outbox stream of a shard (tenant:index), measured every 5 s",
    ["shard"],
    registry=None,
)


class GrpcCoreCalls(Collector):
    """gRPC core's own call counts for the servers of this process (channelz),
    read at scrape time. They see what no handler can: calls gRPC sheds while
    more than `grpc.server.max_pending_requests` wait to be picked up (the
    client gets CANCELLED) and calls whose deadline passes before a handler
    runs (DEADLINE_EXCEEDED). Such a call is started but neither succeeded
    nor failed, so started - succeeded - failed counts them (plus the calls
    in flight). Health and reflection calls are included."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = _channelz_server_calls()
        if totals is None:
            return
        family = CounterMetricFamily(
            "points_grpc_core_calls",
            "Calls as gRPC core counts them for this process's servers (channelz), "
            "by state: started, succeeded, failed",
            labels=["state"],
        )
        for state, value in totals.items():
            family.add_metric([state], value)
        yield family


def _channelz_server_calls() -> dict[str, float] | None:
    # grpcio exposes channelz only through its Cython layer (what the
    # grpcio-channelz servicer calls); a grpcio without it exports nothing.
    try:
        cygrpc = importlib.import_module("grpc._cython.cygrpc")
        servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
    except Exception:
        return None
    totals = {"started": 0.0, "succeeded": 0.0, "failed": 0.0}
    for server in servers:
        data = server.get("data", {})
        for state, key in (("started", "callsStarted"), ("succeeded", "callsSucceeded"),
                           ("failed", "callsFailed")):  # fmt: skip
            totals[state] += float(data.get(key, 0))
    return totals


GRPC_CORE_CALLS = GrpcCoreCalls()

_ROLE_METRICS: dict[str, tuple[Any, ...]] = {
    SERVER: (
        RPC_REQUESTS,
        RPC_SECONDS,
        EVENTS,
        CREDITS,
        AWARD_SECONDS,
        AWARD_BATCH,
        GRPC_CORE_CALLS,
    ),
    FLUSHER: (FLUSH_ROWS, FLUSH_BATCHES, FLUSH_LAG, FLUSH_DEAD, FLUSH_FAILURES, OUTBOX_LENGTH),
}
_SHARED = (STORE_ERRORS,)


def roles_of(flusher: str) -> list[str]:
    """The roles of a `serve` process with POINTS_FLUSHER=`flusher`."""
    return [SERVER, FLUSHER] if flusher == "inline" else [SERVER]


def _build_info() -> dict[str, str]:
    try:
        mine = version("pointsd")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        mine = "unknown"
    return {"version": mine, "python": platform.python_version(), "grpc": grpc.__version__}


def registry_for(roles: Sequence[str]) -> CollectorRegistry:
    """What a process of these roles exports: their metrics, the process,
    platform and GC collectors, and points_build_info (one series per role)."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    info = Gauge(
        "points_build_info",
        "1 per role of this process, with the versions it runs",
        ["version", "role", "python", "grpc"],
        registry=registry,
    )
    build = _build_info()
    for role in roles:
        info.labels(role=role, **build).set(1)
        for metric in _ROLE_METRICS[role]:
            registry.register(metric)
    if roles:
        for metric in _SHARED:
            registry.register(metric)
    return registry


def serve_metrics(port: int, host: str, roles: Sequence[str]) -> WSGIServer:
    """Metrics of `roles` on host:port (the host gRPC listens on: loopback
    stays private). Port 0 picks a free one (server.server_port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry_for(roles))
    return server


# --- recording ------------------------------------------------------------


def _store_of(exc: StorageError) -> str:
    return exc.store or "unknown"


def count_store_error(exc: StorageError, op: str) -> None:
    STORE_ERRORS.labels(_store_of(exc), op).inc()


class RpcMeter:
    """The request counter and latency histogram of one method, with its
    label children bound once per status code (labels() costs more than an
    increment)."""

    __slots__ = ("_by_code", "method", "service")

    def __init__(self, service: str, method: str) -> None:
        self.service = service
        self.method = method
        self._by_code: dict[grpc.StatusCode, tuple[Any, Any]] = {}

    def observe(self, code: grpc.StatusCode, seconds: float) -> None:
        pair = self._by_code.get(code)
        if pair is None:
            labels = (self.service, self.method, code.name)
            pair = self._by_code[code] = (RPC_REQUESTS.labels(*labels), RPC_SECONDS.labels(*labels))
        pair[0].inc()
        pair[1].observe(seconds)


class EventMeter:
    """Counts events and their credits by outcome and action. Actions outside
    `actions` (the rule book's) count as OTHER_ACTION."""

    def __init__(self, actions: Iterable[str]) -> None:
        self._known = frozenset(actions)
        self._events: dict[tuple[Outcome, str], Any] = {}
        self._credits: dict[tuple[Outcome, str, Role], Any] = {}

    def count(self, actions: Sequence[str], results: Sequence[EventResult]) -> None:
        """One call's events: summed here first, so a batch of 1,000 costs a
        few counter increments (each takes a lock), not 1,000 or more."""
        events: dict[tuple[Outcome, str], int] = {}
        credits: dict[tuple[Outcome, str, Role], int] = {}
        known = self._known
        for action, result in zip(actions, results, strict=True):
            label = action if action in known else OTHER_ACTION
            key = (result.outcome, label)
            events[key] = events.get(key, 0) + 1
            for credit in result.credits:
                ckey = (credit.outcome, label, credit.role)
                credits[ckey] = credits.get(ckey, 0) + 1
        for key, n in events.items():
            child = self._events.get(key)
            if child is None:
                child = self._events[key] = EVENTS.labels(key[0].name, key[1])
            child.inc(n)
        for ckey, n in credits.items():
            cchild = self._credits.get(ckey)
            if cchild is None:
                outcome, label, role = ckey
                cchild = self._credits[ckey] = CREDITS.labels(
                    outcome.name, label, role.name.lower()
                )
            cchild.inc(n)


def observe_award_round_trip(seconds: float, call_ops: Sequence[int]) -> None:
    """AwardStore's observer: one round trip and the size of each of its calls."""
    AWARD_SECONDS.observe(seconds)
    for ops in call_ops:
        AWARD_BATCH.observe(ops)


class FlushMeter:
    """The flusher's observer (pointsd.storage.flusher.FlushObserver)."""

    def __init__(self) -> None:
        self._inserted = FLUSH_ROWS.labels("inserted")
        self._duplicate = FLUSH_ROWS.labels("duplicate")
        # Every reason's series from the start, at 0: Prometheus sees the
        # first parked entry as an increase (alerts.yml PointsdDeadLetters).
        self._dead = {r: FLUSH_DEAD.labels(r) for r in _DEAD_REASONS}

    def flushed(self, inserted: int, duplicates: int, lag_ms: Sequence[int]) -> None:
        FLUSH_BATCHES.inc()
        self._inserted.inc(inserted)
        self._duplicate.inc(duplicates)
        for lag in lag_ms:
            FLUSH_LAG.observe(lag / 1000)

    def parked(self, reason: str, count: int) -> None:
        if count:
            self._dead[reason].inc(count)

    def failed(self, exc: StorageError) -> None:
        FLUSH_FAILURES.inc()
        count_store_error(exc, "flush")


def shard_label(shard: Shard) -> str:
    return f"{shard.tenant_id}:{shard.index}"


async def measure_outbox(outbox: Outbox, shards: Sequence[Shard]) -> bool:
    """Set points_outbox_length of every shard; False if Redis failed."""
    try:
        for start in range(0, len(shards), _OUTBOX_CONCURRENCY):
            chunk = shards[start : start + _OUTBOX_CONCURRENCY]
            lengths = await asyncio.gather(*(outbox.backlog([s]) for s in chunk))
            for shard, length in zip(chunk, lengths, strict=True):
                OUTBOX_LENGTH.labels(shard_label(shard)).set(length)
    except StorageError as exc:
        count_store_error(exc, "outbox_length")
        return False
    return True


async def watch_outbox(
    outbox: Outbox,
    shards: Callable[[], Sequence[Shard]],
    stop: asyncio.Event,
    interval_s: float = _OUTBOX_INTERVAL_S,
) -> None:
    """The flusher role's outbox lengths, until `stop`. Its own loop, not the
    flush loop's: the lengths matter most while writes are failing."""
    while not stop.is_set():
        try:
            await measure_outbox(outbox, list(shards()))
        except Exception:
            # A bug here must not end the flusher it runs beside.
            log.exception("measuring the outbox lengths failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
