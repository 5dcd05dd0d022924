"""Drive a points server like IM servers would, and check that nothing was lost.

    # against a running server (tenants must exist in its rule file)
    python -m scripts.loadtest --target 127.0.0.1:50051 --tenants demo --mode batch

    # start a server for the run (embedded Redis/PostgreSQL unless REDIS_URL /
    # DATABASE_URL are set), on 4 generated tenants with 4 shards each
    python -m scripts.loadtest --spawn --tenants 4 --shards 4 --mode unary --concurrency 64

Modes: unary (one RecordActivity per event, --concurrency callers), batch
(RecordActivities of --batch events), stream (--concurrency open streams with
--batch events in flight each). --rate N sends N events/s open-loop (at most
--inflight-max calls out; arrivals past that are dropped and counted as
CLIENT_OVERLOADED); without it the run is closed-loop at maximum throughput.
Every run is bounded by --duration and --events; every call by --timeout.

While it runs it reports progress on stderr: a live line on a terminal, a
plain line every --progress-interval seconds otherwise. At the end it prints
events/s (achieved vs --rate), outcomes, errors by kind with what each kind
means, and latency percentiles (--json: one JSON line), draws --plot FILE.png
(throughput against the target, latency, errors per second), and checks its
own work: once the outbox has drained, the points the server reported as
awarded must equal the ledger rows of the run's users in PostgreSQL (events
whose call failed are left out: the server may or may not have applied them).

Exit status: 0 fine; 1 the ledger check failed; 3 errors / events attempted
exceeded --max-error-rate (default 0.01); 2 bad arguments, or the load tools
are not installed (`./scripts/install dev`).
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
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from pointsd.storage.postgres import migrate, sqlalchemy_url

# Imported before anything of the `loadtest` extra: it exits 2 with the
# install command when those are missing.
from scripts.loadgen import (
    DEFAULT_MIX,
    RunResult,
    TrafficSpec,
    explain_error,
    parse_mix,
    run_load,
)
from scripts.procs import ServerProcess, free_port, pointsd_env, write_rules

__all__ = [
    "EXIT_ERRORS",
    "EXIT_LEDGER",
    "RssSampler",
    "ledger_points",
    "main",
    "plot",
    "plot_title",
    "resolve_servers",
    "wait_for_ledger",
]

EXIT_LEDGER = 1  # the ledger does not hold what the server said it awarded
EXIT_ERRORS = 3  # more errors than --max-error-rate allows


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


_LEDGER_SQL = text(
    "SELECT COALESCE(SUM(points) FILTER (WHERE NOT event_id = ANY(:x)), 0), "
    "COUNT(*) FILTER (WHERE NOT event_id = ANY(:x)), "
    "COALESCE(SUM(points) FILTER (WHERE event_id = ANY(:x)), 0) "
    "FROM ledger_entries WHERE tenant_id = ANY(:t) AND user_id LIKE :p"
)


def ledger_points(
    database_url: str, tenants: list[str], run_id: str, in_doubt: Collection[str] = ()
) -> tuple[int, int, int]:
    """(sum of points, rows) of the run's users, leaving out the events in
    `in_doubt`, and the sum of points of those."""
    engine = create_engine(sqlalchemy_url(database_url), pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                _LEDGER_SQL, {"t": tenants, "p": f"{run_id}-u%", "x": list(in_doubt)}
            ).one()
            return int(row[0]), int(row[1]), int(row[2])
    finally:
        engine.dispose()


def wait_for_ledger(
    database_url: str,
    tenants: list[str],
    run_id: str,
    expected: int,
    timeout_s: float,
    in_doubt: Collection[str] = (),
) -> dict[str, Any]:
    """Poll the ledger until the run's points arrive (the flusher drains the
    outbox in the background) or the timeout passes. Events in `in_doubt`
    (sent in a call that failed) are not compared: their points may or may
    not be there, and are reported apart."""
    start = time.monotonic()
    points, rows, doubtful = ledger_points(database_url, tenants, run_id, in_doubt)
    while points != expected and time.monotonic() - start < timeout_s:
        time.sleep(0.5)
        points, rows, doubtful = ledger_points(database_url, tenants, run_id, in_doubt)
    return {
        "awarded_points": expected,
        "ledger_points": points,
        "ledger_rows": rows,
        "in_doubt_events": len(in_doubt),
        "in_doubt_ledger_points": doubtful,
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


def plot_title(summary: dict[str, Any]) -> str:
    """Achieved vs target rate and the errors, so a figure cannot hide them."""
    title = f"{summary['mode']}: {summary['achieved_rate']:,.0f} events/s"
    target = summary.get("target_rate")
    if target:
        title += f" of {target:,.0f} target ({summary['achieved_rate'] / target:.0%})"
    errors = sum(summary["errors"].values())
    title += f", {errors:,} errors" if errors else ", no errors"
    if errors:
        title += f" ({summary['error_rate']:.1%} of {summary['attempted']:,} attempted)"
    return title


def plot(result: RunResult, path: Path) -> str:
    """Answered events/s against the target, latency, and errors per second
    by kind; returns the title, which is also the PNG's Title text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = plot_title(result.summary())
    tl = result.stats.timeline
    t = [p["t"] for p in tl]
    # Markers, so a run of a few seconds still shows its points.
    mark = {"marker": "."} if len(tl) < 30 else {}
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax1.plot(t, [p["events"] for p in tl], color="tab:blue", label="answered", **mark)
    if result.rate:
        ax1.axhline(result.rate, color="tab:gray", linestyle="--", label="target (--rate)")
    ax1.set_ylabel("events/s")
    ax1.set_title(title)
    ax1.legend(loc="lower right")
    ax1.grid(alpha=0.3)
    ax2.plot(t, [p["p50_ms"] for p in tl], label="p50", **mark)
    ax2.plot(t, [p["p99_ms"] for p in tl], label="p99", **mark)
    ax2.set_ylabel("latency per RPC (ms)")
    ax2.legend()
    ax2.grid(alpha=0.3)
    _plot_errors(ax3, tl, sorted(result.stats.errors), mark)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Title": title})
    plt.close(fig)
    return title


