"""Where the server process spends its time, per ingest mode.

    python -m scripts.profile                       # batch, unary, stream; a table
    python -m scripts.profile --modes batch --duration 8 --json

Starts one `pointsd serve` (on REDIS_URL / DATABASE_URL, or embedded servers
in a temporary folder), warms it up, then drives each mode with the bench's
load shapes (batch 8 x 500, unary 64 callers, 16 streams x 256) while py-spy
samples the server process (all its threads, Python frames, `--rate` Hz).
Each sample is put in the first stage of STAGES whose function is on its
stack (innermost wins), so the shares add up to 100 %; "event loop and gRPC
core" is time whose innermost Python frame is the loop's own (its C code and
gRPC's), "gRPC threads" the threads gRPC runs beside the loop. Also prints
the hottest functions by own time, and the run's events/s and server CPU per
event. Load only on loopback; every run is bounded in events and seconds.

Exit status: 0; 2 without the dev install (py-spy comes with it) or when
py-spy cannot attach (no ptrace permission, e.g. a container without
SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from scripts.loadgen import DEFAULT_MIX, TrafficSpec, run_load
from scripts.loadtest import resolve_servers
from scripts.procs import ServerProcess, free_port, pointsd_env, write_rules

__all__ = ["STAGES", "classify", "main", "parse_raw"]

# (stage, functions that mark it). A sample's stage is the one of its
# innermost frame that names a function of some stage.
STAGES: tuple[tuple[str, frozenset[str]], ...] = (
    ("validation (event_from_pb)", frozenset({"event_from_pb"})),
    ("planning (RulesEngine.plan)", frozenset({"RulesEngine.plan"})),
    ("encoding the Lua calls (CallEncoder)", frozenset({"CallEncoder.add", "CallEncoder.call"})),
    ("Redis client (redis-py)", frozenset({"LuaScript.run_many", "LuaScript._pipeline"})),
    ("Lua replies (decode_results)", frozenset({"decode_results"})),
    ("results (Ingestor._combine)", frozenset({"Ingestor._combine"})),
    ("protobufs out (result_to_pb)", frozenset({"result_to_pb"})),
    ("metrics", frozenset({"PointsServicer._count", "observe_award_round_trip"})),
    ("authentication", frozenset({"Gate.caller", "Gate.check", "Authenticator.caller"})),
    ("gRPC threads", frozenset({"Thread.run"})),
    # Own time of the handlers: protobufs in (the repeated events), the
    # request loop, what they call that no stage above names.
    (
        "handlers (PointsServicer, rpc wrappers)",
        frozenset(
            {
                "PointsServicer.RecordActivity",
                "PointsServicer.RecordActivities",
                "PointsServicer._record_many",
                "PointsServicer.StreamActivities",
                "unary.<locals>.wrapper",
                "stream.<locals>.wrapper",
            }
        ),
    ),
)
# Innermost frames that are the event loop's own: its C code and gRPC's.
_LOOP = frozenset({"Runner.run", "BaseEventLoop.run_forever", "BaseEventLoop._run_once", "run"})
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_SHAPES: dict[str, dict[str, Any]] = {
    "batch": {"mode": "batch", "concurrency": 8, "batch": 500},
    "unary": {"mode": "unary", "concurrency": 64},
    "stream": {"mode": "stream", "concurrency": 16, "batch": 256},
}


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: (function names outermost first,
    samples) per line."""
    out: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        names = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            names.append(m.group("fn") if m else frame)
        out.append((names, int(count)))
    return out


def classify(names: list[str]) -> str:
    """The stage of one sample's stack (outermost first)."""
    for name in reversed(names):
        for stage, functions in STAGES:
            if name in functions:
                return stage
    if names and names[-1] in _LOOP:
        return "event loop and gRPC core"
    return "other Python code"


