"""Drive a points server like IM servers would, and check that nothing was lost.

    # against a running server (tenants must exist in its rule file)
    python -m scripts.loadtest --target 127.0.0.1:50051 --tenants demo --mode batch

    # start a server for the run (embedded Redis/PostgreSQL unless REDIS_URL /
    # DATABASE_URL are set), on 4 generated tenants with 4 shards each
    python -m scripts.loadtest --spawn --tenants 4 --shards 4 --mode unary --concurrency 64

Modes: unary (one RecordActivity per event, --concurrency callers), batch
(RecordActivities of --batch events), stream (--concurrency open streams with
--batch events in flight each). --rate N sends N events/s open-loop; without
it the run is closed-loop at maximum throughput. Every run is bounded by
--duration and --events.

At the end it prints events/s, outcomes, errors by status and latency
percentiles (--json: one JSON line), draws --plot FILE.png, and checks its own
work: once the outbox has drained, the points the server reported as awarded
must equal the ledger rows of the run's users in PostgreSQL (exit 1 if not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from pointsd.storage.postgres import migrate, sqlalchemy_url
from scripts.loadgen import DEFAULT_MIX, RunResult, TrafficSpec, parse_mix, run_load
from scripts.procs import ServerProcess, free_port, pointsd_env, write_rules

__all__ = ["RssSampler", "ledger_points", "main", "resolve_servers", "wait_for_ledger"]


def resolve_servers(data_dir: Path, redis: bool = True) -> tuple[str, str, list[Any]]:
    """REDIS_URL / DATABASE_URL, or embedded servers in data_dir (started or reused)."""
    from pointsd.storage.embedded import EmbeddedPostgres, EmbeddedRedis

    started: list[Any] = []
    redis_url = os.environ.get("REDIS_URL", "")
    database_url = os.environ.get("DATABASE_URL", "")
    if redis and not redis_url:
        er = EmbeddedRedis(data_dir)
        redis_url = er.start()
        started.append(er)
    if not database_url:
        ep = EmbeddedPostgres(data_dir)
        database_url = ep.start()
        started.append(ep)
    return redis_url, database_url, started


def ledger_points(database_url: str, tenants: list[str], run_id: str) -> tuple[int, int]:
    """(sum of points, rows) of the run's users."""
    engine = create_engine(sqlalchemy_url(database_url), pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT COALESCE(SUM(points), 0), COUNT(*) FROM ledger_entries "
                    "WHERE tenant_id = ANY(:t) AND user_id LIKE :p"
                ),
                {"t": tenants, "p": f"{run_id}-u%"},
            ).one()
            return int(row[0]), int(row[1])
    finally:
        engine.dispose()


def wait_for_ledger(
    database_url: str, tenants: list[str], run_id: str, expected: int, timeout_s: float
) -> dict[str, Any]:
    """Poll the ledger until the run's points arrive (the flusher drains the
    outbox in the background) or the timeout passes."""
    start = time.monotonic()
    points, rows = ledger_points(database_url, tenants, run_id)
    while points != expected and time.monotonic() - start < timeout_s:
        time.sleep(0.5)
        points, rows = ledger_points(database_url, tenants, run_id)
    return {
        "awarded_points": expected,
        "ledger_points": points,
        "ledger_rows": rows,
        "drain_s": round(time.monotonic() - start, 2),
        "ok": points == expected,
    }


