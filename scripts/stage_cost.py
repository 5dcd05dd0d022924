"""What each stage of the batch path costs the service's Python, per event.

    python -m scripts.stage_cost                        # the table
    python -m scripts.stage_cost --json
    scripts/compile && python -m scripts.stage_cost --compiled   # mypyc build beside pure

The bench's server CPU per batch event is one figure for the whole process,
and on a shared 2-core machine it moves by 10-20 % between runs. This runs
the same stages in one process with nothing else in between, on the load
generator's traffic planned by the default rule book: the request parsed
from its bytes, validation, planning, the award.lua calls encoded (the
service's chunking: per shard, `--ops-per-call` credits a call) and packed
into Redis's protocol, the replies decoded, each event's result combined,
and the response built and serialised. The replies are real: the calls run
once on a scratch `redis-server` on loopback (the machine's, else the
embedded one) before anything is timed, so results carry the real mix of
awarded, capped and duplicate credits and their bonuses. Each stage is timed
`--repeat` times over all events and its fastest pass reported, in µs per
event. What it leaves out is what is not ours to change per event: the
event loop, gRPC's C core, the socket and the flusher.

`--compiled [DIR]` runs it twice, once pure and once with DIR (default
build/compiled, made by `scripts/compile`) first on PYTHONPATH, and prints
both with pure ÷ compiled per stage. Exit status: 0; 2 when no redis-server
is found or DIR holds no compiled module.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from scripts.procs import ROOT, find_redis_server, start_scratch_redis, write_rules

__all__ = ["STAGES", "main", "measure"]

_NOW_MS = 1_796_293_607_898
_TENANTS = ["stage-0", "stage-1"]
STAGES = ("parse", "validate", "plan", "encode", "pack", "decode", "combine", "respond")


def _best(fn: Callable[[], object], repeat: int, events: int) -> float:
    """Fastest of `repeat` passes, µs per event."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(min(times) / events * 1e6, 3)