def _plot_errors(
    ax: Any, timeline: list[dict[str, Any]], kinds: list[str], mark: dict[str, str]
) -> None:
    t = [p["t"] for p in timeline]
    for kind in kinds:
        ax.plot(t, [p["errors_by_kind"].get(kind, 0) for p in timeline], label=kind, **mark)
    if kinds:
        ax.legend()
    else:
        ax.plot(t, [0] * len(t), color="tab:green")
        ax.text(0.5, 0.5, "no errors", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylabel("errors/s (events)")
    ax.set_xlabel("seconds")
    ax.grid(alpha=0.3)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.loadtest",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--target", default="127.0.0.1:50051", help="host:port of a running server")
    p.add_argument(
        "--token",
        default="",
        help="API token with the ingest role for --target (default: POINTS_TOKEN, else "
        "<data dir>/admin.token)",
    )
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
    p.add_argument(
        "--inflight-max",
        type=int,
        default=0,
        help="open loop: calls in flight before arrivals are dropped as CLIENT_OVERLOADED "
        "(default 64 per caller)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, seconds")
    p.add_argument(
        "--max-error-rate",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help=f"exit {EXIT_ERRORS} when errors / events attempted exceed this (default 0.01)",
    )
    p.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        help="seconds between progress lines when stderr is not a terminal (0: none)",
    )
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


def _target_token(ns: argparse.Namespace) -> str:
    """--token, else POINTS_TOKEN, else the admin token `pointsd serve`
    wrote into the data folder on its first start (empty: none found, for a
    server with POINTS_AUTH=off)."""
    if ns.token:
        return str(ns.token)
    if os.environ.get("POINTS_TOKEN"):
        return os.environ["POINTS_TOKEN"]
    written = Path(ns.data_dir) / "admin.token"
    return written.read_text().strip() if written.is_file() else ""


async def _drive(ns: argparse.Namespace, target: str, spec: TrafficSpec, token: str) -> RunResult:
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
        progress=_progress_mode(ns),
        progress_interval_s=ns.progress_interval,
        timeout_s=ns.timeout,
        inflight_max=ns.inflight_max,
        token=token,
    )


def _progress_mode(ns: argparse.Namespace) -> str:
    """A live line on a terminal; plain lines in a pipe or CI log, where a
    silent run cannot be told from a hung one."""
    if ns.progress_interval <= 0:
        return "off"
    if sys.stderr.isatty():
        return "off" if ns.json else "live"
    return "plain"


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
            result = asyncio.run(_drive(ns, server.target, spec, server.token))
        summary = result.summary()
        summary["server_memory"] = rss.summary()
        if not ns.no_check:
            summary["self_check"] = _check(ns, database_url, tenants, run_id, result)
    return result, summary


def _run_against_target(
    ns: argparse.Namespace, tenants: list[str], run_id: str, spec: TrafficSpec
) -> tuple[RunResult, dict[str, Any]]:
    if ns.server_pid:
        with RssSampler(ns.server_pid) as rss:
            result = asyncio.run(_drive(ns, ns.target, spec, _target_token(ns)))
    else:
        rss = None
        result = asyncio.run(_drive(ns, ns.target, spec, _target_token(ns)))
    summary = result.summary()
    if rss is not None:
        summary["server_memory"] = rss.summary()
    if not ns.no_check:
        summary["self_check"] = _check_target_ledger(ns, tenants, run_id, result)
    return result, summary


