"""How often the farming signals trip on honest traffic, and how quickly
they catch a scripted ring and a script at machine pace (docs/farming.md).

One simulated week on a simulated clock (Monday 00:00, 2026-11-30, in the
tenant's zone; the service reads the same clock): every working hour
(09:00-19:00, Monday to Friday) the load generator's honest population
(scripts/loadgen.py: Zipf users, its action mix) sends its events at random
moments of the hour through the real service (in-process gRPC, real Redis
and PostgreSQL: embedded ones when REDIS_URL / DATABASE_URL are unset), the
flusher drains, and the real farming pass runs at the end of the hour.
Added to the honest traffic from Tuesday 09:00: a ring of `--ring` users
liking and thanking each other at a human pace, and one script sending a
text message every 30 s, within the caps.

Prints one JSON object: the honest users flagged (the false positives) and
their share of the active honest users, and for the ring and the script the
simulated hours from their first event to their flag.

    .venv/bin/python -m scripts.farming_check [--users 2000] [--events-per-user-day 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.app import App
from pointsd.service.config import Settings
from pointsd.service.farming import FarmingPass
from pointsd.service.rules import load_rule_file, parse_rule_book
from scripts.bench import cleanup_tenants
from scripts.loadgen import Traffic, TrafficSpec

ZONE = "Asia/Shanghai"
# Monday 2026-11-30 00:00 in ZONE: the simulated week (never today's date).
WEEK_START = datetime(2026, 11, 30, tzinfo=ZoneInfo(ZONE))
HOUR_MS = 3_600_000
WORK_HOURS = range(9, 19)
RING_START_H = 24 + 9  # Tuesday 09:00
SCRIPT_START_H = 24 + 10  # Tuesday 10:00


class SimClock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@dataclass
class Caught:
    first_event_h: float | None = None
    flagged_h: dict[str, float] = field(default_factory=dict)


def _event(tenant: str, event_id: str, user: str, action: str, at_ms: int, **kw: Any) -> Any:
    ts = Timestamp()
    ts.FromMilliseconds(at_ms)
    return pb.ActivityEvent(tenant_id=tenant, event_id=event_id, user_id=user, action=action,
                            occurred_at=ts, **kw)  # fmt: skip


def _ring_events(tenant: str, members: list[str], hour_ms: int, per_hour: int,
                 rng: random.Random, n: int) -> list[Any]:  # fmt: skip
    """Each member likes another member `per_hour` times an hour, and
    thanks one once a day (at 10:00)."""
    out = []
    for m in members:
        for k in range(per_hour):
            other = rng.choice([x for x in members if x != m])
            at = hour_ms + rng.randrange(HOUR_MS)
            out.append(_event(tenant, f"ring-{n}-{m}-{k}", m, "like", at, target_user_id=other))
        local = datetime.fromtimestamp(hour_ms / 1000, ZoneInfo(ZONE))
        if local.hour == 10:
            other = rng.choice([x for x in members if x != m])
            out.append(_event(tenant, f"ring-{n}-{m}-t", m, "thanks_card", hour_ms + 60_000,
                              target_user_id=other, attributes={"message": "thanks"}))  # fmt: skip
    return out


def _script_events(tenant: str, user: str, hour_ms: int, n: int) -> list[Any]:
    # Every 30 s for the hour: the text-message cap (40 points, 20 events a
    # day) pays the first 20, at machine-regular spacing.
    return [_event(tenant, f"script-{n}-{i}", user, "message.text", hour_ms + i * 30_000)
            for i in range(120)]  # fmt: skip


def _hour_events(
    args: argparse.Namespace,
    tenant: str,
    traffic: Traffic,
    rng: random.Random,
    ring: list[str],
    script_user: str,
    h: int,
    hour_ms: int,
) -> list[Any]:
    """Hour `h` of the week's events, in time order: nothing outside working hours."""
    local = datetime.fromtimestamp(hour_ms / 1000, ZoneInfo(ZONE))
    if local.weekday() >= 5 or local.hour not in WORK_HOURS:
        return []
    per_hour = args.users * args.events_per_user_day // len(WORK_HOURS)
    events = [traffic.next_event(hour_ms + rng.randrange(HOUR_MS)) for _ in range(per_hour)]
    if h >= RING_START_H:
        events += _ring_events(tenant, ring, hour_ms, args.ring_likes_per_hour, rng, h)
    if h == SCRIPT_START_H:
        events += _script_events(tenant, script_user, hour_ms, h)
    events.sort(key=lambda e: e.occurred_at.ToMilliseconds())
    return events


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tenant = f"farm-{uuid.uuid4().hex[:8]}"
    doc = load_rule_file(None)
    doc["tenants"] = [{"id": tenant, "timezone": ZONE, "shards": 1}]
    book = parse_rule_book(doc)
    clock = SimClock(int(WEEK_START.timestamp() * 1000))
    data = Path(tempfile.mkdtemp(prefix="pointsd-farming-"))
    # REDIS_URL / DATABASE_URL when set, else embedded servers in a temporary folder.
    settings = Settings.from_env(data_dir=data, auth="off", flusher="inline", flush_interval_ms=20)
    app = await App.open(settings, rules=book, clock=clock)
    from pointsd.service.server import start_server

    running = await start_server(app, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    stub = pb_grpc.PointsServiceStub(channel)
    spec = TrafficSpec(tenants=[tenant], users=args.users, seed=args.seed, run_id="h", dup_rate=0)
    traffic = Traffic(spec)
    rng = random.Random(args.seed)
    ring = [f"ring-{i}" for i in range(args.ring)]
    script_user = "script-0"
    passes = FarmingPass(app)
    active: set[str] = set()
    flagged: dict[str, tuple[float, set[str]]] = {}
    sent = 0
    try:
        for h in range(args.days * 24):
            hour_ms = int(WEEK_START.timestamp() * 1000) + h * HOUR_MS
            events = _hour_events(args, tenant, traffic, rng, ring, script_user, h, hour_ms)
            active.update(e.user_id for e in events if e.user_id.startswith("h-"))
            # In time order, the clock moving with them (events are never
            # from the service's future).
            for start in range(0, len(events), 500):
                chunk = events[start : start + 500]
                clock.ms = chunk[-1].occurred_at.ToMilliseconds() + 1
                await stub.RecordActivities(pb.RecordActivitiesRequest(events=chunk))
                sent += len(chunk)
            clock.ms = hour_ms + HOUR_MS - 1
            if not await app.flusher.drain(60):
                raise RuntimeError("the flusher did not drain")
            report = await passes.run_once()
            for _, _, user in report.flagged:
                if user not in flagged:
                    flagged[user] = (h + 1, set())
        signals: dict[str, set[str]] = {}
        evidence: dict[str, list[str]] = {}
        for flag in (await app.stores.farming.page(tenant, state=None, user_id=None, limit=500,
                                                   after_flag_id=None))[0]:  # fmt: skip
            signals[flag.user_id] = {f.signal for f in flag.findings}
            evidence[flag.user_id] = [f.evidence for f in flag.findings]
    finally:
        await channel.close()
        await running.stop(grace_s=2)
        # The run's Redis state is its own tenant's: none of it stays behind
        # (its ledger rows do, like every load run's, under that tenant).
        cleanup_tenants(app.redis_url, [tenant])
        shutil.rmtree(data, ignore_errors=True)
    return {
        "tenant": tenant,
        **_summary(args, ring, script_user, active, flagged, signals, evidence, sent),
    }


def _summary(
    args: argparse.Namespace,
    ring: list[str],
    script_user: str,
    active: set[str],
    flagged: dict[str, tuple[float, set[str]]],
    signals: dict[str, set[str]],
    evidence: dict[str, list[str]],
    sent: int,
) -> dict[str, Any]:
    honest_flagged = sorted(u for u in flagged if u.startswith("h-"))
    ring_hours = [flagged[m][0] - RING_START_H for m in ring if m in flagged]
    return {
        "simulated_days": args.days,
        "honest_users": args.users,
        "honest_active_users": len(active),
        "events_sent": sent,
        "honest_flagged": len(honest_flagged),
        "honest_flagged_users": {u: evidence.get(u, []) for u in honest_flagged[:10]},
        "false_positive_rate": round(len(honest_flagged) / max(1, len(active)), 6),
        "ring_members": len(ring),
        "ring_members_caught": len(ring_hours),
        "ring_signals": sorted({s for m in ring for s in signals.get(m, ())}),
        "ring_first_caught_after_h": min(ring_hours) if ring_hours else None,
        "ring_all_caught_after_h": max(ring_hours) if len(ring_hours) == len(ring) else None,
        "script_caught_after_h": (flagged[script_user][0] - SCRIPT_START_H)
        if script_user in flagged
        else None,
        "script_signals": sorted(signals.get(script_user, ())),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=2000, help="honest population (default 2000)")
    p.add_argument("--events-per-user-day", type=int, default=30)
    p.add_argument("--days", type=int, default=7, help="simulated days from Monday (1..7)")
    p.add_argument("--ring", type=int, default=5, help="ring members (2..10)")
    p.add_argument("--ring-likes-per-hour", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if not (1 <= args.days <= 7 and 2 <= args.ring <= 10 and 10 <= args.users <= 100_000):
        print("farming_check: --days 1..7, --ring 2..10, --users 10..100000", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