class RssSampler:
    """Resident memory of a process tree, sampled every second."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _rss_mb(self) -> float | None:
        """RSS of the process and its children (workers), in MiB."""
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.Error:
            return None

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            rss = self._rss_mb()
            if rss is not None:
                self.samples.append((time.monotonic() - self._t0, rss))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, warmup_s: float = 10.0) -> dict[str, Any]:
        steady = [rss for t, rss in self.samples if t >= warmup_s] or [
            rss for _, rss in self.samples
        ]
        if not steady:
            return {}
        first, last = steady[0], steady[-1]
        return {
            "rss_mb_start": round(first, 1),
            "rss_mb_end": round(last, 1),
            "rss_mb_max": round(max(steady), 1),
            "rss_growth_pct": round(100 * (last - first) / first, 1),
        }


@contextmanager
def spawned_server(
    tenants: list[str], shards: int, data_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[ServerProcess, str]]:
    """A `pointsd serve` child on a free loopback port for `tenants`."""
    redis_url, database_url, started = resolve_servers(data_dir)
    migrate.upgrade(database_url)
    tmp = Path(tempfile.mkdtemp(prefix="pointsd-load-"))
    rules = write_rules(tmp / "rules.yaml", {t: {"shards": shards} for t in tenants})
    env = pointsd_env(redis_url, database_url, rules, data_dir, **(extra_env or {}))
    server = ServerProcess(env, free_port(), tmp / "pointsd.log")
    server.start()
    try:
        yield server, database_url
    finally:
        server.terminate()
        for s in started:
            if s.owned:
                s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def plot(result: RunResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = result.stats.timeline
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot([p["t"] for p in tl], [p["events"] for p in tl], color="tab:blue")
    ax1.set_ylabel("events/s")
    ax1.set_title(title)
    ax1.grid(alpha=0.3)
    ax2.plot([p["t"] for p in tl], [p["p50_ms"] for p in tl], label="p50")
    ax2.plot([p["t"] for p in tl], [p["p99_ms"] for p in tl], label="p99")
    ax2.set_ylabel("latency per RPC (ms)")
    ax2.set_xlabel("seconds")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.loadtest",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--target", default="127.0.0.1:50051", help="host:port of a running server")
    where.add_argument("--spawn", action="store_true", help="start a server for the run")
    p.add_argument(
        "--tenants",
        default="demo",
        help="comma-separated tenant ids, or a count N (load-0..load-N-1) with --spawn",
    )
    p.add_argument("--shards", type=int, default=1, help="shards per tenant (--spawn)")
    p.add_argument("--workers", type=int, default=1, help="server processes (--spawn)")
    p.add_argument("--mode", choices=["unary", "batch", "stream"], default="batch")
    p.add_argument(
        "--concurrency", type=int, default=8, help="callers (unary/batch) or open streams (stream)"
    )
    p.add_argument(
        "--batch",
        type=int,
        default=500,
        help="events per RecordActivities; events in flight per stream",
    )
    p.add_argument("--rate", type=float, default=0.0, help="open-loop events/s (0 = max)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (bound)")
    p.add_argument("--events", type=int, default=5_000_000, help="events (bound)")
    p.add_argument("--users", type=int, default=10_000, help="users per run")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of user activity")
    p.add_argument(
        "--mix",
        default=",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items()),
        help="action=weight,...",
    )
    p.add_argument("--dup-rate", type=float, default=0.02, help="share of re-delivered events")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--channels", type=int, default=4, help="gRPC channels (connections)")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")
    p.add_argument("--plot", type=Path, help="write throughput/latency over time to a PNG")
    p.add_argument("--no-check", action="store_true", help="skip the ledger self-check")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="seconds for the check")
    p.add_argument(
        "--database-url",
        default="",
        help="for the check (default: DATABASE_URL, else the embedded one)",
    )
    p.add_argument("--server-pid", type=int, default=0, help="sample this process's memory")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded servers' folder (default: a fresh temporary one with --spawn, "
        "else POINTS_DATA_DIR or .pointsd, where `pointsd serve` keeps them)",
    )
    return p


async def _drive(ns: argparse.Namespace, target: str, spec: TrafficSpec) -> RunResult:
    return await run_load(
        target,
        spec,
        mode=ns.mode,
        concurrency=ns.concurrency,
        batch=ns.batch,
        rate=ns.rate,
        duration_s=ns.duration,
        events_max=ns.events,
        channels=ns.channels,
        progress=not ns.json and sys.stderr.isatty(),
    )


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.tenants.isdigit():
        tenants = [f"load-{i}" for i in range(int(ns.tenants))]
    else:
        tenants = [t for t in ns.tenants.split(",") if t]
    run_id = f"lt{time.strftime('%H%M%S')}{secrets.token_hex(2)}"
    spec = TrafficSpec(
        tenants=tenants,
        users=ns.users,
        zipf_s=ns.zipf,
        mix=parse_mix(ns.mix),
        dup_rate=ns.dup_rate,
        seed=ns.seed,
        run_id=run_id,
    )
    scratch: Path | None = None
    if ns.data_dir is None:
        if ns.spawn:
            # A spawned run's data is the run's own: it neither grows nor
            # slows down the folder a developer's `pointsd serve` uses.
            ns.data_dir = scratch = Path(tempfile.mkdtemp(prefix="pointsd-loadtest-"))
        else:
            ns.data_dir = Path(os.environ.get("POINTS_DATA_DIR", ".pointsd"))
    try:
        return _run(ns, tenants, run_id, spec)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(ns: argparse.Namespace, tenants: list[str], run_id: str, spec: TrafficSpec) -> int:
    if ns.spawn:
        result, summary = _run_spawned(ns, tenants, run_id, spec)
    else:
        result, summary = _run_against_target(ns, tenants, run_id, spec)
    return _report(ns, result, summary, run_id)


def _run_spawned(
    ns: argparse.Namespace, tenants: list[str], run_id: str, spec: TrafficSpec
) -> tuple[RunResult, dict[str, Any]]:
    extra = {"POINTS_WORKERS": str(ns.workers)}
    with spawned_server(tenants, ns.shards, ns.data_dir, extra) as (server, database_url):
        with RssSampler(server.pid) as rss:
            result = asyncio.run(_drive(ns, server.target, spec))
        summary = result.summary()
        summary["server_memory"] = rss.summary()
        if not ns.no_check:
            summary["self_check"] = wait_for_ledger(
                database_url, tenants, run_id, result.stats.awarded_points, ns.drain_timeout
            )
    return result, summary


def _run_against_target(
    ns: argparse.Namespace, tenants: list[str], run_id: str, spec: TrafficSpec
) -> tuple[RunResult, dict[str, Any]]:
    if ns.server_pid:
        with RssSampler(ns.server_pid) as rss:
            result = asyncio.run(_drive(ns, ns.target, spec))
    else:
        rss = None
        result = asyncio.run(_drive(ns, ns.target, spec))
    summary = result.summary()
    if rss is not None:
        summary["server_memory"] = rss.summary()
    if not ns.no_check:
        summary["self_check"] = _check_target_ledger(ns, tenants, run_id, result)
    return result, summary


def _check_target_ledger(
    ns: argparse.Namespace, tenants: list[str], run_id: str, result: RunResult
) -> dict[str, Any]:
    database_url = ns.database_url
    started: list[Any] = []
    if not database_url:
        _, database_url, started = resolve_servers(ns.data_dir, redis=False)
    try:
        return wait_for_ledger(
            database_url, tenants, run_id, result.stats.awarded_points, ns.drain_timeout
        )
    finally:
        for server in started:
            if server.owned:
                server.stop()


def _report(ns: argparse.Namespace, result: RunResult, summary: dict[str, Any], run_id: str) -> int:
    summary["run_id"] = run_id
    if ns.plot:
        plot(result, ns.plot, f"{ns.mode}: {summary['events_per_s']:,.0f} events/s")
        summary["plot"] = str(ns.plot)
    if ns.json:
        print(json.dumps(summary, separators=(",", ":")))
    else:
        _print_human(summary)
    check = summary.get("self_check")
    return 1 if check is not None and not check["ok"] else 0


def _print_human(s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    print(f"mode {s['mode']}  concurrency {s['concurrency']}  duration {s['duration_s']} s")
    print(
        f"events {s['events']:,}  ->  {s['events_per_s']:,.0f} events/s "
        f"({s['rpcs_per_s']:,.0f} RPCs/s)"
    )
    print("outcomes " + "  ".join(f"{k} {v:,}" for k, v in sorted(s["outcomes"].items())))
    print("errors   " + ("  ".join(f"{k} {v:,}" for k, v in s["errors"].items()) or "none"))
    print("latency per RPC (ms)  " + "  ".join(f"{k} {v:.2f}" for k, v in lat.items()))
    if s.get("server_memory"):
        m = s["server_memory"]
        print(
            f"server RSS {m['rss_mb_start']} -> {m['rss_mb_end']} MB ({m['rss_growth_pct']:+.1f}%)"
        )
    if "self_check" in s:
        c = s["self_check"]
        verdict = "OK" if c["ok"] else "MISMATCH"
        print(
            f"self-check {verdict}: awarded {c['awarded_points']:,} points, ledger "
            f"{c['ledger_points']:,} points in {c['ledger_rows']:,} rows "
            f"(drained in {c['drain_s']} s)"
        )


if __name__ == "__main__":
    sys.exit(main())
