"""Leaderboard reads at scale: a board of N members (default 1,000,000) on 8
shards vs the same members in one unsharded sorted set, queried through the
gRPC API in the same run.

    python -m scripts.bench_boards --json
    python -m scripts.bench_boards --members 200000 --duration 5

Queries, closed-loop at --concurrency callers for --duration seconds each:
Leaderboard top-100 and GetRank with 10 neighbours of a random member.
Members and scores are written straight into Redis (ZADD pipelines) in the
service's own key layout; scores are skewed, with many ties. Needs the load
tools (`./scripts/install dev`): without them it says so in one line and
exits 2 (the check runs when `scripts.bench` imports `scripts.loadgen`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import redis as sync_redis

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.domain import BoardRef, Period
from pointsd.storage.keys import KeySchema, Topology
from pointsd.storage.postgres import migrate
from scripts.bench import cleanup_tenants
from scripts.loadtest import resolve_servers
from scripts.procs import ServerProcess, free_port, pointsd_env, write_rules
from scripts.tokens import aio_channel

__all__ = ["main"]

_REF = BoardRef("points", "t", Period.EVER, "all")


def populate(redis_url: str, tenants: dict[str, int], members: int, seed: int) -> None:
    topology = Topology(KeySchema("pts"), tenants)
    rng = random.Random(seed)
    scores = [int(100 * rng.paretovariate(1.3)) for _ in range(members)]
    r = sync_redis.Redis.from_url(redis_url)
    try:
        for tenant in tenants:
            pipe = r.pipeline(transaction=False)
            for i, score in enumerate(scores):
                member = f"m{i:07d}"
                pipe.zadd(topology.user_shard(tenant, member).board(_REF), {member: -score})
                if i % 10_000 == 9_999:
                    pipe.execute()
            pipe.execute()
    finally:
        r.close()


async def measure(
    target: str,
    token: str,
    tenant: str,
    query: str,
    members: int,
    concurrency: int,
    duration_s: float,
) -> dict[str, Any]:
    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram(1, 60_000_000, 3)
    channels = [
        aio_channel(target, token, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(4)
    ]
    stubs = [pb_grpc.PointsServiceStub(c) for c in channels]
    deadline = time.monotonic() + duration_s
    done = 0
    errors = 0
    rng = random.Random(1)

    async def worker(i: int) -> None:
        nonlocal done, errors
        stub = stubs[i % len(stubs)]
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                if query == "top100":
                    await stub.Leaderboard(
                        pb.LeaderboardRequest(
                            tenant_id=tenant, board="points", period=pb.ALL_TIME, limit=100
                        )
                    )
                else:
                    member = f"m{rng.randrange(members):07d}"
                    await stub.GetRank(
                        pb.GetRankRequest(
                            tenant_id=tenant,
                            board="points",
                            period=pb.ALL_TIME,
                            member_id=member,
                            neighbours=10,
                        )
                    )
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            hist.record_value(max(1, int((time.monotonic() - t0) * 1e6)))
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    for c in channels:
        await c.close()
    return {
        "queries_per_s": round(done / elapsed, 1),
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "queries": done,
        "errors": errors,
    }


def run(ns: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pointsd-boards-"))
    redis_url, database_url, embedded = resolve_servers(tmp / "data")
    migrate.upgrade(database_url)
    sharded, flat = f"lb8-{int(time.time())}", f"lb1-{int(time.time())}"
    tenants = {sharded: ns.shards, flat: 1}
    rules = write_rules(tmp / "rules.yaml", {t: {"shards": n} for t, n in tenants.items()})
    server = ServerProcess(
        pointsd_env(redis_url, database_url, rules, tmp / "data"), free_port(), tmp / "pointsd.log"
    )
    report: dict[str, Any] = {
        "settings": {
            "members": ns.members,
            "shards": ns.shards,
            "concurrency": ns.concurrency,
            "duration_s": ns.duration,
        },
        "results": {},
    }
    try:
        t0 = time.monotonic()
        populate(redis_url, tenants, ns.members, ns.seed)
        report["populate_s"] = round(time.monotonic() - t0, 1)
        server.start()
        for query in ("top100", "rank10"):
            for name, tenant in ((f"{query}_sharded", sharded), (f"{query}_unsharded", flat)):
                report["results"][name] = asyncio.run(
                    measure(
                        server.target,
                        server.token,
                        tenant,
                        query,
                        ns.members,
                        ns.concurrency,
                        ns.duration,
                    )
                )
    finally:
        server.terminate()
        cleanup_tenants(redis_url, list(tenants))
        for s in embedded:
            if s.owned:
                s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    r = report["results"]
    report["ratios"] = {
        q: round(r[f"{q}_sharded"]["queries_per_s"] / r[f"{q}_unsharded"]["queries_per_s"], 3)
        for q in ("top100", "rank10")
        if r[f"{q}_unsharded"]["queries_per_s"]
    }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench_boards", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--members", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=15.0, help="seconds per query and board")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(argv)
    report = run(ns)
    if ns.json:
        print(json.dumps(report, indent=2))
    else:
        for name, row in report["results"].items():
            print(
                f"{name:<20} {row['queries_per_s']:>9,.0f} q/s  p50 {row['p50_ms']:7.2f} ms  "
                f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}"
            )
        print("sharded / unsharded:", report["ratios"])
    errors = sum(row["errors"] for row in report["results"].values())
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