def _check(
    ns: argparse.Namespace, database_url: str, tenants: list[str], run_id: str, result: RunResult
) -> dict[str, Any]:
    stats = result.stats
    return wait_for_ledger(
        database_url, tenants, run_id, stats.awarded_points, ns.drain_timeout, stats.in_doubt
    )


def _check_target_ledger(
    ns: argparse.Namespace, tenants: list[str], run_id: str, result: RunResult
) -> dict[str, Any]:
    database_url = ns.database_url
    started: list[Any] = []
    if not database_url:
        _, database_url, started = resolve_servers(ns.data_dir, redis=False)
    try:
        return _check(ns, database_url, tenants, run_id, result)
    finally:
        for server in started:
            if server.owned:
                server.stop()


def _report(ns: argparse.Namespace, result: RunResult, summary: dict[str, Any], run_id: str) -> int:
    summary["run_id"] = run_id
    summary["max_error_rate"] = ns.max_error_rate
    if ns.plot:
        plot(result, ns.plot)
        summary["plot"] = str(ns.plot)
    code = _exit_code(summary, ns.max_error_rate)
    summary["exit"] = code
    if ns.json:
        print(json.dumps(summary, separators=(",", ":")))
    else:
        _print_human(summary)
    return code


def _exit_code(summary: dict[str, Any], max_error_rate: float) -> int:
    """A lost point outranks a noisy run: the ledger check's 1 comes first."""
    check = summary.get("self_check")
    if check is not None and not check["ok"]:
        return EXIT_LEDGER
    if summary["error_rate"] > max_error_rate:
        return EXIT_ERRORS
    return 0


def _print_human(s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    print(f"mode {s['mode']}  concurrency {s['concurrency']}  duration {s['duration_s']} s")
    rate = f"{s['achieved_rate']:,.0f} events/s"
    if s["target_rate"]:
        rate += f" of {s['target_rate']:,.0f} target ({s['achieved_rate'] / s['target_rate']:.0%})"
    print(
        f"events {s['events']:,} answered of {s['attempted']:,} attempted  ->  {rate} "
        f"({s['rpcs_per_s']:,.0f} RPCs/s)"
    )
    outcomes = "  ".join(f"{k} {v:,}" for k, v in sorted(s["outcomes"].items()))
    print("outcomes " + (outcomes or "none: no call was answered"))
    _print_errors(s)
    if s["rpcs"]:
        print("latency per RPC (ms)  " + "  ".join(f"{k} {v:.2f}" for k, v in lat.items()))
    if s.get("server_memory"):
        m = s["server_memory"]
        print(
            f"server RSS {m['rss_mb_start']} -> {m['rss_mb_end']} MB ({m['rss_growth_pct']:+.1f}%)"
        )
    if "self_check" in s:
        _print_check(s["self_check"])
    if s["exit"]:
        print(f"exit {s['exit']}: " + _verdict(s))


def _print_errors(s: dict[str, Any]) -> None:
    errors: dict[str, int] = s["errors"]
    if not errors:
        print("errors   none")
        return
    total = sum(errors.values())
    print(
        f"errors   {total:,} events, {s['error_rate']:.2%} of those attempted "
        f"(--max-error-rate {s['max_error_rate']:.2%}):"
    )
    width = max(len(k) for k in errors)
    for kind, n in sorted(errors.items(), key=lambda kv: -kv[1]):
        calls = s["failed_calls"].get(kind, n)
        print(f"  {kind:<{width}} {n:>10,} events in {calls:,} calls: {explain_error(kind)}")


def _print_check(c: dict[str, Any]) -> None:
    verdict = "OK" if c["ok"] else "MISMATCH"
    print(
        f"self-check {verdict}: awarded {c['awarded_points']:,} points, ledger "
        f"{c['ledger_points']:,} points in {c['ledger_rows']:,} rows "
        f"(drained in {c['drain_s']} s)"
    )
    if c["in_doubt_events"]:
        print(
            f"           not compared: {c['in_doubt_events']:,} events of failed calls, "
            f"{c['in_doubt_ledger_points']:,} points of them in the ledger"
        )


def _verdict(s: dict[str, Any]) -> str:
    if s["exit"] == EXIT_LEDGER:
        return "the ledger does not hold the points the server awarded"
    return f"error rate {s['error_rate']:.2%} is over --max-error-rate {s['max_error_rate']:.2%}"


if __name__ == "__main__":
    sys.exit(main())
