"""What one credit costs Redis in award.lua, in CPU instructions.

    python -m scripts.lua_cost                                  # 100, 250, 500, 1000 a call
    python -m scripts.lua_cost --ops-per-call 500 --json
    python -m scripts.lua_cost --script my-award.lua --ops-per-call 500   # a variant

Wall-clock figures of Redis on a shared or virtual machine move by 20-50 %
from one run to the next (other processes, a host taking the CPU back); an
instruction count does not. This replays the raw ceiling's calls (the load
generator's traffic, planned by the default rule book and encoded as the
service encodes them, `--ops-per-call` credits a call) into a scratch
`redis-server` on loopback run under valgrind's callgrind: the first
`--warm` credits fill the keys (counters, boards, dedup records) and are not
counted, then the instructions of the next `--credits` credits are, with
the commands award.lua made for them (INFO commandstats). Same inputs, same
binary: the same count, whatever else the machine is doing.

Needs valgrind (callgrind, callgrind_control) and a redis-server (--redis-server,
else the one on PATH, else the embedded one). Exit status: 0; 2 when one is missing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pointsd.storage.redis.codec import APPLY, CallEncoder
from scripts.bench import _engine, planned_ops
from scripts.loadgen import Traffic, TrafficSpec
from scripts.procs import find_redis_server, start_scratch_redis, write_rules

__all__ = ["main", "measure"]

# A fixed service clock: the same keys, expiries and periods every run.
_NOW_MS = 1_796_293_607_898
_SUMMARY = re.compile(r"^(?:summary|totals): (\d+)", re.M)


def _calls(
    rules: Path, users: int, credits: int, per_call: int
) -> tuple[list[tuple[list[str], list[Any]]], list[int]]:
    """award.lua calls covering at least `credits` credits, and the credits of each."""
    engine, topology = _engine(rules)
    spec = TrafficSpec(tenants=["lua-cost-0", "lua-cost-1"], users=users, seed=7, run_id="lc")
    events = int(credits / 1.1) + 1000
    ops = planned_ops(engine, Traffic(spec).batch(events, _NOW_MS), _NOW_MS)
    # Calls in arrival order, per shard, as the service's dispatcher cuts them.
    calls: list[tuple[list[str], list[Any]]] = []
    sizes: list[int] = []
    pending: dict[Any, CallEncoder] = {}
    counts: dict[Any, int] = {}
    for op in ops:
        shard = topology.user_shard(op.tenant_id, op.user_id)
        encoder = pending.get(shard)
        if encoder is None:
            encoder = pending[shard] = CallEncoder(shard, APPLY, _NOW_MS // 1000, 0)
            counts[shard] = 0
        encoder.add(op)
        counts[shard] += 1
        if counts[shard] == per_call:
            keys, args = encoder.call()
            calls.append((keys, args))
            sizes.append(per_call)
            del pending[shard]
    return calls, sizes


def measure(
    script: str, redis_server: str, rules: Path, per_call: int, warm: int, credits: int, users: int
) -> dict[str, Any]:
    """Instructions per credit of `script` at `per_call` credits a call."""
    import redis as sync_redis

    calls, sizes = _calls(rules, users, warm + credits, per_call)
    split, done = 0, 0
    while split < len(calls) and done < warm:
        done += sizes[split]
        split += 1
    warm_calls, measured = calls[:split], calls[split:]
    budget, n = 0, 0
    while n < len(measured) and budget < credits:
        budget += sizes[split + n]
        n += 1
    measured = measured[:n]
    with tempfile.TemporaryDirectory(prefix="pointsd-lua-cost-") as tmp:
        out = Path(tmp) / "callgrind.out"
        proc, r = start_scratch_redis(
            redis_server, tmp, timeout_s=120, what="redis-server under valgrind",
            wrapper=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
        )  # fmt: skip
        try:
            sha = r.script_load(Path(script).read_text())
            for keys, args in warm_calls:
                r.evalsha(sha, len(keys), *keys, *args)
            r.config_resetstat()
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            for keys, args in measured:
                r.evalsha(sha, len(keys), *keys, *args)
            stats = r.info("commandstats")
            r.shutdown(nosave=True)
        except sync_redis.ConnectionError:
            pass  # the shutdown's own goodbye
        finally:
            r.close()
            proc.wait(60)
        found = _SUMMARY.search(out.read_text())
    if found is None:
        raise RuntimeError("callgrind wrote no instruction count")
    # commandstats count from the reset on: the measured calls, and what
    # their scripts ran (CONFIG RESETSTAT itself is not counted after it).
    commands = {
        name.removeprefix("cmdstat_"): round(v["calls"] / budget, 2)
        for name, v in stats.items()
        if name not in ("cmdstat_evalsha", "cmdstat_info", "cmdstat_config|resetstat")
    }
    return {
        "instructions_per_credit": round(int(found.group(1)) / budget),
        "credits": budget,
        "calls": len(measured),
        "warm_credits": done,
        "redis_calls_per_credit": round(sum(commands.values()), 2),
        "commands_per_credit": dict(sorted(commands.items(), key=lambda kv: -kv[1])),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.lua_cost", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--ops-per-call", default="100,250,500,1000", help="comma-separated sizes")
    p.add_argument("--credits", type=int, default=4000, help="credits counted per size")
    p.add_argument("--warm", type=int, default=10_000, help="credits run first, not counted")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--script", default="", help="an award.lua to measure (default: the service's)")
    p.add_argument("--redis-server", default="", help="the redis-server binary")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    ns = p.parse_args(argv)
    try:
        sizes = [int(x) for x in ns.ops_per_call.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or ns.credits < 1 or ns.warm < 0 or ns.users < 1:
        p.error("--ops-per-call: sizes >= 1; --credits >= 1, --warm >= 0, --users >= 1")
    script = ns.script or str(
        Path(__file__).resolve().parent.parent / "storage/pointsd/storage/redis/award.lua"
    )
    if not Path(script).exists():
        p.error(f"--script: no such file {script!r}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    server = find_redis_server(ns.redis_server)
    if server is None:
        print("no redis-server found: pass --redis-server PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pointsd-lua-cost-rules-") as tmp:
        rules = write_rules(Path(tmp) / "rules.yaml", {f"lua-cost-{i}": {} for i in range(2)})
        try:
            report: dict[str, Any] = {
                "redis_server": server,
                "script": script,
                "ops_per_call": {
                    str(n): measure(script, server, rules, n, ns.warm, ns.credits, ns.users)
                    for n in sizes
                },
            }
        except RuntimeError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    if ns.json:
        print(json.dumps(report, indent=2))
    else:
        for n, m in report["ops_per_call"].items():
            top = ", ".join(f"{c} {v}" for c, v in list(m["commands_per_credit"].items())[:6])
            print(
                f"{n:>5} credits a call: {m['instructions_per_credit']:>9,} instructions per "
                f"credit, {m['redis_calls_per_credit']} Redis commands per credit ({top})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
