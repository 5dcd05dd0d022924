"""Side-by-side benchmarks in one run, on one machine, on the same events.

    python -m scripts.bench                 # human table
    python -m scripts.bench --json          # one JSON document
    python -m scripts.bench --duration 30 --workers 2

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

Every contender's events come from the same seeded generator; figures and
ratios are printed together, and so are the errors of any contender, each
kind with what it means (`scripts.loadgen.ERROR_KINDS`). Needs the load tools
(`./scripts/install dev`): without them it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from pointsd.service.clock import system_clock
from pointsd.service.rules import Plan, RulesEngine, load_rule_book
from pointsd.service.validation import InvalidField, Limits, event_from_pb
from pointsd.storage.keys import KeySchema, Topology
from pointsd.storage.postgres import migrate, sqlalchemy_url
from pointsd.storage.redis import AwardStore, connect_redis
from pointsd.storage.redis.codec import APPLY, CallEncoder

# Before scripts.naive (psycopg_pool): exits 2 when the load tools are missing.
from scripts.loadgen import DEFAULT_MIX, Traffic, TrafficSpec, explain_error, run_load
from scripts.loadtest import RssSampler, resolve_servers, wait_for_ledger
from scripts.naive import run_naive
from scripts.procs import ServerProcess, free_port, pointsd_env, write_rules

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


async def raw_ceiling(
    redis_url: str,
    rules: Path,
    spec: TrafficSpec,
    events: int,
    duration_s: float,
    connections: int = 4,
) -> dict[str, Any]:
    """award.lua on the same kind of events, pre-encoded, pipelined straight to
    Redis: the physical limit of this design here."""
    engine, topology = _engine(rules)
    traffic = Traffic(spec)
    now_ms = int(time.time() * 1000)
    ops: list[Any] = []
    for msg in traffic.batch(events, now_ms):
        try:
            event = event_from_pb(msg, now_ms, _LIMITS)
        except InvalidField:
            continue
        planned = engine.plan(event, recorded_at_ms=now_ms)
        if isinstance(planned, Plan):
            ops.extend(planned.ops)
    redis = connect_redis(redis_url, pool_max=connections * 2)
    store = AwardStore(redis, topology, clock=system_clock, outbox_entries_max=0)
    await store.start()
    # The same chunking the service uses: up to 100 credits per call, grouped
    # by shard, 20 calls per round trip.
    by_shard: dict[Any, list[int]] = {}
    for i, op in enumerate(ops):
        by_shard.setdefault(topology.user_shard(op.tenant_id, op.user_id), []).append(i)
    calls = []
    sizes = []
    now_s = system_clock() // 1000
    for shard, idx in by_shard.items():
        for s in range(0, len(idx), 100):
            encoder = CallEncoder(shard, APPLY, now_s, 0)
            for i in idx[s : s + 100]:
                encoder.add(ops[i])
            calls.append(encoder.call())
            sizes.append(len(idx[s : s + 100]))
    per_trip = 20
    trips = [
        (calls[i : i + per_trip], sum(sizes[i : i + per_trip]))
        for i in range(0, len(calls), per_trip)
    ]
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
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - started
    await redis.aclose()
    credits_per_event = len(ops) / max(1, events)
    return {
        "events_per_s": round(done_ops / credits_per_event / elapsed, 1),
        "credits_per_s": round(done_ops / elapsed, 1),
        "duration_s": round(elapsed, 3),
        "credits": done_ops,
    }


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


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def run(ns: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pointsd-bench-"))
    data_dir = tmp / "data"
    redis_url, database_url, embedded = resolve_servers(data_dir)
    migrate.upgrade(database_url)
    tenants = [f"bench-{i}" for i in range(ns.tenants)]
    raw_tenants = [f"benchraw-{i}" for i in range(ns.tenants)]
    rules = write_rules(
        tmp / "rules.yaml", {t: {"shards": ns.shards} for t in tenants + raw_tenants}
    )
    env = pointsd_env(redis_url, database_url, rules, data_dir, POINTS_WORKERS=str(ns.workers))
    server = ServerProcess(env, free_port(), tmp / "pointsd.log")
    echo_port = free_port()
    echo = ServerProcess(
        env,
        echo_port,
        tmp / "echo.log",
        argv=[sys.executable, "-m", "scripts.echo_server", "--listen", f"127.0.0.1:{echo_port}"],
    )
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "embedded_servers": bool(embedded)},
        "settings": {
            "duration_s": ns.duration,
            "workers": ns.workers,
            "shards": ns.shards,
            "tenants": ns.tenants,
            "users": ns.users,
        },
        "results": {},
    }
    results: dict[str, Any] = report["results"]
    memory: list[dict[str, Any]] = []
    try:
        server.start()
        echo.start()

        def load(name: str, target: str, spec: TrafficSpec, **kw: Any) -> Any:
            res = asyncio.run(
                run_load(target, spec, duration_s=ns.duration, events_max=ns.events, **kw)
            )
            s = res.summary()
            results[name] = {
                "events_per_s": s["events_per_s"],
                "latency_ms": s["latency_ms"],
                "errors": s["errors"],
                "error_rate": s["error_rate"],
                "events": s["events"],
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
                rules,
                _spec("rw", raw_tenants, ns.users, 1),
                min(raw_events, ns.events),
                ns.duration,
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

        # 4. the naive per-event transaction design.
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
        echo.terminate()
        server.terminate()
        cleanup_tenants(redis_url, tenants + raw_tenants)
        for s in embedded:
            if s.owned:
                s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    r = results
    report["memory"] = memory
    report["ratios"] = {
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
    }
    return report


def _print_table(report: dict[str, Any]) -> None:
    r = report["results"]
    print(f"{'contender':<18} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
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
        print(
            f"{name:<18} {row.get('events_per_s', 0):>10,.0f} "
            f"{lat.get('p50', float('nan')):>8.2f} {lat.get('p99', float('nan')):>8.2f}"
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds per contender")
    p.add_argument("--events", type=int, default=3_000_000, help="events per contender (bound)")
    p.add_argument("--workers", type=int, default=1, help="service processes")
    p.add_argument("--tenants", type=int, default=2)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=500, help="events per RecordActivities")
    p.add_argument("--batch-concurrency", type=int, default=8)
    p.add_argument("--unary-concurrency", type=int, default=64)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--stream-window", type=int, default=256, help="events in flight per stream")
    p.add_argument("--naive-concurrency", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    ns = p.parse_args(argv)
    report = run(ns)
    if ns.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0 if report["results"]["batch_service"].get("self_check_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
