"""Side-by-side benchmarks in one run, on one machine, on the same events.

    python -m scripts.bench                 # human table
    python -m scripts.bench --json          # one JSON document
    python -m scripts.bench --duration 30 --workers 2
    python -m scripts.bench --only auth --json   # auth on beside auth off

Servers: REDIS_URL / DATABASE_URL when set, else embedded ones in a temporary
folder. Contenders, each run for --duration seconds (and at most --events):

1. batch ingest through the service  vs  the raw ceiling: the same award.lua
   work, pre-encoded, sent straight to Redis in pipelines (no gRPC, no
   service in between)
2. unary RecordActivity through the service  vs  a gRPC echo server on the
   same stack with the same message sizes
3. stream ingest (StreamActivities) through the service  vs  the echo
   server's StreamActivities (one canned result per event)
4. the service  vs  the naive design: one PostgreSQL transaction per credit
   with SELECT ... FOR UPDATE
5. flush lag (award -> ledger row committed) during the batch run, and the
   service's resident memory over the runs
6. with --soak S: an open-loop batch run of S seconds at --soak-rate (default
   60 % of the batch contender's rate): memory after a warm-up against its
   end, the flush lag at that sustained rate, the ledger check

Each contender prints its CPU per event by role (client, server, flusher,
Redis and PostgreSQL when on this machine, the whole machine without steal
time) and Redis's CPU per credit; `goals` lists issue 13's goals with each
figure, its bound and its verdict. --pin-client runs the client on the last
CPU and every server on the others. The bench deletes its tenants' Redis keys
and ledger rows afterwards, so runs do not make the next run's ledger bigger.

The progression group (`--progression` adds it after those, `--only
progression` runs it alone; about 4.5 minutes with the defaults, so the plain
run leaves it out): one service process whose rule file has the default rule
book twice, as rule set `default` (levels, badges, tasks and every mechanic
of `PROGRESSION_KEYS`) and as `core` (the same with `without_progression`),
half the tenants on each. Batch, unary and stream runs alternate between the
two sides for --rounds rounds, each side's order flipped every round; per
mode: the median events/s of each side, the ratio with/without against its
bound (batch >= 0.8, unary and stream >= 0.9: PASS or FAIL), the Redis time
per credit (`cmdstat_evalsha` usec / award.lua operations sent; loopback
Redis only) and the CPU per event of every process measured. `--check` exits
3 when a ratio is under its bound. docs/benchmarks.md explains the figures.

The auth group (`--auth` adds it, `--only auth` runs it alone; about 4
minutes with the defaults): two `pointsd serve` processes up together, the
same rules and settings but POINTS_AUTH=on and POINTS_AUTH=off, each side on
tenants of its own. Batch, unary and stream runs alternate between them for
--rounds rounds (--auth-duration seconds each, each side's order flipped
every round); both sides get the same client and the same bearer header (an
ingest token of the auth-on side's tenants, made with `pointsd tokens
create`, so every batch's tenants are checked; the auth-off side ignores
it). Per mode: each side's median events/s, p50/p99 latency and server CPU
per event, the ratio on/off against its bound (0.9: PASS or FAIL) and each
round's own ratio. `--check` exits 3 when a ratio is under its bound.
`--auth-control` runs the same with auth off on both sides: the spread two
identical servers show here, against which to read the real ratios.

The compiled group (`--compiled DIR` adds it, with `--only compiled` alone;
DIR is what scripts/compile prints, default build/compiled): two `pointsd
serve` processes up together, the same rules and settings, one running the
mypyc-compiled modules of DIR (PYTHONPATH) and one the checkout's pure
Python, each on tenants of its own; batch, unary and stream runs alternate
as in the auth group (--compiled-duration seconds each). Per mode: each
side's median events/s and server CPU per event, the ratio compiled/pure
against 1.0 (the compiled build must not be slower) and
`server_cpu_ratio`, pure's server CPU per event over compiled's.

The baseline group (`--baseline DIR` adds it, with `--only baseline`
alone; DIR is a checkout of another revision, e.g. `git worktree add
/tmp/base HEAD~3`): two `pointsd serve` processes up together, this
checkout's and one with DIR's `service` and `storage` first on its
PYTHONPATH, otherwise as the compiled group (--baseline-duration,
--baseline-modes); `server_cpu_ratio` is the baseline's server CPU per
event over this checkout's. A change's speed is claimed from this group:
both sides see the same machine in the same minutes.

The calls of every group carry a bearer token (auth is on by default): one
of every role and tenant, written to the server's database before it starts
(scripts/tokens.py), unless said otherwise above.

Every contender's events come from the same seeded generator; figures and
ratios are printed together, and so are the errors of any contender, each
kind with what it means (`scripts.loadgen.ERROR_KINDS`). Needs the load tools
(`./scripts/install dev`): without them it says so in one line and exits 2.

Exit status: 0 fine; 1 a ledger self-check failed; 3 (only with --check) a
progression or auth ratio under its bound; 2 bad arguments or no dev install.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import ipaddress
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from sqlalchemy import create_engine, text

from pointsd.service.clock import system_clock
from pointsd.service.config import Settings
from pointsd.service.domain import CreditOp
from pointsd.service.rules import Plan, RulesEngine, load_rule_book
from pointsd.service.rules.loader import PROGRESSION_KEYS, load_rule_file, without_progression
from pointsd.service.validation import InvalidField, Limits, event_from_pb
from pointsd.storage.keys import KeySchema, Topology
from pointsd.storage.postgres import migrate, sqlalchemy_url
from pointsd.storage.redis import AwardStore, connect_redis
from pointsd.storage.redis.codec import APPLY, CallEncoder

# Before scripts.naive (psycopg_pool): exits 2 when the load tools are missing.
from scripts.loadgen import (
    DEFAULT_MIX,
    PROGRESSION_MIX,
    RunResult,
    Traffic,
    TrafficSpec,
    explain_error,
    run_load,
)
from scripts.loadtest import RssSampler, resolve_servers, wait_for_ledger
from scripts.naive import run_naive
from scripts.procs import ROOT, ServerProcess, free_port, pointsd_env, run_cli, write_rules

__all__ = ["main"]

_LIMITS = Limits(
    event_max_age_s=72 * 3600, event_future_skew_s=300, attributes_max=16, quantity_max=100_000
)


def _spec(prefix: str, tenants: list[str], users: int, seed: int) -> TrafficSpec:
    return TrafficSpec(
        tenants=tenants,
        users=users,
        mix=dict(DEFAULT_MIX),
        dup_rate=0.02,
        seed=seed,
        run_id=f"{prefix}{time.strftime('%H%M%S')}",
    )


def _engine(rules: Path) -> tuple[RulesEngine, Topology]:
    book = load_rule_book(rules)
    engine = RulesEngine(book, state_retention_s=3 * 86400, dedup_retention_s=4 * 86400)
    topology = Topology(KeySchema("pts"), {t.tenant_id: t.shards for t in book.tenants.values()})
    return engine, topology


def planned_ops(engine: RulesEngine, messages: Iterable[Any], now_ms: int) -> list[CreditOp]:
    """The credit operations the service would send to award.lua for these
    events: validated and planned as it does, invalid and unruled ones left out."""
    ops: list[CreditOp] = []
    for msg in messages:
        try:
            event = event_from_pb(msg, now_ms, _LIMITS)
        except InvalidField:
            continue
        planned = engine.plan(event, recorded_at_ms=now_ms)
        if isinstance(planned, Plan):
            ops.extend(planned.ops)
    return ops


def ops_per_call() -> int:
    """Credits per award.lua call of the service the bench starts (its
    environment's POINTS_INGEST_OPS_PER_CALL_MAX, or the default)."""
    return int(os.environ.get("POINTS_INGEST_OPS_PER_CALL_MAX", Settings().ingest_ops_per_call_max))


def _raw_trips(ops: list[Any], topology: Topology) -> list[tuple[list[Any], int]]:
    """The calls of the raw ceiling, in round trips, with their credits."""
    # The same chunking the service uses: up to ops_per_call() credits per
    # call, grouped by shard, and a round trip of at most
    # ops_per_round_trip_max credits.
    per_call = ops_per_call()
    per_trip_ops = Settings().ingest_ops_per_round_trip_max
    by_shard: dict[Any, list[int]] = {}
    for i, op in enumerate(ops):
        by_shard.setdefault(topology.user_shard(op.tenant_id, op.user_id), []).append(i)
    calls = []
    sizes = []
    now_s = system_clock() // 1000
    for shard, idx in by_shard.items():
        for s in range(0, len(idx), per_call):
            encoder = CallEncoder(shard, APPLY, now_s, 0)
            for i in idx[s : s + per_call]:
                encoder.add(ops[i])
            calls.append(encoder.call())
            sizes.append(len(idx[s : s + per_call]))
    trips: list[tuple[list[Any], int]] = []
    trip: list[Any] = []
    credits = 0
    for call, size in zip(calls, sizes, strict=True):
        if trip and credits + size > per_trip_ops:
            trips.append((trip, credits))
            trip, credits = [], 0
        trip.append(call)
        credits += size
    if trip:
        trips.append((trip, credits))
    return trips


async def raw_ceiling(
    redis_url: str,
    rules: Path,
    spec: TrafficSpec,
    events: int,
    duration_s: float,
    connections: int = 4,
    stats: CommandStats | None = None,
) -> dict[str, Any]:
    """award.lua on the same kind of events, pre-encoded, pipelined straight to
    Redis: the physical limit of this design here (and, on loopback, Redis's
    CPU per credit, the ceiling's own cost)."""
    engine, topology = _engine(rules)
    now_ms = int(time.time() * 1000)
    ops = planned_ops(engine, Traffic(spec).batch(events, now_ms), now_ms)
    redis = connect_redis(redis_url, pool_max=connections * 2)
    store = AwardStore(redis, topology, clock=system_clock, outbox_entries_max=0)
    await store.start()
    trips = _raw_trips(ops, topology)
    trip_queue = list(reversed(trips))
    done_ops = 0
    deadline = time.monotonic() + duration_s

    async def worker() -> None:
        nonlocal done_ops
        while trip_queue and time.monotonic() < deadline:
            trip, credits = trip_queue.pop()
            await store.script.run_many(redis, trip)
            done_ops += credits

    started = time.monotonic()
    redis_before = stats.cpu_s() if stats is not None else 0.0
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - started
    redis_cpu = stats.cpu_s() - redis_before if stats is not None else None
    await redis.aclose()
    credits_per_event = len(ops) / max(1, events)
    out: dict[str, Any] = {
        "events_per_s": round(done_ops / credits_per_event / elapsed, 1),
        "credits_per_s": round(done_ops / elapsed, 1),
        "duration_s": round(elapsed, 3),
        "credits": done_ops,
    }
    if redis_cpu is not None and done_ops:
        out["redis_cpu_us_per_credit"] = round(redis_cpu * 1e6 / done_ops, 1)
    return out


def flush_lag(database_url: str, tenants: list[str], run_id: str) -> dict[str, Any]:
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), "
                    "percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), max(lag), count(*) "
                    "FROM (SELECT EXTRACT(EPOCH FROM flushed_at - recorded_at) * 1000 AS lag "
                    "FROM ledger_entries WHERE tenant_id = ANY(:t) AND user_id LIKE :p) x"
                ),
                {"t": tenants, "p": f"{run_id}-u%"},
            ).one()
    finally:
        engine.dispose()
    return {
        "p50_ms": round(float(row[0] or 0), 1),
        "p99_ms": round(float(row[1] or 0), 1),
        "max_ms": round(float(row[2] or 0), 1),
        "rows": int(row[3]),
    }