class _Batches:
    """The stages of the batch path over the same events, each a method that
    redoes its own work from what the stage before it left."""

    def __init__(self, rules: Path, *, events: int, users: int, batch: int, per_call: int) -> None:
        from redis.asyncio import Redis as AsyncRedis

        from pointsd.service.api.points.v1 import points_pb2 as pb
        from pointsd.service.ingest import Ingestor
        from pointsd.storage.redis import AwardStore
        from pointsd.storage.redis.codec import BoardNames
        from scripts.bench import _engine
        from scripts.loadgen import Traffic, TrafficSpec

        self.pb = pb
        self.engine, self.topology = _engine(rules)
        # The store is never called (combine only), but the compiled Ingestor
        # checks its type: an unconnected client is enough.
        awards = AwardStore(
            AsyncRedis(), self.topology, clock=lambda: _NOW_MS, outbox_entries_max=0
        )
        self.ingestor = Ingestor(self.engine, awards, lambda: _NOW_MS)
        traffic = Traffic(TrafficSpec(tenants=_TENANTS, users=users, seed=11, run_id="sc"))
        self.batch, self.per_call = batch, per_call
        self.requests = [
            pb.RecordActivitiesRequest(events=traffic.batch(batch, _NOW_MS)).SerializeToString()
            for _ in range(max(1, events // batch))
        ]
        self.events = len(self.requests) * batch
        self.sha = ""
        # Kept across calls, as AwardStore keeps them (codec.BoardNames).
        self.names = BoardNames()
        self.parsed: list[Any] = []
        self.validated: list[Any] = []
        self.plans: list[Any] = []
        self.calls: list[Any] = []
        self.call_ops: list[list[tuple[int, int]]] = []
        self.replies: list[Any] = []
        self.store: list[list[Any]] = []
        self.combined: list[Any] = []

    def parse(self) -> None:
        self.parsed = [self.pb.RecordActivitiesRequest.FromString(r) for r in self.requests]

    def validate(self) -> None:
        from pointsd.service.validation import InvalidField, event_from_pb
        from scripts.bench import _LIMITS

        self.validated.clear()
        for request in self.parsed:
            for msg in request.events:
                try:
                    self.validated.append(event_from_pb(msg, _NOW_MS, _LIMITS))
                except InvalidField as exc:
                    self.validated.append(exc)

    def plan(self) -> None:
        from pointsd.service.rules import Plan
        from pointsd.service.validation import InvalidField

        self.plans.clear()
        for item in self.validated:
            if not isinstance(item, InvalidField):
                planned = self.engine.plan(item, recorded_at_ms=_NOW_MS)
                if isinstance(planned, Plan):
                    self.plans.append(planned)

    def encode(self) -> None:
        """As AwardStore does: each batch's credits by shard, chunked."""
        from pointsd.storage.redis.codec import APPLY, CallEncoder

        self.calls.clear()
        self.call_ops.clear()
        plans = self.plans
        per_request = max(1, len(plans) * self.batch // max(1, self.events))
        for first in range(0, len(plans), per_request):
            by_shard: dict[Any, list[tuple[int, int]]] = {}
            for p in range(first, min(len(plans), first + per_request)):
                for j, op in enumerate(plans[p].ops):
                    shard = self.topology.user_shard(op.tenant_id, op.user_id)
                    by_shard.setdefault(shard, []).append((p, j))
            for shard, slots in by_shard.items():
                for start in range(0, len(slots), self.per_call):
                    chunk = slots[start : start + self.per_call]
                    encoder = CallEncoder(shard, APPLY, _NOW_MS // 1000, 0, self.names)
                    for p, j in chunk:
                        encoder.add(plans[p].ops[j])
                    self.calls.append(encoder.call())
                    self.call_ops.append(chunk)

    def pack(self) -> None:
        from redis.connection import Connection

        packer = Connection()
        for keys, args in self.calls:
            packer.pack_command("EVALSHA", self.sha, len(keys), *keys, *args)

    def decode(self) -> None:
        from pointsd.storage.redis.codec import decode_results

        store = self.store
        for chunk, reply in zip(self.call_ops, self.replies, strict=True):
            for (p, j), result in zip(chunk, decode_results(reply), strict=True):
                store[p][j] = result

    def combine(self) -> None:
        combine = self.ingestor._combine
        self.combined = [combine(p, s) for p, s in zip(self.plans, self.store, strict=True)]

    def respond(self) -> None:
        from pointsd.service.convert import add_results

        sent = [m for request in self.parsed for m in request.events]
        for first in range(0, len(self.combined), self.batch):
            response = self.pb.RecordActivitiesResponse()
            end = first + self.batch
            add_results(response.results, self.combined[first:end], sent[first:end])
            response.SerializeToString()

    def run_on_redis(self, redis_server: str, tmp: str) -> None:
        """The calls once on a scratch Redis: the replies the later stages use."""
        proc, r = start_scratch_redis(redis_server, tmp)
        try:
            self.sha = r.script_load((ROOT / "storage/pointsd/storage/redis/award.lua").read_text())
            pipe = r.pipeline(transaction=False)
            for keys, args in self.calls:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            self.replies = pipe.execute()
        finally:
            proc.terminate()
            proc.wait(10)
        self.store = [[None] * len(p.ops) for p in self.plans]


def measure(
    redis_server: str, *, events: int, users: int, batch: int, per_call: int, repeat: int
) -> dict[str, Any]:
    """µs per event of every stage, pure or compiled, whichever this process imports."""
    from scripts.bench import compiled_module_names

    with tempfile.TemporaryDirectory(prefix="pointsd-stage-cost-") as tmp:
        rules = write_rules(Path(tmp) / "rules.yaml", {t: {} for t in _TENANTS})
        b = _Batches(rules, events=events, users=users, batch=batch, per_call=per_call)
        for stage in (b.parse, b.validate, b.plan, b.encode):
            stage()
        b.run_on_redis(redis_server, tmp)
        b.decode()
        b.combine()
        us = {name: _best(getattr(b, name), repeat, b.events) for name in STAGES}
    credits = sum(len(p.ops) for p in b.plans)
    outcomes: dict[str, int] = {}
    for c in b.combined:
        outcomes[c.outcome.name] = outcomes.get(c.outcome.name, 0) + 1
    return {
        "compiled_modules": sum(
            (importlib.import_module(name).__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
            for name in compiled_module_names()
        ),
        "events": b.events,
        "credits_per_event": round(credits / b.events, 3),
        "credits_per_call": round(credits / max(1, len(b.calls)), 1),
        "outcomes": outcomes,
        "us_per_event": us,
        "total_us_per_event": round(sum(us.values()), 3),
    }


def _run_child(compiled: Path | None, argv: list[str]) -> dict[str, Any]:
    env = dict(os.environ)
    if compiled is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(compiled), *filter(None, [env.get("PYTHONPATH", "")])]
        )
    out = subprocess.run(
        [sys.executable, "-m", "scripts.stage_cost", *argv, "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.stage_cost", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=500, help="events per RecordActivities")
    p.add_argument("--ops-per-call", type=int, default=500, help="credits per award.lua call")
    p.add_argument("--repeat", type=int, default=5, help="passes per stage; the fastest counts")
    p.add_argument(
        "--compiled", nargs="?", const="build/compiled", default=None, metavar="DIR",
        help="also run with DIR (default build/compiled) first on PYTHONPATH",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON document")
    ns = p.parse_args(argv)
    if min(ns.events, ns.users, ns.batch, ns.ops_per_call, ns.repeat) < 1:
        p.error("--events, --users, --batch, --ops-per-call and --repeat must be >= 1")
    shape = ["--events", str(ns.events), "--users", str(ns.users), "--batch", str(ns.batch),
             "--ops-per-call", str(ns.ops_per_call), "--repeat", str(ns.repeat)]  # fmt: skip
    report: dict[str, Any]
    try:
        if ns.compiled is not None:
            from scripts.bench import compiled_modules_in

            tree = (ROOT / ns.compiled).resolve()
            if not compiled_modules_in(tree):
                print(f"--compiled: no compiled module under {tree} (run scripts/compile)",
                      file=sys.stderr)  # fmt: skip
                return 2
            pure, compiled = _run_child(None, shape), _run_child(tree, shape)
            report = {
                "pure": pure,
                "compiled": compiled,
                "pure_over_compiled": {
                    s: round(pure["us_per_event"][s] / max(1e-9, compiled["us_per_event"][s]), 2)
                    for s in STAGES
                },
            }
        else:
            server = find_redis_server()
            if server is None:
                print("no redis-server found (PATH or the embedded one)", file=sys.stderr)
                return 2
            report = measure(server, events=ns.events, users=ns.users, batch=ns.batch,
                             per_call=ns.ops_per_call, repeat=ns.repeat)  # fmt: skip
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(report, indent=2))
        return 0
    sides = (
        [("pure", report["pure"]), ("compiled", report["compiled"])]
        if "pure" in report
        else [("this build", report)]
    )
    print(f"{'stage':<10}" + "".join(f"{name:>14}" for name, _ in sides) + "   µs per event")
    for stage in (*STAGES, "total"):
        cells = [
            side["total_us_per_event"] if stage == "total" else side["us_per_event"][stage]
            for _, side in sides
        ]
        print(f"{stage:<10}" + "".join(f"{c:>14.2f}" for c in cells))
    first = sides[0][1]
    print(f"{first['events']} events, {first['credits_per_event']} credits an event, "
          f"{first['credits_per_call']} credits an award.lua call")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