def shares(samples: list[tuple[list[str], int]]) -> dict[str, Any]:
    total = sum(n for _, n in samples) or 1
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for names, n in samples:
        stages[classify(names)] += n
        if names:
            own[names[-1]] += n
    return {
        "samples": sum(n for _, n in samples),
        "stages_pct": {k: round(100 * v / total, 1) for k, v in stages.most_common()},
        "hottest_own_pct": {k: round(100 * v / total, 1) for k, v in own.most_common(12)},
    }


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def profile_mode(
    server: ServerProcess, mode: str, spec: TrafficSpec, ns: argparse.Namespace, spy: str, out: Path
) -> dict[str, Any]:
    import psutil

    proc = subprocess.Popen(
        [spy, "record", "--pid", str(server.pid), "--rate", str(ns.rate), "--format", "raw",
         "--output", str(out), "--duration", str(max(1, round(ns.duration))), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    root = psutil.Process(server.pid)
    cpu0 = sum(root.cpu_times()[:2])
    res = asyncio.run(
        run_load(server.target, spec, duration_s=ns.duration, events_max=ns.events,
                 token=server.token, **_SHAPES[mode])
    )  # fmt: skip
    cpu1 = sum(root.cpu_times()[:2])
    _, err = proc.communicate(timeout=ns.duration + 60)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy could not sample the server: {err.strip()[-300:]}")
    summary = res.summary()
    return {
        "events_per_s": summary["events_per_s"],
        "events": summary["events"],
        "errors": summary["errors"],
        "server_cpu_us_per_event": round((cpu1 - cpu0) * 1e6 / max(1, summary["events"]), 1),
        **shares(parse_raw(out.read_text())),
    }


def run(ns: argparse.Namespace, spy: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pointsd-profile-"))
    redis_url, database_url, embedded = resolve_servers(tmp / "data")
    tenants = [f"prof-{i}" for i in range(2)]
    rules = write_rules(tmp / "rules.yaml", {t: {"shards": 1} for t in tenants})
    env = pointsd_env(redis_url, database_url, rules, tmp / "data", POINTS_MIGRATE_ON_START="true")
    server = ServerProcess(env, free_port(), tmp / "pointsd.log")
    report: dict[str, Any] = {"settings": {"duration_s": ns.duration, "rate_hz": ns.rate}}
    try:
        server.start()

        def spec(seed: int) -> TrafficSpec:
            run_id = f"pf{seed}{time.strftime('%H%M%S')}"
            return TrafficSpec(tenants=tenants, users=ns.users, mix=dict(DEFAULT_MIX),
                               dup_rate=0.02, seed=seed, run_id=run_id)  # fmt: skip

        # Warm-up: compiled rules, connection pools, the token cache.
        asyncio.run(run_load(server.target, spec(0), duration_s=2, events_max=20_000,
                             token=server.token, **_SHAPES["batch"]))  # fmt: skip
        modes: dict[str, Any] = {}
        for i, mode in enumerate(ns.modes, start=1):
            modes[mode] = profile_mode(server, mode, spec(i), ns, spy, tmp / f"{mode}.raw")
        report["modes"] = modes
    finally:
        server.terminate()
        _cleanup(redis_url, database_url, tenants)
        for s in embedded:
            if s.owned:
                s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _cleanup(redis_url: str, database_url: str, tenants: list[str]) -> None:
    from scripts.bench import cleanup_ledger, cleanup_tenants

    cleanup_tenants(redis_url, tenants)
    cleanup_ledger(database_url, tenants)


def _print(report: dict[str, Any]) -> None:
    for mode, m in report["modes"].items():
        print(
            f"{mode}: {m['events_per_s']:,.0f} events/s, server CPU "
            f"{m['server_cpu_us_per_event']} µs/event, {m['samples']} samples"
        )
        for stage, pct in m["stages_pct"].items():
            print(f"  {pct:5.1f} %  {stage}")
        print("  hottest by own time: " + ", ".join(
            f"{fn} {pct} %" for fn, pct in list(m["hottest_own_pct"].items())[:6]))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.profile", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--modes", default="batch,unary,stream", help="comma-separated modes")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per mode")
    p.add_argument("--events", type=int, default=2_000_000, help="events per mode (bound)")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    ns = p.parse_args(argv)
    ns.modes = [m.strip() for m in ns.modes.split(",") if m.strip()]
    if not ns.modes or set(ns.modes) - set(_SHAPES):
        p.error(f"--modes: choose from batch, unary, stream, got {','.join(ns.modes)!r}")
    if ns.duration <= 0 or ns.rate <= 0 or ns.events <= 0:
        p.error("--duration, --rate and --events must be > 0")
    spy = _py_spy()
    if spy is None:
        print("py-spy is not installed: run ./scripts/install dev", file=sys.stderr)
        return 2
    try:
        report = run(ns, spy)
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
