"""Guarantee G4 when the server is killed with SIGKILL in the middle of a
redemption storm: after a restart and recovery, every completed redemption
has exactly one spend in the ledger and vice versa, no stock is lost or
oversold, and balances reconcile."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from scripts.procs import ServerProcess, free_port, run_cli
from tests.conftest import Servers, _cleanup_tenants, new_tenant
from tests.helpers import child_env, rules_file

USERS = 60
REQUESTS = 300
STOCK = 150


async def _seed(server: ServerProcess, tenant: str) -> None:
    """The voucher item, and enough points for every user to redeem it."""
    async with server.aio_channel() as ch:
        admin = pb_grpc.AdminServiceStub(ch)
        item = pb.Item(
            tenant_id=tenant,
            item_id="voucher",
            name="Voucher",
            kind=pb.PHYSICAL,
            cost=10,
            stock=STOCK,
            enabled=True,
        )
        await admin.CreateItem(pb.CreateItemRequest(item=item))
        for u in range(USERS):
            await admin.AdjustPoints(
                pb.AdjustPointsRequest(
                    tenant_id=tenant,
                    user_id=f"u{u}",
                    points=50,
                    reason="seed",
                    idempotency_key=f"seed-{u}",
                )
            )


async def _redeem_again(
    server: ServerProcess, tenant: str, requests: list[tuple[str, str]], todo: list[int]
) -> None:
    """Send the redemptions `todo` again, with their request ids."""
    async with server.aio_channel() as ch:
        stub = pb_grpc.PointsServiceStub(ch)
        for i in todo:
            user, request_id = requests[i]
            try:
                await stub.Redeem(
                    pb.RedeemRequest(
                        tenant_id=tenant, user_id=user, item_id="voucher", request_id=request_id
                    )
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc


async def _wait_for_recovery(sql: Callable[..., list[Any]], tenant: str) -> None:
    deadline = time.monotonic() + 60
    while sql(
        "SELECT COUNT(*) FROM redemptions WHERE tenant_id = :t AND status IN "
        "('pending', 'refunding')",
        t=tenant,
    )[0][0]:
        assert time.monotonic() < deadline, "unfinished redemptions were not recovered"
        await asyncio.sleep(0.5)


async def _check_records(
    env: dict[str, str], sql: Callable[..., list[Any]], tenant: str, answered: dict[str, int]
) -> None:
    """Redemptions, spends, stock and balances agree, and with what clients were told."""
    drained = await asyncio.to_thread(run_cli, ["flush", "--drain"], env)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    completed = {
        r[0]: (r[1], r[2])
        for r in sql(
            "SELECT redemption_id, points, quantity FROM redemptions WHERE tenant_id = :t "
            "AND status = 'completed'",
            t=tenant,
        )
    }
    spends = sql(
        "SELECT event_id, points, entry_key FROM ledger_entries WHERE tenant_id = :t "
        "AND kind = 'spend'",
        t=tenant,
    )
    assert len(spends) == len({s[2] for s in spends})
    assert {s[0]: -s[1] for s in spends} == {k: v[0] for k, v in completed.items()}
    stock = sql("SELECT stock FROM catalog_items WHERE tenant_id = :t", t=tenant)[0][0]
    assert stock + sum(q for _, q in completed.values()) == STOCK
    assert len(completed) == STOCK  # demand (300) exceeded the stock: all of it went
    check = await asyncio.to_thread(run_cli, ["reconcile"], env)
    assert check.returncode == 0, check.stdout + check.stderr
    negative = sql(
        "SELECT user_id, SUM(points) FROM ledger_entries WHERE tenant_id = :t "
        "GROUP BY user_id HAVING SUM(points) < 0",
        t=tenant,
    )
    assert negative == []
    # What clients were told agrees with the records.
    status = dict(sql("SELECT request_id, status FROM redemptions WHERE tenant_id = :t", t=tenant))
    for request_id, told in answered.items():
        assert status[request_id] == ("completed" if told == pb.COMPLETED else "failed")


@pytest.mark.slow
@pytest.mark.subprocess
async def test_sigkill_during_a_redemption_storm(servers: Servers, tmp_path: Path, sql) -> None:
    tenant = new_tenant("storm")
    env = child_env(
        servers.redis_url,
        servers.database_url,
        rules_file(tmp_path / "r.yaml", {tenant: {}}),
        tmp_path,
        POINTS_REDEEM_RECOVERY_AFTER_S="1",
        POINTS_REDEEM_RECOVERY_INTERVAL_S="0.5",
    )
    server = ServerProcess(env, free_port(), tmp_path / "pointsd.log")
    await asyncio.to_thread(server.start)
    requests = [(f"u{i % USERS}", uuid.uuid4().hex) for i in range(REQUESTS)]
    answered: dict[str, int] = {}
    try:
        await _seed(server, tenant)

        queue = list(range(REQUESTS))
        random.Random(3).shuffle(queue)
        killed = asyncio.Event()
        lost: list[int] = []

        async def worker() -> None:
            async with server.aio_channel() as ch:
                stub = pb_grpc.PointsServiceStub(ch)
                while queue and not killed.is_set():
                    i = queue.pop()
                    user, request_id = requests[i]
                    try:
                        await stub.Redeem(
                            pb.RedeemRequest(
                                tenant_id=tenant,
                                user_id=user,
                                item_id="voucher",
                                request_id=request_id,
                            ),
                            timeout=10,
                        )
                        answered[request_id] = pb.COMPLETED
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                            answered[request_id] = pb.FAILED
                        else:
                            lost.append(i)
                    if len(answered) >= 90 and not killed.is_set():
                        killed.set()
                        server.kill()

        await asyncio.gather(*(worker() for _ in range(24)))
        assert killed.is_set() and lost, "the kill should hit redemptions in flight"
        await asyncio.to_thread(server.start)
        # Like a client, retry half of what got no answer (same request ids);
        # the recovery sweep must finish the other half on its own.
        await _redeem_again(server, tenant, requests, lost[::2] + queue)
        await _wait_for_recovery(sql, tenant)
    finally:
        server.terminate()

    try:
        await _check_records(env, sql, tenant, answered)
    finally:
        _cleanup_tenants(servers, [tenant])
