"""Guarantees G1, G2, G3 and G12 (bonuses) when the service process is killed with SIGKILL
in the middle of a 20,000-event load. The client behaves like an IM server:
whatever was not acknowledged is sent again once the service is back."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from scripts.procs import ServerProcess, free_port, run_cli
from tests.conftest import Servers, _cleanup_tenants, new_tenant
from tests.helpers import child_env, ev, rules_file

EVENTS = 20_000
BATCH = 100
WORKERS = 6
KILL_AFTER_BATCHES = 60


def make_events(tenant: str) -> list[pb.ActivityEvent]:
    rng = random.Random(20261123)
    actions = ["message.text", "reply", "file", "like", "thanks_card", "login", "online"]
    out = []
    for i in range(EVENTS):
        action = rng.choice(actions)
        user = f"u{rng.randrange(400)}"
        extra: dict[str, Any] = {}
        if action in ("like", "thanks_card"):
            extra["target_user_id"] = f"u{(int(user[1:]) + 1 + rng.randrange(50)) % 400}"
        if action == "online":
            extra["quantity"] = rng.choice([5, 10, 30])
        out.append(ev(tenant, user, action, event_id=f"k{i}", **extra))
    return out


def _credits_told(
    batches: list[list[pb.ActivityEvent]], results: dict[int, pb.RecordActivitiesResponse]
) -> dict[str, tuple[str, int]]:
    """What the clients were told, for every credited user of every event."""
    credits = {}
    for i, resp in results.items():
        for e, r in zip(batches[i], resp.results, strict=True):
            assert r.outcome != pb.REJECTED, r.reason
            for c in r.credits:
                if c.points > 0:
                    role = "a" if c.role == pb.ACTOR else "t"
                    credits[f"e:{e.event_id}:{role}:{c.user_id}"] = (c.user_id, c.points)
            # Bonuses (tasks done, levels, streak milestones): a row each,
            # keyed by user and tag, zero-point ones included.
            for b in r.bonuses:
                key = f"b:{b.user_id}:{b.tag}"
                assert key not in credits, f"{key} told twice"
                credits[key] = (b.user_id, b.points)
    return credits


def _check_ledger(
    env: dict[str, str],
    sql: Callable[..., list[Any]],
    tenant: str,
    credits: dict[str, tuple[str, int]],
) -> None:
    """Once drained, the ledger holds exactly the credits the clients were told."""
    drained = run_cli(["flush", "--drain"], env)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    rows = sql("SELECT entry_key, user_id, points FROM ledger_entries WHERE tenant_id=:t", t=tenant)
    assert len(rows) == len({r[0] for r in rows})  # no entry twice
    assert {k: (u, p) for k, u, p in rows} == credits
    check = run_cli(["reconcile"], env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 mismatches" in check.stdout


@pytest.mark.slow
@pytest.mark.subprocess
async def test_sigkill_during_load_loses_nothing_and_doubles_nothing(
    servers: Servers, tmp_path: Path, sql
) -> None:
    tenant = new_tenant("kill")
    rules = rules_file(tmp_path / "rules.yaml", {tenant: {"shards": 4}})
    env = child_env(
        servers.redis_url, servers.database_url, rules, tmp_path, POINTS_FLUSH_CLAIM_IDLE_MS="2000"
    )
    server = ServerProcess(env, free_port(), tmp_path / "pointsd.log")
    server.start()
    events = make_events(tenant)
    batches = [events[i : i + BATCH] for i in range(0, EVENTS, BATCH)]
    results: dict[int, pb.RecordActivitiesResponse] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(batches)):
        queue.put_nowait(i)
    killed = asyncio.Event()
    failures = 0

    async def worker() -> None:
        nonlocal failures
        async with server.aio_channel() as channel:
            stub = pb_grpc.PointsServiceStub(channel)
            while not queue.empty():
                i = queue.get_nowait()
                while True:
                    try:
                        req = pb.RecordActivitiesRequest(events=batches[i])
                        results[i] = await stub.RecordActivities(req, timeout=10)
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() in (
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                        ), exc
                        failures += 1
                        await asyncio.sleep(0.2)  # retry the same batch, as IM servers do
                if len(results) == KILL_AFTER_BATCHES and not killed.is_set():
                    killed.set()
                    server.kill()
                    await asyncio.to_thread(server.start)

    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(WORKERS))), 240)
        assert killed.is_set()
        assert failures > 0, "the kill should have hit batches in flight"
        assert len(results) == len(batches)

        credits = _credits_told(batches, results)
        _check_ledger(env, sql, tenant, credits)
    finally:
        server.terminate()
        _cleanup_tenants(servers, [tenant])