def cleanup_tenants(redis_url: str, tenants: list[str]) -> None:
    import redis as sync_redis

    r = sync_redis.Redis.from_url(redis_url)
    try:
        for t in tenants:
            keys = list(r.scan_iter(match=f"pts:{{{t}:*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])
    finally:
        r.close()


def cleanup_ledger(database_url: str, tenants: list[str]) -> None:
    """Delete the ledger rows of the bench's own tenants: runs reuse the
    tenant ids, and a ledger that grows by every run's rows makes each
    run's inserts dearer than the last's (bigger indexes), so runs of
    different days would not compare."""
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM ledger_entries WHERE tenant_id = ANY(:t)"), {"t": tenants}
            )
    finally:
        engine.dispose()


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def run_core(
    ns: argparse.Namespace, report: dict[str, Any], tmp: Path, servers: tuple[str, str]
) -> None:
    """The contenders 1-5 (module docstring) into `report`."""
    redis_url, database_url = servers
    data_dir = tmp / "data"
    tenants = [f"bench-{i}" for i in range(ns.tenants)]
    raw_tenants = [f"benchraw-{i}" for i in range(ns.tenants)]
    rules = write_rules(tmp / "rules.yaml", {t: {"shards": ns.shards} for t in tenants})
    # The raw ceiling's tenants are not the server's: its flusher would move
    # their outbox entries into PostgreSQL during the raw run, taking CPU
    # from the Redis it measures.
    raw_rules = write_rules(tmp / "raw-rules.yaml", {t: {"shards": ns.shards} for t in raw_tenants})
    cleanup_ledger(database_url, tenants + raw_tenants)
    metrics = _free_ports(ns.workers + 1)
    env = pointsd_env(
        redis_url, database_url, rules, data_dir,
        POINTS_WORKERS=str(ns.workers), POINTS_METRICS_PORT=str(metrics),
    )  # fmt: skip
    server = ServerProcess(env, free_port(), tmp / "pointsd.log")
    metrics_ports = [metrics + i for i in range(ns.workers)]
    stats = CommandStats(redis_url) if is_loopback(redis_url) else None
    # A socket path (the embedded server) or a loopback address.
    pg_url = database_url.replace("postgresql+psycopg://", "postgresql://")
    pg_local = not urlsplit(pg_url).hostname or is_loopback(pg_url)
    echo_port = free_port()
    echo = ServerProcess(
        env,
        echo_port,
        tmp / "echo.log",
        argv=[sys.executable, "-m", "scripts.echo_server", "--listen", f"127.0.0.1:{echo_port}"],
    )
    results: dict[str, Any] = report.setdefault("results", {})
    memory: list[dict[str, Any]] = []
    try:
        server.start()
        echo.start()
        if ns.pin_client:
            report["pinning"] = pin_client_apart([server.pid, echo.pid], redis_url)

        # The echo server ignores the token; sending it there too keeps the
        # client's work the same on both sides.
        token = server.token

        def load(name: str, target: str, spec: TrafficSpec, **kw: Any) -> Any:
            service = target == server.target
            before = _costs(
                server.pid if service else echo.pid, stats, metrics_ports, service, pg_local
            )
            res = asyncio.run(
                run_load(
                    target, spec, duration_s=ns.duration, events_max=ns.events, token=token, **kw
                )
            )
            after = _costs(
                server.pid if service else echo.pid, stats, metrics_ports, service, pg_local
            )
            s = res.summary()
            results[name] = {
                "events_per_s": s["events_per_s"],
                "latency_ms": s["latency_ms"],
                "errors": s["errors"],
                "error_rate": s["error_rate"],
                "events": s["events"],
                **_cost_figures(before, after, max(1, s["events"])),
            }
            return res

        # 1. batch through the service, with the flusher writing meanwhile.
        spec = _spec("bb", tenants, ns.users, 1)
        with RssSampler(server.pid) as rss:
            res = load(
                "batch_service",
                server.target,
                spec,
                mode="batch",
                concurrency=ns.batch_concurrency,
                batch=ns.batch,
            )
        check = wait_for_ledger(database_url, tenants, spec.run_id, res.stats.awarded_points, 120)
        results["batch_service"]["self_check_ok"] = check["ok"]
        results["flush_lag"] = flush_lag(database_url, tenants, spec.run_id)
        memory.append({"run": "batch", **rss.summary(warmup_s=min(5, ns.duration / 2))})
        # ... vs the same Lua work straight on Redis.
        raw_events = max(10_000, int(results["batch_service"]["events_per_s"] * ns.duration * 2))
        results["raw_ceiling"] = asyncio.run(
            raw_ceiling(
                redis_url,
                raw_rules,
                _spec("rw", raw_tenants, ns.users, 1),
                min(raw_events, ns.events),
                ns.duration,
                stats=stats,
            )
        )
        cleanup_tenants(redis_url, raw_tenants)

        # 2. unary through the service vs the echo server.
        with RssSampler(server.pid) as rss:
            load(
                "unary_service",
                server.target,
                _spec("uu", tenants, ns.users, 2),
                mode="unary",
                concurrency=ns.unary_concurrency,
            )
        memory.append({"run": "unary", **rss.summary(warmup_s=min(5, ns.duration / 2))})
        load(
            "unary_echo",
            echo.target,
            _spec("ue", tenants, ns.users, 2),
            mode="unary",
            concurrency=ns.unary_concurrency,
        )

        # 3. stream through the service vs the echo server's stream.
        load(
            "stream_service",
            server.target,
            _spec("ss", tenants, ns.users, 3),
            mode="stream",
            concurrency=ns.streams,
            batch=ns.stream_window,
        )
        load(
            "stream_echo",
            echo.target,
            _spec("se", tenants, ns.users, 3),
            mode="stream",
            concurrency=ns.streams,
            batch=ns.stream_window,
        )

        # 4. (--soak) memory and flush lag over a long batch run at a rate
        # the service sustains, below its measured maximum.
        if ns.soak > 0:
            batch_rate = results["batch_service"]["events_per_s"]
            results["soak"] = soak(ns, server, tenants, database_url, token, batch_rate)

        # 5. the naive per-event transaction design.
        naive_spec = _spec("nv", tenants, ns.users, 4)
        naive_events = Traffic(naive_spec).batch(
            min(ns.events, max(2000, int(2000 * ns.duration))), int(time.time() * 1000)
        )
        engine, _ = _engine(rules)
        results["naive_postgres"] = asyncio.run(
            run_naive(
                database_url.replace("postgresql+psycopg://", "postgresql://"),
                engine,
                naive_events,
                _LIMITS,
                concurrency=ns.naive_concurrency,
                duration_s=ns.duration,
            )
        )
    finally:
        unpin()
        echo.terminate()
        server.terminate()
        if stats is not None:
            stats.close()
        cleanup_tenants(redis_url, tenants + raw_tenants)
        cleanup_ledger(database_url, tenants + raw_tenants)
    r = results
    report["memory"] = memory
    report["ratios"] = ratios = {
        "batch_vs_raw_ceiling": _ratio(
            r["batch_service"]["events_per_s"], r["raw_ceiling"]["events_per_s"]
        ),
        "unary_vs_echo": _ratio(
            r["unary_service"]["events_per_s"], r["unary_echo"]["events_per_s"]
        ),
        "stream_vs_echo": _ratio(
            r["stream_service"]["events_per_s"], r["stream_echo"]["events_per_s"]
        ),
        "batch_vs_naive_postgres": _ratio(
            r["batch_service"]["events_per_s"], r["naive_postgres"]["events_per_s"]
        ),
        "unary_vs_naive_postgres": _ratio(
            r["unary_service"]["events_per_s"], r["naive_postgres"]["events_per_s"]
        ),
        "unary_p99_vs_echo_p99": _ratio(
            r["unary_service"]["latency_ms"]["p99"], r["unary_echo"]["latency_ms"]["p99"]
        ),
    }
    report["goals"] = core_goals(r, ratios)


# Issue 13's goals for the core contenders: (name, figure, bound, sense).
# ">=" the figure must reach the bound, "<=" / "<" stay within it.
CORE_GOALS: tuple[tuple[str, str, float, str], ...] = (
    ("batch ÷ raw Lua ceiling", "batch_vs_raw_ceiling", 0.8, ">="),
    ("stream ÷ echo stream", "stream_vs_echo", 0.8, ">="),
    ("unary ÷ echo, 64 callers", "unary_vs_echo", 0.8, ">="),
    ("unary p99 ÷ echo p99", "unary_p99_vs_echo_p99", 2.0, "<"),
    ("batch ÷ naive PostgreSQL", "batch_vs_naive_postgres", 20.0, ">="),
    ("server CPU µs per batch event", "batch_server_cpu_us", 25.0, "<="),
    ("machine CPU µs per batch event", "batch_machine_cpu_us", 80.0, "<="),
    ("Redis CPU µs per credit (batch)", "batch_redis_cpu_us_per_credit", 20.0, "<="),
    ("flush lag p99 ms, sustained batch", "flush_lag_p99_ms", 1000.0, "<"),
    ("soak: memory growth %", "soak_rss_growth_pct", 10.0, "<="),
)


def core_goals(r: dict[str, Any], ratios: dict[str, float | None]) -> dict[str, Any]:
    """Every goal with its figure, bound and verdict (None: not measured,
    e.g. Redis counters of a non-loopback Redis, or no --soak)."""
    batch_cpu = r["batch_service"].get("cpu_us_per_event", {})
    figures: dict[str, float | None] = {
        **ratios,
        "batch_server_cpu_us": batch_cpu.get("server"),
        "batch_machine_cpu_us": batch_cpu.get("machine"),
        "batch_redis_cpu_us_per_credit": r["batch_service"].get("redis_cpu_us_per_credit"),
        # Sustained load: the soak's open loop at a rate the service keeps
        # up with. Without a soak, the closed-loop batch run's, which drives
        # the service past what it sustains (its queues, and the lag, grow).
        "flush_lag_p99_ms": r.get("soak", r).get("flush_lag", {}).get("p99_ms"),
        "soak_rss_growth_pct": r.get("soak", {}).get("memory", {}).get("rss_growth_pct"),
    }
    goals = []
    for name, key, bound, sense in CORE_GOALS:
        value = figures.get(key)
        ok = None
        if value is not None:
            ok = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[sense]
        goals.append(
            {
                "goal": name,
                "figure": key,
                "value": value,
                "bound": bound,
                "sense": sense,
                "pass": ok,
            }
        )
    return {"goals": goals, "met": sum(1 for g in goals if g["pass"]), "of": len(goals)}


def soak(
    ns: argparse.Namespace,
    server: ServerProcess,
    tenants: list[str],
    database_url: str,
    token: str,
    batch_rate: float,
) -> dict[str, Any]:
    """A batch run of ns.soak seconds, open loop at ns.soak_rate events/s
    (0: 60 % of batch_rate, the batch contender's): the service's resident memory
    after a warm-up (a fifth of the run, at most 60 s) against its end, the
    flush lag, and the ledger check."""
    rate = ns.soak_rate or max(500.0, 0.6 * batch_rate)
    spec = _spec("sk", tenants, ns.users, 5)
    with RssSampler(server.pid) as rss:
        res = asyncio.run(
            run_load(
                server.target, spec, mode="batch", concurrency=ns.batch_concurrency,
                batch=ns.batch, rate=rate, duration_s=ns.soak, events_max=ns.events * 10,
                token=token,
            )
        )  # fmt: skip
    s = res.summary()
    check = wait_for_ledger(database_url, tenants, spec.run_id, res.stats.awarded_points, 300)
    return {
        "duration_s": ns.soak,
        "target_rate": rate,
        "events_per_s": s["events_per_s"],
        "events": s["events"],
        "errors": s["errors"],
        "latency_ms": s["latency_ms"],
        "memory": rss.summary(warmup_s=min(60.0, ns.soak / 5)),
        "flush_lag": flush_lag(database_url, tenants, spec.run_id),
        "self_check_ok": check["ok"],
    }


# --- the progression group ------------------------------------------------

# Rule set of each side; bounds of with / without per mode (issue 11).
PROGRESSION_SIDES = {"with": "default", "without": "core"}
PROGRESSION_BOUNDS = {"batch": 0.8, "unary": 0.9, "stream": 0.9}
_GROUPS_PER_USER = 4


def write_progression_rules(path: Path, sides: dict[str, list[str]], shards: int) -> Path:
    """The default rule book as `default` and, without the progression
    blocks, as `core`; each side's tenants on its rule set."""
    doc = load_rule_file(None)
    full = doc["rule_sets"]["default"]
    core = without_progression({"rule_sets": {"core": copy.deepcopy(full)}})["rule_sets"]["core"]
    doc["rule_sets"]["core"] = core
    doc["tenants"] = [
        {"id": t, "timezone": "Asia/Shanghai", "shards": shards, "rule_set": rule_set}
        for side, rule_set in PROGRESSION_SIDES.items()
        for t in sides[side]
    ]
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def _costs(
    pid: int,
    stats: CommandStats | None,
    metrics_ports: list[int],
    service: bool,
    pg_local: bool = False,
) -> dict[str, Any]:
    """CPU seconds so far by role (this process = the client; the server
    and its flusher; Redis, on loopback; PostgreSQL's processes, when it is
    on this machine; the whole machine, every process included) and, for the
    service, the credit operations sent to award.lua."""
    import psutil

    times = psutil.Process().cpu_times()
    out: dict[str, Any] = {"client": times.user + times.system}
    if service:
        out.update(service_cpu_s(pid))
        out["credits"] = award_ops(metrics_ports)[0]
    else:
        try:
            t = psutil.Process(pid).cpu_times()
            out["server"] = t.user + t.system
        except psutil.Error:
            pass
    if stats is not None:
        out["redis"] = stats.cpu_s()
    if pg_local:
        out["postgres_by_pid"] = postgres_cpu_s()
    out["machine"] = machine_cpu_s()
    return out


def postgres_cpu_s() -> dict[int, float]:
    """CPU seconds so far of each of this machine's PostgreSQL processes
    (the postmaster, its workers, the backends alive now), by pid."""
    import psutil

    out: dict[int, float] = {}
    for proc in _postgres_processes():
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
    return out


def _postgres_processes() -> list[Any]:
    """This machine's PostgreSQL processes (the embedded server's too)."""
    import psutil

    return [
        p
        for p in psutil.process_iter(["name"])
        if (p.info["name"] or "").startswith(("postgres", "pgserver"))
    ]


def _cost_figures(before: dict[str, Any], after: dict[str, Any], events: int) -> dict[str, Any]:
    """µs of CPU per event by role, and Redis's µs per credit operation."""
    per_event = {
        role: round((after[role] - before[role]) * 1e6 / events, 1)
        for role in after
        if role not in ("credits", "postgres_by_pid") and role in before
    }
    if "postgres_by_pid" in after and "postgres_by_pid" in before:
        # Per process: a backend that ended during the run takes its CPU
        # with it (so this is a lower bound), one that started counts whole.
        was = before["postgres_by_pid"]
        used = sum(cpu - was.get(pid, 0.0) for pid, cpu in after["postgres_by_pid"].items())
        per_event["postgres"] = round(max(0.0, used) * 1e6 / events, 1)
    out: dict[str, Any] = {"cpu_us_per_event": per_event}
    credits = after.get("credits", 0.0) - before.get("credits", 0.0)
    if credits > 0 and "redis" in after:
        out["credits"] = int(credits)
        out["redis_cpu_us_per_credit"] = round(
            (after["redis"] - before["redis"]) * 1e6 / credits, 1
        )
    return out


def machine_cpu_s() -> float:
    """CPU seconds the machine's processes used: user, nice, system and
    interrupts. Not idle or I/O wait, and not steal: on a virtual machine
    that is time the host gave to another guest, no process of this one
    (guest time is already inside user)."""
    import psutil

    m = psutil.cpu_times()
    return sum(getattr(m, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def is_loopback(redis_url: str) -> bool:
    """A unix socket or a loopback address: a Redis of this machine, whose
    statistics a benchmark may reset."""
    url = urlsplit(redis_url)
    if url.scheme == "unix":
        return True
    host = url.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CommandStats:
    """CONFIG RESETSTAT before a run, INFO commandstats after it."""

    def __init__(self, redis_url: str) -> None:
        import redis as sync_redis

        self._redis = sync_redis.Redis.from_url(redis_url)

    def reset(self) -> None:
        self._redis.config_resetstat()

    def read(self) -> dict[str, dict[str, float]]:
        return dict(self._redis.info("commandstats"))

    def cpu_s(self) -> float:
        """Redis's own CPU so far (user + system): unlike the usec of
        commandstats, which are wall time, it does not grow when another
        process takes Redis's core."""
        cpu = self._redis.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def version(self) -> str:
        return str(self._redis.info("server").get("redis_version", "?"))

    def close(self) -> None:
        self._redis.close()


# pid -> the CPUs it had before pin_client_apart: servers the bench did not
# start (the machine's Redis and PostgreSQL) get them back afterwards.
_PINNED: dict[int, set[int]] = {}


def unpin() -> None:
    for pid, cpus in _PINNED.items():
        with contextlib.suppress(PermissionError, ProcessLookupError):
            os.sched_setaffinity(pid, cpus)
    _PINNED.clear()


def pin_client_apart(server_pids: list[int], redis_url: str) -> dict[str, Any]:
    """Pin this process (the load generator and the raw ceiling's client) to
    the last CPU and the servers (`server_pids` and their children, a
    loopback Redis, every local PostgreSQL process) to the others, so no
    contender's client takes its server's CPU."""
    import psutil

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"pinned": False, "why": "one CPU: nothing to pin apart"}
    client, servers = {cpus[-1]}, set(cpus[:-1])
    pids: set[int] = set()
    for pid in server_pids:
        root = psutil.Process(pid)
        pids.update(p.pid for p in (root, *root.children(recursive=True)))
    if is_loopback(redis_url):
        import redis as sync_redis

        r = sync_redis.Redis.from_url(redis_url)
        try:
            pids.add(int(r.info("server")["process_id"]))
        finally:
            r.close()
    pids.update(proc.pid for proc in _postgres_processes())
    pinned = 0
    for pid in pids:
        try:
            _PINNED[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, servers)
            pinned += 1
        except (PermissionError, ProcessLookupError):
            pass
    _PINNED[os.getpid()] = os.sched_getaffinity(0)
    os.sched_setaffinity(0, client)
    return {"pinned": True, "client_cpus": sorted(client), "server_cpus": sorted(servers),
            "server_processes": pinned}  # fmt: skip


def service_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds so far of `pointsd serve` (pid) and its children, by role:
    the flusher (a `pointsd ... flush` child) and the server (the rest)."""
    import psutil

    out = {"server": 0.0, "flusher": 0.0}
    root = psutil.Process(pid)
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
            role = "flusher" if "flush" in proc.cmdline() else "server"
        except psutil.Error:
            continue
        out[role] += times.user + times.system
    return out


def award_ops(ports: list[int]) -> tuple[float, float]:
    """(credit operations sent to award.lua, award.lua calls) so far: the
    sum and count of `points_award_lua_batch_ops` over the server processes."""
    ops = calls = 0.0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        for line in body.splitlines():
            name, _, value = line.partition(" ")
            if name == "points_award_lua_batch_ops_sum":
                ops += float(value)
            elif name == "points_award_lua_batch_ops_count":
                calls += float(value)
    return ops, calls


def _free_ports(n: int) -> int:
    """A port p with p .. p+n-1 free (the metrics ports of serve's processes)."""
    for _ in range(50):
        base = free_port()
        if base + n <= 65535 and all(_port_free(base + i) for i in range(1, n)):
            return base
    raise RuntimeError(f"found no {n} consecutive free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ledger_kinds(database_url: str, tenants: list[str], run_id: str) -> dict[str, Any]:
    """The run's ledger rows, and its bonus rows by tag (a task done, a level
    reached): proof the traffic exercised the mechanics."""
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    # A bonus row's tag: "task.<id>.<period>", "level.<id>".
                    "SELECT kind, split_part(attributes->>'bonus', '.', 1) || '.' || "
                    "split_part(attributes->>'bonus', '.', 2), count(*), sum(points) "
                    "FROM ledger_entries WHERE tenant_id = ANY(:t) AND user_id LIKE :p "
                    "GROUP BY 1, 2"
                ),
                {"t": tenants, "p": f"{run_id}-u%"},
            ).all()
    finally:
        engine.dispose()
    out: dict[str, Any] = {"rows": 0, "bonus_rows": 0, "bonus_points": 0, "bonuses": {}}
    for kind, tag, n, points in rows:
        out["rows"] += int(n)
        if kind == "bonus":
            out["bonus_rows"] += int(n)
            out["bonus_points"] += int(points or 0)
            out["bonuses"][tag] = out["bonuses"].get(tag, 0) + int(n)
    return out


@dataclass
class _Group:
    """What every run of the progression group shares."""

    ns: argparse.Namespace
    target: str
    database_url: str
    sides: dict[str, list[str]]
    metrics_ports: list[int]
    stats: CommandStats | None
    stamp: str
    server_pid: int
    token: str

    def load(self, side: str, mode: str, seed: int, run_id: str, duration_s: float) -> RunResult:
        ns = self.ns
        spec = TrafficSpec(
            tenants=self.sides[side],
            users=ns.users,
            mix=dict(PROGRESSION_MIX),
            dup_rate=0.02,
            seed=seed,
            run_id=run_id,
            groups_per_user=_GROUPS_PER_USER,
        )
        shape: dict[str, Any] = {
            "batch": {"concurrency": ns.batch_concurrency, "batch": ns.batch},
            "unary": {"concurrency": ns.unary_concurrency},
            "stream": {"concurrency": ns.streams, "batch": ns.stream_window},
        }[mode]
        return asyncio.run(
            run_load(
                self.target,
                spec,
                mode=mode,
                duration_s=duration_s,
                events_max=ns.events,
                token=self.token,
                **shape,
            )
        )

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of the load generator (this process), the
        server, the flusher and (on loopback) Redis; PostgreSQL is left out."""
        import psutil

        times = psutil.Process().cpu_times()
        out = {"client": times.user + times.system, **service_cpu_s(self.server_pid)}
        if self.stats is not None:
            out["redis"] = self.stats.cpu_s()
        return out

    def run(self, side: str, mode: str, rnd: int) -> dict[str, Any]:
        """One measured run: its rate, its credits and their Redis CPU, and
        the ledger check once the flusher drained it (so that no run's
        flushing spills into the next)."""
        run_id = f"p{self.stamp}{rnd}{mode[0]}{side[0]}"
        # The same seed on both sides of a round: the same events.
        seed = 1000 + 10 * rnd + list(PROGRESSION_BOUNDS).index(mode)
        ops_before, calls_before = award_ops(self.metrics_ports)
        if self.stats is not None:
            self.stats.reset()
        cpu_before = self.cpu_s()
        res = self.load(side, mode, seed, run_id, self.ns.progression_duration)
        cpu_after = self.cpu_s()
        cmd = self.stats.read() if self.stats is not None else {}
        ops_after, calls_after = award_ops(self.metrics_ports)
        credits = int(ops_after - ops_before)
        s = res.summary()
        events = max(1, s["events"])
        # CPU per event is far less sensitive than events/s to what else
        # runs on the machine: the cost of the mechanics in another unit.
        cpu_us = {
            role: round((cpu_after[role] - cpu_before[role]) * 1e6 / events, 1)
            for role in cpu_after
        }
        cpu_us["total"] = round(sum(cpu_us.values()), 1)
        redis_cpu = cpu_after.get("redis", 0.0) - cpu_before.get("redis", 0.0)
        row: dict[str, Any] = {
            "side": side,
            "mode": mode,
            "round": rnd,
            "run_id": run_id,
            "events_per_s": s["events_per_s"],
            "events": s["events"],
            "latency_ms": {k: s["latency_ms"][k] for k in ("p50", "p99")},
            "errors": s["errors"],
            "outcomes": s["outcomes"],
            "credits": credits,
            "award_calls": int(calls_after - calls_before),
            "cpu_us_per_event": cpu_us,
        }
        if cmd:
            evalsha = cmd.get("cmdstat_evalsha", {})
            # Only the flusher's ack.lua runs XACK and XDEL: its share.
            ack_usec = sum(
                int(cmd.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("xack", "xdel")
            )
            row["redis"] = {
                "evalsha_calls": int(evalsha.get("calls", 0)),
                "evalsha_usec": int(evalsha.get("usec", 0)),
                "ack_usec": ack_usec,
                "cpu_usec": int(redis_cpu * 1e6),
                "cpu_us_per_credit": round(redis_cpu * 1e6 / credits, 2) if credits else None,
                "us_per_credit": round(int(evalsha.get("usec", 0)) / credits, 2)
                if credits
                else None,
            }
        check = wait_for_ledger(
            self.database_url, self.sides[side], run_id, res.stats.awarded_points, 120,
            res.stats.in_doubt,
        )  # fmt: skip
        row["self_check_ok"] = check["ok"]
        row["ledger"] = ledger_kinds(self.database_url, self.sides[side], run_id)
        return row


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def summarize_progression(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: each side's median events/s and Redis µs per credit, the
    ratio with/without against its bound; over all runs, each side's Redis
    µs per credit (all evalsha usec over all credits)."""
    modes: dict[str, Any] = {}
    for mode, bound in PROGRESSION_BOUNDS.items():
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        entry: dict[str, Any] = {"bound": bound}
        for side in PROGRESSION_SIDES:
            rows = [r for r in mine if r["side"] == side]
            entry[side] = {
                "events_per_s": _median([r["events_per_s"] for r in rows]),
                "runs_events_per_s": [r["events_per_s"] for r in rows],
                "redis_us_per_credit": _median(
                    [
                        r["redis"]["us_per_credit"]
                        for r in rows
                        if r.get("redis", {}).get("us_per_credit")
                    ]
                ),
                "redis_cpu_us_per_credit": _median(
                    [
                        r["redis"]["cpu_us_per_credit"]
                        for r in rows
                        if r.get("redis", {}).get("cpu_us_per_credit")
                    ]
                ),
                "server_cpu_us_per_event": _median(
                    [r["cpu_us_per_event"]["server"] for r in rows if "cpu_us_per_event" in r]
                ),
                "cpu_us_per_event": _median(
                    [r["cpu_us_per_event"]["total"] for r in rows if "cpu_us_per_event" in r]
                ),
            }
        ratio = _ratio(entry["with"]["events_per_s"] or 0, entry["without"]["events_per_s"] or 0)
        entry["ratio"] = ratio
        # What the CPU per event predicts for a CPU-bound machine: without's
        # CPU per event over with's (client, server, flusher, Redis).
        entry["cpu_ratio"] = _ratio(
            entry["without"]["cpu_us_per_event"] or 0, entry["with"]["cpu_us_per_event"] or 0
        )
        # Each round's own with/without, for the spread: the two runs of a
        # round are back to back, so they share most of the machine's drift.
        by_round: dict[int, dict[str, float]] = {}
        for r in mine:
            by_round.setdefault(r.get("round", 0), {})[r["side"]] = r["events_per_s"]
        entry["round_ratios"] = [
            _ratio(pair["with"], pair["without"])
            for _, pair in sorted(by_round.items())
            if len(pair) == 2
        ]
        entry["pass"] = ratio is not None and ratio >= bound
        modes[mode] = entry
    redis: dict[str, Any] = {}
    for side in PROGRESSION_SIDES:
        rows = [r for r in runs if r["side"] == side and "redis" in r]
        credits = sum(r["credits"] for r in rows)
        usec = sum(r["redis"]["evalsha_usec"] for r in rows)
        ack = sum(r["redis"]["ack_usec"] for r in rows)
        cpu = sum(r["redis"].get("cpu_usec", 0) for r in rows)
        redis[side] = {
            "us_per_credit": round(usec / credits, 2) if credits else None,
            "cpu_us_per_credit": round(cpu / credits, 2) if credits else None,
            # The flusher's ack.lua calls are evalsha too: XACK + XDEL inside
            # them, per credit, is most of what they add to the figure.
            "flusher_ack_us_per_credit": round(ack / credits, 2) if credits else None,
            "credits": credits,
        }
    if all(redis[s]["us_per_credit"] for s in PROGRESSION_SIDES):
        redis["with_over_without"] = _ratio(
            redis["with"]["us_per_credit"], redis["without"]["us_per_credit"]
        )
    return {
        "modes": modes,
        "redis_us_per_credit": redis,
        "all_pass": bool(modes) and all(m["pass"] for m in modes.values()),
        "self_check_ok": all(r["self_check_ok"] for r in runs),
    }


def run_progression(ns: argparse.Namespace, tmp: Path, servers: tuple[str, str]) -> dict[str, Any]:
    """The default book beside itself without the progression mechanics, in
    one service process, alternating sides (module docstring)."""
    redis_url, database_url = servers
    data_dir = tmp / "data"
    sides = {side: [f"prog{side}-{i}" for i in range(ns.tenants)] for side in PROGRESSION_SIDES}
    rules = write_progression_rules(tmp / "progression.yaml", sides, ns.shards)
    metrics = _free_ports(ns.workers + 1)
    env = pointsd_env(
        redis_url, database_url, rules, data_dir,
        POINTS_WORKERS=str(ns.workers), POINTS_METRICS_PORT=str(metrics),
    )  # fmt: skip
    server = ServerProcess(env, free_port(), tmp / "progression.log")
    stats = CommandStats(redis_url) if is_loopback(redis_url) else None
    load_before = os.getloadavg()
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    redis_version = stats.version() if stats is not None else None
    try:
        server.start()
        group = _Group(
            ns, server.target, database_url, sides,
            # A stamp of its own in every user id: no run meets another's rows.
            [metrics + i for i in range(ns.workers)], stats, uuid.uuid4().hex[:8], server.pid,
            server.token,
        )  # fmt: skip
        # Unmeasured: the first calls of each side warm its caches and pools.
        for side in PROGRESSION_SIDES:
            group.load(
                side, "batch", 1, f"pw{group.stamp}{side[0]}", min(2.0, ns.progression_duration)
            )
        for rnd in range(ns.rounds):
            order = list(PROGRESSION_SIDES)
            if rnd % 2:
                order.reverse()
            for mode in ns.progression_modes:
                for side in order:
                    runs.append(group.run(side, mode, rnd))
    finally:
        server.terminate()
        if stats is not None:
            stats.close()
        cleanup_tenants(redis_url, [t for ts in sides.values() for t in ts])
        cleanup_ledger(database_url, [t for ts in sides.values() for t in ts])
    out: dict[str, Any] = {
        "compared": {
            "with": "rule set `default`: the default rule book",
            "without": f"rule set `core`: the same without {', '.join(PROGRESSION_KEYS)}",
        },
        "settings": {
            "duration_s": ns.progression_duration,
            "rounds": ns.rounds,
            "modes": ns.progression_modes,
            "tenants_per_side": ns.tenants,
            "users": ns.users,
            "groups_per_user": _GROUPS_PER_USER,
            "mix": PROGRESSION_MIX,
            "batch": ns.batch,
            "batch_concurrency": ns.batch_concurrency,
            "unary_concurrency": ns.unary_concurrency,
            "streams": ns.streams,
            "stream_window": ns.stream_window,
            "workers": ns.workers,
        },
        "machine": {
            "redis_version": redis_version,
            # Never reset the statistics of a Redis elsewhere: others use it.
            "redis_stats": stats is not None,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "wall_s": round(time.monotonic() - started, 1),
        **summarize_progression(runs),
        "runs": runs,
    }
    return out


# --- the auth group ---------------------------------------------------------

# Each side is one `pointsd serve` with the same rules and settings but
# POINTS_AUTH; the bound of on / off per mode (issue 12).
AUTH_SIDES = ("on", "off")
AUTH_BOUNDS = {"batch": 0.9, "unary": 0.9, "stream": 0.9}


def _ingest_token(env: dict[str, str], tenants: list[str]) -> tuple[str, str]:
    """(token, token_id) of an ingest token limited to `tenants`, made with
    `pointsd tokens create` before the servers start (their first snapshot
    has it): what an IM gateway holds, so every batch's tenants are checked."""
    done = run_cli(
        ["tokens", "create", "--name", f"bench-ingest-{uuid.uuid4().hex[:6]}",
         "--roles", "ingest", "--tenants", ",".join(tenants)],
        env,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pointsd tokens create failed: {done.stderr[-2000:]}")
    token = done.stdout.strip()
    return token, token.split("_")[1]


@dataclass
class _AuthGroup:
    """What every run of the auth group shares."""

    ns: argparse.Namespace
    servers: dict[str, ServerProcess]
    tenants: dict[str, list[str]]
    database_url: str
    token: str
    stamp: str
    # The two sides (the first is the ratio's numerator) and the modes' bounds.
    sides: tuple[str, str] = AUTH_SIDES
    bounds: dict[str, float] = field(default_factory=lambda: dict(AUTH_BOUNDS))
    duration_s: float = 0.0
    # For the end of alternate(): the servers' environment (revoking the
    # token with the CLI), the token's id, and the Redis of the sides'
    # tenants ("": each side has an embedded one of its own, gone with it).
    base_env: dict[str, str] = field(default_factory=dict)
    token_id: str = ""
    redis_url: str = ""

    def alternate(self, modes: Iterable[str], warm_prefix: str) -> list[dict[str, Any]]:
        """Start both sides' servers, warm each with an unmeasured batch run
        (caches, pools, the token's scrypt check), then every mode on both
        sides for --rounds rounds, each side's order flipped every other
        round. However it ends, the servers stop, the token is revoked and
        the sides' tenants' keys and ledger rows are deleted."""
        runs: list[dict[str, Any]] = []
        tenants = [t for ts in self.tenants.values() for t in ts]
        try:
            for proc in self.servers.values():
                proc.start()
            for side in self.sides:
                warm = self.spec(side, 1, f"{warm_prefix}{self.stamp}{side[:3]}")
                self.load(side, "batch", warm, min(2.0, self.duration_s))
            for rnd in range(self.ns.rounds):
                order = self.sides if rnd % 2 == 0 else self.sides[::-1]
                for mode in modes:
                    for side in order:
                        runs.append(self.run(side, mode, rnd))
        finally:
            for proc in self.servers.values():
                if proc.proc is not None:
                    proc.terminate()
            run_cli(["tokens", "revoke", self.token_id], self.base_env)
            if self.redis_url:
                cleanup_tenants(self.redis_url, tenants)
            cleanup_ledger(self.database_url, tenants)
        return runs

    def spec(self, side: str, seed: int, run_id: str) -> TrafficSpec:
        return TrafficSpec(
            tenants=self.tenants[side],
            users=self.ns.users,
            mix=dict(DEFAULT_MIX),
            dup_rate=0.02,
            seed=seed,
            run_id=run_id,
        )

    def load(self, side: str, mode: str, spec: TrafficSpec, duration_s: float) -> RunResult:
        ns = self.ns
        shape: dict[str, Any] = {
            "batch": {"concurrency": ns.batch_concurrency, "batch": ns.batch},
            "unary": {"concurrency": ns.unary_concurrency},
            "stream": {"concurrency": ns.streams, "batch": ns.stream_window},
        }[mode]
        # Both sides get the token through the same client code, so the
        # client's work is the same and the difference is the server's (with
        # POINTS_AUTH=off the header is ignored).
        return asyncio.run(
            run_load(
                self.servers[side].target,
                spec,
                mode=mode,
                duration_s=duration_s,
                events_max=ns.events,
                token=self.token,
                **shape,
            )
        )

    def run(self, side: str, mode: str, rnd: int) -> dict[str, Any]:
        """One measured run: events/s, latency, the CPU per event of this
        process (the client) and the server's, and the ledger self-check once
        the flusher drained it (no run's flushing spills into the next)."""
        import psutil

        run_id = f"a{self.stamp}{rnd}{mode[0]}{side}"
        # The same seed on both sides of a round: the same kind of events.
        seed = 2000 + 10 * rnd + list(self.bounds).index(mode)
        pid = self.servers[side].pid

        def cpu() -> dict[str, float]:
            times = psutil.Process().cpu_times()
            return {"client": times.user + times.system, **service_cpu_s(pid)}

        before = cpu()
        res = self.load(side, mode, self.spec(side, seed, run_id), self.duration_s)
        after = cpu()
        s = res.summary()
        events = max(1, s["events"])
        cpu_us = {k: round((after[k] - before[k]) * 1e6 / events, 1) for k in after}
        cpu_us["total"] = round(sum(cpu_us.values()), 1)
        check = wait_for_ledger(
            self.database_url, self.tenants[side], run_id, res.stats.awarded_points, 120,
            res.stats.in_doubt,
        )  # fmt: skip
        return {
            "side": side,
            "mode": mode,
            "round": rnd,
            "run_id": run_id,
            "events_per_s": s["events_per_s"],
            "events": s["events"],
            "latency_ms": {k: s["latency_ms"][k] for k in ("p50", "p99")},
            "errors": s["errors"],
            "cpu_us_per_event": cpu_us,
            "self_check_ok": check["ok"],
        }


def summarize_auth(
    runs: list[dict[str, Any]],
    sides: tuple[str, str] = AUTH_SIDES,
    bounds: dict[str, float] = AUTH_BOUNDS,
) -> dict[str, Any]:
    """Per mode: each side's median events/s, p50 latency and CPU per event,
    the ratio first/second side against its bound, and each round's own ratio."""
    first, second = sides
    modes: dict[str, Any] = {}
    for mode, bound in bounds.items():
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        entry: dict[str, Any] = {"bound": bound}
        for side in sides:
            rows = [r for r in mine if r["side"] == side]
            entry[side] = {
                "events_per_s": _median([r["events_per_s"] for r in rows]),
                "runs_events_per_s": [r["events_per_s"] for r in rows],
                "p50_ms": _median([r["latency_ms"]["p50"] for r in rows]),
                "p99_ms": _median([r["latency_ms"]["p99"] for r in rows]),
                "server_cpu_us_per_event": _median([r["cpu_us_per_event"]["server"] for r in rows]),
                "cpu_us_per_event": _median([r["cpu_us_per_event"]["total"] for r in rows]),
            }
        entry["ratio"] = _ratio(
            entry[first]["events_per_s"] or 0, entry[second]["events_per_s"] or 0
        )
        # What the CPU per event predicts where the machine is the limit.
        entry["server_cpu_ratio"] = _ratio(
            entry[second]["server_cpu_us_per_event"] or 0,
            entry[first]["server_cpu_us_per_event"] or 0,
        )
        by_round: dict[int, dict[str, float]] = {}
        for r in mine:
            by_round.setdefault(r["round"], {})[r["side"]] = r["events_per_s"]
        entry["round_ratios"] = [
            _ratio(pair[first], pair[second])
            for _, pair in sorted(by_round.items())
            if len(pair) == 2
        ]
        entry["pass"] = entry["ratio"] is not None and entry["ratio"] >= bound
        modes[mode] = entry
    return {
        "modes": modes,
        "all_pass": bool(modes) and all(m["pass"] for m in modes.values()),
        "self_check_ok": all(r["self_check_ok"] for r in runs),
    }


def run_auth(ns: argparse.Namespace, tmp: Path, servers: tuple[str, str]) -> dict[str, Any]:
    """The same service with POINTS_AUTH=on beside POINTS_AUTH=off: two
    server processes up together, runs alternating between them, each
    side's order flipped every round."""
    redis_url, database_url = servers
    tenants = {side: [f"auth{side}-{i}" for i in range(ns.tenants)] for side in AUTH_SIDES}
    rules = write_rules(
        tmp / "auth.yaml", {t: {"shards": ns.shards} for ts in tenants.values() for t in ts}
    )
    base = pointsd_env(redis_url, database_url, rules, tmp / "data", POINTS_WORKERS=str(ns.workers))
    token, token_id = _ingest_token(base, tenants["on"])
    # --auth-control: both sides with auth off, the same in every other way:
    # how far apart two identical servers measure here (the noise floor).
    procs = {
        side: ServerProcess(
            {**base, "POINTS_AUTH": "off" if ns.auth_control else side},
            free_port(),
            tmp / f"auth-{side}.log",
        )
        for side in AUTH_SIDES
    }
    load_before = os.getloadavg()
    started = time.monotonic()
    group = _AuthGroup(ns, procs, tenants, database_url, token, uuid.uuid4().hex[:6],
                       duration_s=ns.auth_duration, base_env=base, token_id=token_id,
                       redis_url=redis_url)  # fmt: skip
    runs = group.alternate(ns.auth_modes, "aw")
    on = (
        "POINTS_AUTH=off as well (--auth-control: an A/A run)"
        if ns.auth_control
        else "POINTS_AUTH=on: every call's bearer token checked (an ingest token of the "
        "side's tenants: role and every event's tenant)"
    )
    return {
        "compared": {
            "on": on,
            "off": "POINTS_AUTH=off: no check; the same client sends the same header",
        },
        "control": bool(ns.auth_control),
        "settings": {
            "duration_s": ns.auth_duration,
            "rounds": ns.rounds,
            "modes": ns.auth_modes,
            "tenants_per_side": ns.tenants,
            "users": ns.users,
            "batch": ns.batch,
            "batch_concurrency": ns.batch_concurrency,
            "unary_concurrency": ns.unary_concurrency,
            "streams": ns.streams,
            "stream_window": ns.stream_window,
            "workers": ns.workers,
        },
        "machine": {
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "wall_s": round(time.monotonic() - started, 1),
        **summarize_auth(runs),
        "runs": runs,
    }


DURABILITY_SIDES = ("always", "everysec")
DURABILITY_BOUNDS = {"batch": 0.8, "unary": 0.9}


def run_durability(ns: argparse.Namespace, tmp: Path, servers: tuple[str, str]) -> dict[str, Any]:
    """POINTS_REDIS_FSYNC=always beside everysec: two `pointsd serve`
    processes up together, each on an embedded Redis of its own (its own
    data folder, AOF fsynced per the side), one PostgreSQL; runs alternate
    as in the auth group. The ratio always/everysec is what the promise
    "an answer means the award survives a host crash" costs."""
    _, database_url = servers
    sides = DURABILITY_SIDES
    tenants = {side: [f"dur{side[:3]}-{i}" for i in range(ns.tenants)] for side in sides}
    rules = write_rules(
        tmp / "durability.yaml", {t: {"shards": ns.shards} for ts in tenants.values() for t in ts}
    )
    base = pointsd_env("", database_url, rules, tmp / "data", POINTS_WORKERS=str(ns.workers))
    token, token_id = _ingest_token(base, [t for ts in tenants.values() for t in ts])
    procs = {
        side: ServerProcess(
            {
                **base,
                "REDIS_URL": "",
                "POINTS_REDIS_FSYNC": side,
                "POINTS_DATA_DIR": str(tmp / f"durability-{side}"),
            },
            free_port(),
            tmp / f"durability-{side}.log",
        )
        for side in sides
    }
    started = time.monotonic()
    group = _AuthGroup(ns, procs, tenants, database_url, token, uuid.uuid4().hex[:6],
                       sides=sides, bounds=dict(DURABILITY_BOUNDS),
                       duration_s=ns.durability_duration, base_env=base,
                       token_id=token_id)  # fmt: skip
    runs = group.alternate(DURABILITY_BOUNDS, "dw")
    return {
        "compared": {
            "always": "POINTS_REDIS_FSYNC=always: Redis fsyncs its AOF before it answers (once "
            "per event-loop pass: the calls of one pass share an fsync)",
            "everysec": "POINTS_REDIS_FSYNC=everysec: fsync once a second (a host crash may "
            "lose the last second of acknowledged awards)",
        },
        "settings": {
            "duration_s": ns.durability_duration,
            "rounds": ns.rounds,
            "tenants_per_side": ns.tenants,
            "users": ns.users,
            "batch": ns.batch,
            "batch_concurrency": ns.batch_concurrency,
            "unary_concurrency": ns.unary_concurrency,
            "workers": ns.workers,
            "data_folder_fs": _fs_of(tmp),
        },
        "wall_s": round(time.monotonic() - started, 1),
        **summarize_auth(runs, sides, DURABILITY_BOUNDS),
        "runs": runs,
    }


COMPILED_SIDES = ("compiled", "pure")
COMPILED_BOUNDS = {"batch": 1.0, "unary": 1.0, "stream": 1.0}


def _compiled_sources() -> list[str]:
    """pyproject.toml's [tool.pointsd].compiled as paths of the installed
    tree (service/pointsd/service/x.py -> pointsd/service/x.py)."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pointsd"]["compiled"]
    paths = [p.relative_to(ROOT) for entry in listed for p in sorted(ROOT.glob(entry))]
    return [str(p).split("/", 1)[1] for p in paths]


def compiled_module_names() -> list[str]:
    """The module names of [tool.pointsd].compiled."""
    return [
        p.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for p in _compiled_sources()
    ]


def compiled_modules_in(folder: Path) -> list[str]:
    """The modules of [tool.pointsd].compiled that `folder` holds compiled
    (an unpacked wheel of scripts/compile); empty when it holds none."""
    return [
        name
        for name, source in zip(compiled_module_names(), _compiled_sources(), strict=True)
        if list(folder.glob(f"{source.removesuffix('.py')}.*.so"))
    ]


def _two_builds(
    ns: argparse.Namespace,
    tmp: Path,
    servers: tuple[str, str],
    sides: tuple[str, str],
    paths: dict[str, str],
    bounds: dict[str, float],
    duration_s: float,
    name: str,
) -> list[dict[str, Any]]:
    """Two `pointsd serve` processes up together on one Redis and one
    PostgreSQL, the same rules and settings, each side with its own
    PYTHONPATH (`paths`) and tenants; their runs alternate as in the auth
    group. The compiled and baseline groups."""
    redis_url, database_url = servers
    tenants = {side: [f"{name}{side[:3]}-{i}" for i in range(ns.tenants)] for side in sides}
    rules = write_rules(
        tmp / f"{name}-builds.yaml",
        {t: {"shards": ns.shards} for ts in tenants.values() for t in ts},
    )
    base = pointsd_env(redis_url, database_url, rules, tmp / "data", POINTS_WORKERS=str(ns.workers))
    token, token_id = _ingest_token(base, [t for ts in tenants.values() for t in ts])
    procs = {
        side: ServerProcess(
            {**base, "PYTHONPATH": paths[side]}, free_port(), tmp / f"{name}-{side}.log"
        )
        for side in sides
    }
    group = _AuthGroup(ns, procs, tenants, database_url, token, uuid.uuid4().hex[:6],
                       sides=sides, bounds=bounds, duration_s=duration_s,
                       base_env=base, token_id=token_id, redis_url=redis_url)  # fmt: skip
    return group.alternate(bounds, f"{name}w")


def _two_build_settings(ns: argparse.Namespace, duration_s: float) -> dict[str, Any]:
    return {
        "duration_s": duration_s,
        "rounds": ns.rounds,
        "tenants_per_side": ns.tenants,
        "users": ns.users,
        "batch": ns.batch,
        "batch_concurrency": ns.batch_concurrency,
        "unary_concurrency": ns.unary_concurrency,
        "streams": ns.streams,
        "workers": ns.workers,
    }


def run_compiled(ns: argparse.Namespace, tmp: Path, servers: tuple[str, str]) -> dict[str, Any]:
    """The mypyc build beside pure Python: two `pointsd serve` processes up
    together on one Redis and one PostgreSQL, one with the compiled folder
    first on its PYTHONPATH; runs alternate as in the auth group."""
    folder = Path(ns.compiled).resolve()
    paths = {"compiled": os.pathsep.join([str(folder), str(ROOT)]), "pure": str(ROOT)}
    bounds = {m: COMPILED_BOUNDS[m] for m in ns.compiled_modes}
    started = time.monotonic()
    runs = _two_builds(ns, tmp, servers, COMPILED_SIDES, paths, bounds, ns.compiled_duration, "c")
    return {
        "compared": {
            "compiled": f"the modules of [tool.pointsd].compiled from {folder} (mypyc)",
            "pure": "the checkout's pure-Python modules",
        },
        "compiled_modules": compiled_modules_in(folder),
        "settings": _two_build_settings(ns, ns.compiled_duration),
        "wall_s": round(time.monotonic() - started, 1),
        **summarize_auth(runs, COMPILED_SIDES, bounds),
        "runs": runs,
    }


BASELINE_SIDES = ("this", "baseline")
BASELINE_BOUNDS = {"batch": 1.0, "unary": 1.0, "stream": 1.0}


def baseline_paths(folder: Path) -> list[Path]:
    """The source roots of a checkout of another revision (its `service` and
    `storage` folders), or [] when `folder` is not one."""
    roots = [folder / "service", folder / "storage"]
    ok = (roots[0] / "pointsd/service/server.py").exists() and (
        roots[1] / "pointsd/storage/redis/award.lua"
    ).exists()
    return roots if ok else []


def run_baseline(ns: argparse.Namespace, tmp: Path, servers: tuple[str, str]) -> dict[str, Any]:
    """This checkout beside a baseline (a checkout of another revision, e.g.
    `git worktree add /tmp/base REV`): two `pointsd serve` processes up
    together on one Redis and one PostgreSQL, the baseline's with its source
    roots first on PYTHONPATH; runs alternate as in the auth group."""
    folder = Path(ns.baseline).resolve()
    paths = {
        "this": str(ROOT),
        "baseline": os.pathsep.join([*map(str, baseline_paths(folder)), str(ROOT)]),
    }
    bounds = {m: BASELINE_BOUNDS[m] for m in ns.baseline_modes}
    started = time.monotonic()
    runs = _two_builds(ns, tmp, servers, BASELINE_SIDES, paths, bounds, ns.baseline_duration, "b")
    return {
        "compared": {"this": f"this checkout ({ROOT})", "baseline": f"the checkout at {folder}"},
        "revisions": {"this": _revision(ROOT), "baseline": _revision(folder)},
        "settings": _two_build_settings(ns, ns.baseline_duration),
        "wall_s": round(time.monotonic() - started, 1),
        **summarize_auth(runs, BASELINE_SIDES, bounds),
        "runs": runs,
    }


def _revision(folder: Path) -> str:
    """The commit a checkout is at, with "+changes" when its tree differs."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              check=False, timeout=30)  # fmt: skip
        return done.stdout.strip() if done.returncode == 0 else ""

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def _fs_of(path: Path) -> str:
    """The file system the AOF is on (fsync costs depend on it)."""
    import psutil

    best = ""
    found = "unknown"
    for part in psutil.disk_partitions(all=True):
        if str(path).startswith(part.mountpoint) and len(part.mountpoint) > len(best):
            best, found = part.mountpoint, f"{part.fstype} on {part.mountpoint}"
    return found


def run(ns: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pointsd-bench-"))
    redis_url, database_url, embedded = resolve_servers(tmp / "data")
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "embedded_servers": bool(embedded)},
        "settings": {
            "groups": ns.groups,
            "duration_s": ns.duration,
            "workers": ns.workers,
            "shards": ns.shards,
            "tenants": ns.tenants,
            "users": ns.users,
        },
    }
    steal_before = _steal_and_total()
    try:
        migrate.upgrade(database_url)
        if "core" in ns.groups:
            run_core(ns, report, tmp, (redis_url, database_url))
        if "progression" in ns.groups:
            report["progression"] = run_progression(ns, tmp, (redis_url, database_url))
        if "auth" in ns.groups:
            report["auth"] = run_auth(ns, tmp, (redis_url, database_url))
        if "durability" in ns.groups:
            report["durability"] = run_durability(ns, tmp, (redis_url, database_url))
        if "compiled" in ns.groups:
            report["compiled"] = run_compiled(ns, tmp, (redis_url, database_url))
        if "baseline" in ns.groups:
            report["baseline"] = run_baseline(ns, tmp, (redis_url, database_url))
    finally:
        for s in embedded:
            if s.owned:
                s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    steal, total = (a - b for a, b in zip(_steal_and_total(), steal_before, strict=True))
    # A virtual machine's CPUs taken by the host for other guests during the
    # run: figures of a run with much of it are not comparable with others.
    report["machine"]["steal_pct"] = round(100 * steal / total, 1) if total else None
    return report


def _steal_and_total() -> tuple[float, float]:
    import psutil

    m = psutil.cpu_times()
    return getattr(m, "steal", 0.0), sum(m) - getattr(m, "guest", 0.0) - getattr(
        m, "guest_nice", 0.0
    )


def _print_core(report: dict[str, Any]) -> None:
    r = report["results"]
    print(
        f"{'contender':<18} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}  "
        f"{'CPU µs/event: server':>21} {'flusher':>8} {'redis':>6} {'postgres':>9} "
        f"{'client':>7} {'machine':>8} {'redis µs/credit':>16}"
    )
    for name in (
        "batch_service",
        "raw_ceiling",
        "unary_service",
        "unary_echo",
        "stream_service",
        "stream_echo",
        "naive_postgres",
    ):
        row = r.get(name, {})
        lat = row.get("latency_ms", {})
        cpu = row.get("cpu_us_per_event", {})
        print(
            f"{name:<18} {row.get('events_per_s', 0):>10,.0f} "
            f"{lat.get('p50', float('nan')):>8.2f} {lat.get('p99', float('nan')):>8.2f}  "
            f"{_us(cpu.get('server')):>21} {_us(cpu.get('flusher')):>8} "
            f"{_us(cpu.get('redis')):>6} {_us(cpu.get('postgres')):>9} {_us(cpu.get('client')):>7} "
            f"{_us(cpu.get('machine')):>8} {_us(row.get('redis_cpu_us_per_credit')):>16}"
        )
    for name, row in r.items():
        for kind, n in (row.get("errors") or {}).items():
            print(f"{name}: {kind} {n:,} events: {explain_error(kind)}")
    lag = r.get("flush_lag", {})
    print(f"flush lag p50 {lag.get('p50_ms')} ms, p99 {lag.get('p99_ms')} ms")
    for k, v in report["ratios"].items():
        print(f"{k:<26} {v}")
    for m in report["memory"]:
        print(
            f"memory during {m['run']}: {m.get('rss_mb_start')} -> {m.get('rss_mb_end')} MB "
            f"({m.get('rss_growth_pct')}%)"
        )
    soaked = r.get("soak")
    if soaked:
        m = soaked["memory"]
        print(
            f"soak {soaked['duration_s']:.0f} s at {soaked['target_rate']:,.0f} events/s: "
            f"{soaked['events_per_s']:,.0f} answered, memory {m.get('rss_mb_start')} -> "
            f"{m.get('rss_mb_end')} MB ({m.get('rss_growth_pct')}%), flush lag p99 "
            f"{soaked['flush_lag']['p99_ms']} ms, ledger check "
            f"{'ok' if soaked['self_check_ok'] else 'FAILED'}"
        )
    goals = report.get("goals")
    if goals:
        print(f"issue 13 goals: {goals['met']} of {goals['of']} met")
        for g in goals["goals"]:
            verdict = {True: "PASS", False: "FAIL", None: "not measured"}[g["pass"]]
            value = "-" if g["value"] is None else f"{g['value']:g}"
            print(f"  {g['goal']:<34} {value:>9} {g['sense']} {g['bound']:g}  {verdict}")


def _us(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _print_progression(prog: dict[str, Any]) -> None:
    settings = prog["settings"]
    print(
        f"progression: the default book (with) vs without {', '.join(PROGRESSION_KEYS)}, "
        f"medians of {settings['rounds']} alternated rounds of {settings['duration_s']:g} s"
    )
    print(f"{'mode':<7} {'with ev/s':>10} {'without ev/s':>13} {'ratio':>6} {'bound':>6}")
    for mode, m in prog["modes"].items():
        ratio = f"{m['ratio']:.3f}" if m["ratio"] is not None else "-"
        print(
            f"{mode:<7} {m['with']['events_per_s'] or 0:>10,.0f} "
            f"{m['without']['events_per_s'] or 0:>13,.0f} {ratio:>6} {m['bound']:>6.2f} "
            f"{'PASS' if m['pass'] else 'FAIL'}"
        )
    print(
        "cost, with / without: Redis evalsha µs/credit, Redis CPU µs/credit, server CPU "
        "µs/event, all CPU µs/event (and its ratio)"
    )
    for mode, m in prog["modes"].items():
        cells = [
            f"{_us(m['with'][k])} / {_us(m['without'][k])}"
            for k in (
                "redis_us_per_credit",
                "redis_cpu_us_per_credit",
                "server_cpu_us_per_event",
                "cpu_us_per_event",
            )
        ]
        print(
            f"{mode:<7} {cells[0]:>15} {cells[1]:>15} {cells[2]:>17} {cells[3]:>17} "
            f"({m['cpu_ratio']})"
        )
    r = prog["redis_us_per_credit"]
    if prog["machine"]["redis_stats"]:
        print(
            f"Redis evalsha µs per credit, all runs: with {_us(r['with']['us_per_credit'])}, "
            f"without {_us(r['without']['us_per_credit'])} (the flusher's acks in it: "
            f"{_us(r['with']['flusher_ack_us_per_credit'])} / "
            f"{_us(r['without']['flusher_ack_us_per_credit'])})"
        )
    else:
        print("Redis µs per credit: not measured (Redis is not on this machine's loopback)")
    for run in prog["runs"]:
        for kind, n in run["errors"].items():
            print(f"{run['run_id']} ({run['side']}, {run['mode']}): {kind} {n:,} events: "
                  f"{explain_error(kind)}")  # fmt: skip
        if not run["self_check_ok"]:
            print(f"{run['run_id']} ({run['side']}, {run['mode']}): ledger self-check FAILED")


def _print_sides(group: dict[str, Any], title: str, sides: tuple[str, str]) -> None:
    """A two-sided group (auth, durability): per mode each side's median
    events/s, the ratio against its bound, latency and server CPU; the
    ratio of each round; every run's errors and failed self-checks."""
    first, second = sides
    settings = group["settings"]
    print(f"{title}, medians of {settings['rounds']} alternated rounds of "
          f"{settings['duration_s']:g} s")  # fmt: skip
    print(
        f"{'mode':<7} {first + ' ev/s':>14} {second + ' ev/s':>14} {'ratio':>6} {'bound':>6}"
        f"       {'p50 ms':>14} {'p99 ms':>14} {'server CPU µs/ev':>18}"
    )
    for mode, m in group["modes"].items():
        ratio = f"{m['ratio']:.3f}" if m["ratio"] is not None else "-"
        a, b = m[first], m[second]
        print(
            f"{mode:<7} {a['events_per_s'] or 0:>14,.0f} {b['events_per_s'] or 0:>14,.0f} "
            f"{ratio:>6} {m['bound']:>6.2f} {'PASS' if m['pass'] else 'FAIL':<5} "
            f"{_us(a['p50_ms']):>6} / {_us(b['p50_ms']):<6} "
            f"{_us(a['p99_ms']):>6} / {_us(b['p99_ms']):<6} "
            f"{_us(a['server_cpu_us_per_event']):>8} / {_us(b['server_cpu_us_per_event'])}"
        )
    for mode, m in group["modes"].items():
        print(f"{mode} {first}/{second} by round: {m['round_ratios']}")
    for run in group["runs"]:
        for kind, n in run["errors"].items():
            print(f"{run['run_id']} ({run['side']}, {run['mode']}): {kind} {n:,} events: "
                  f"{explain_error(kind)}")  # fmt: skip
        if not run["self_check_ok"]:
            print(f"{run['run_id']} ({run['side']}, {run['mode']}): ledger self-check FAILED")


def _print_durability(d: dict[str, Any]) -> None:
    fs = d["settings"]["data_folder_fs"]
    _print_sides(d, f"durability: POINTS_REDIS_FSYNC=always vs everysec ({fs})",
                 DURABILITY_SIDES)  # fmt: skip


def _print_compiled(c: dict[str, Any]) -> None:
    _print_sides(c, f"compiled: {len(c['compiled_modules'])} mypyc modules vs pure Python",
                 COMPILED_SIDES)  # fmt: skip
    for mode, m in c["modes"].items():
        print(f"{mode} server CPU per event, pure ÷ compiled: {m['server_cpu_ratio']}")


def _print_baseline(b: dict[str, Any]) -> None:
    revs = b["revisions"]
    _print_sides(b, f"baseline: this checkout ({revs['this']}) vs {revs['baseline']}",
                 BASELINE_SIDES)  # fmt: skip
    for mode, m in b["modes"].items():
        print(f"{mode} server CPU per event, baseline ÷ this: {m['server_cpu_ratio']}")


def _print_auth(auth: dict[str, Any]) -> None:
    what = "off vs off (control)" if auth.get("control") else "on vs off"
    _print_sides(auth, f"auth: POINTS_AUTH={what}", AUTH_SIDES)


def _print_table(report: dict[str, Any]) -> None:
    printed = False
    for key, show in (
        ("results", lambda: _print_core(report)),
        ("progression", lambda: _print_progression(report["progression"])),
        ("auth", lambda: _print_auth(report["auth"])),
        ("durability", lambda: _print_durability(report["durability"])),
        ("compiled", lambda: _print_compiled(report["compiled"])),
        ("baseline", lambda: _print_baseline(report["baseline"])),
    ):
        if key in report:
            if printed:
                print()
            show()
            printed = True


def exit_code(report: dict[str, Any], check: bool) -> int:
    """1 when a ledger self-check failed; 3 when `check` and a progression
    or auth ratio is under its bound; else 0."""
    if "results" in report and not report["results"]["batch_service"].get("self_check_ok"):
        return 1
    if "results" in report and not report["results"].get("soak", {}).get("self_check_ok", True):
        return 1
    bounded = [
        report[k]
        for k in ("progression", "auth", "durability", "compiled", "baseline")
        if k in report
    ]
    if any(not group["self_check_ok"] for group in bounded):
        return 1
    if check and any(not group["all_pass"] for group in bounded):
        return 3
    return 0


def _modes(p: argparse.ArgumentParser, flag: str, text: str, known: dict[str, float]) -> list[str]:
    """A comma-separated list of a group's modes, each one it knows."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or set(modes) - set(known):
        p.error(f"{flag}: choose from {', '.join(known)}, got {text[:100]!r}")
    return modes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds per contender")
    p.add_argument("--events", type=int, default=3_000_000, help="events per contender (bound)")
    p.add_argument("--workers", type=int, default=1, help="service processes")
    p.add_argument("--tenants", type=int, default=2, help="tenants (per side in progression)")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=500, help="events per RecordActivities")
    p.add_argument("--batch-concurrency", type=int, default=8)
    p.add_argument("--unary-concurrency", type=int, default=64)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--stream-window", type=int, default=256, help="events in flight per stream")
    p.add_argument("--naive-concurrency", type=int, default=32)
    p.add_argument(
        "--pin-client",
        action="store_true",
        help="core: the client on the last CPU, every server process on the others",
    )
    p.add_argument(
        "--soak",
        type=float,
        default=0.0,
        help="core: also a batch soak of this many seconds (memory, flush lag; 300 for the goal)",
    )
    p.add_argument(
        "--soak-rate",
        type=float,
        default=0.0,
        help="soak: events/s, open loop (0: 60%% of the batch contender's rate)",
    )
    p.add_argument(
        "--progression", action="store_true", help="also run the progression group (~5 min)"
    )
    p.add_argument("--auth", action="store_true", help="also run the auth on/off group (~4 min)")
    p.add_argument(
        "--durability",
        action="store_true",
        help="also run the POINTS_REDIS_FSYNC always/everysec group (~3 min)",
    )
    p.add_argument(
        "--compiled",
        nargs="?",
        const="build/compiled",
        default="",
        metavar="DIR",
        help="also run the mypyc-compiled build (scripts/compile; default build/compiled) "
        "beside pure Python (~3 min)",
    )
    p.add_argument("--compiled-duration", type=float, default=8.0, help="compiled: seconds per run")
    p.add_argument(
        "--compiled-modes",
        default="batch,unary,stream",
        help="compiled: comma-separated modes (batch, unary, stream)",
    )
    p.add_argument(
        "--baseline",
        default="",
        metavar="DIR",
        help="also run a checkout of another revision (git worktree add DIR REV) beside this "
        "one (~3 min)",
    )
    p.add_argument("--baseline-duration", type=float, default=8.0, help="baseline: seconds per run")
    p.add_argument(
        "--baseline-modes",
        default="batch,unary,stream",
        help="baseline: comma-separated modes (batch, unary, stream)",
    )
    p.add_argument(
        "--only",
        choices=("core", "progression", "auth", "durability", "compiled", "baseline"),
        help="run only this group of contenders",
    )
    p.add_argument(
        "--durability-duration", type=float, default=8.0, help="durability: seconds per run"
    )
    p.add_argument("--rounds", type=int, default=4, help="progression: rounds (each side per mode)")
    p.add_argument(
        "--progression-duration", type=float, default=9.0, help="progression: seconds per run"
    )
    p.add_argument(
        "--progression-modes",
        default="batch,unary,stream",
        help="progression: comma-separated modes (batch, unary, stream)",
    )
    p.add_argument("--auth-duration", type=float, default=8.0, help="auth: seconds per run")
    p.add_argument(
        "--auth-control",
        action="store_true",
        help="auth: both sides with auth off (an A/A run: the noise floor of the ratios)",
    )
    p.add_argument(
        "--auth-modes",
        default="batch,unary,stream",
        help="auth: comma-separated modes (batch, unary, stream)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when a progression or auth ratio is under its bound",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    ns = p.parse_args(argv)
    modes = _modes(p, "--progression-modes", ns.progression_modes, PROGRESSION_BOUNDS)
    auth_modes = _modes(p, "--auth-modes", ns.auth_modes, AUTH_BOUNDS)
    compiled_modes = _modes(p, "--compiled-modes", ns.compiled_modes, COMPILED_BOUNDS)
    baseline_modes = _modes(p, "--baseline-modes", ns.baseline_modes, BASELINE_BOUNDS)
    if (
        ns.rounds < 1
        or ns.progression_duration <= 0
        or ns.auth_duration <= 0
        or ns.durability_duration <= 0
        or ns.compiled_duration <= 0
        or ns.baseline_duration <= 0
        or ns.soak < 0
        or ns.soak_rate < 0
    ):
        p.error("--rounds must be >= 1, every --*-duration > 0, --soak and --soak-rate >= 0")
    if ns.only == "compiled" and not ns.compiled:
        ns.compiled = "build/compiled"
    if ns.compiled and not compiled_modules_in(Path(ns.compiled)):
        p.error(
            f"--compiled: no compiled modules in {ns.compiled[:200]}; run scripts/compile first"
        )
    if ns.only == "baseline" and not ns.baseline:
        p.error("--only baseline needs --baseline DIR (a checkout of the revision to compare)")
    if ns.baseline and not baseline_paths(Path(ns.baseline)):
        p.error(f"--baseline: {ns.baseline[:200]} is not a checkout of this project")
    ns.baseline_modes = baseline_modes
    ns.progression_modes = modes
    ns.auth_modes = auth_modes
    ns.compiled_modes = compiled_modes
    extra = [
        g
        for g, on in (
            ("progression", ns.progression),
            ("auth", ns.auth),
            ("durability", ns.durability),
            ("compiled", bool(ns.compiled)),
            ("baseline", bool(ns.baseline)),
        )
        if on
    ]
    ns.groups = [ns.only] if ns.only else ["core", *extra]
    report = run(ns)
    if ns.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return exit_code(report, ns.check)


if __name__ == "__main__":
    sys.exit(main())
