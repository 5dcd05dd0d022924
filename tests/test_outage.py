"""Guarantee G2 with PostgreSQL down during ingest: ingest goes on, entries
wait in Redis, and once PostgreSQL is back nothing is lost or doubled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.ops import reconcile
from tests.conftest import ApiFactory, Servers
from tests.helpers import ev, ledger_count, ledger_sum
from tests.proxy import TcpProxy


@dataclass
class Outage:
    """Stops and starts PostgreSQL as the service sees it: the embedded server
    itself, or a proxy in front of a shared one."""

    database_url: str
    stop: Any
    start: Any


@pytest.fixture
async def outage(servers: Servers) -> AsyncIterator[Outage]:
    if servers.embedded_pg is not None:
        pg = servers.embedded_pg

        async def stop() -> None:
            await asyncio.to_thread(pg.stop)

        async def start() -> None:
            await asyncio.to_thread(pg.restart)

        yield Outage(servers.database_url, stop, start)
        await asyncio.to_thread(pg.restart)  # in case the test failed while it was down
        return
    url = make_url(servers.database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    yield Outage(proxied, proxy.cut, proxy.start)
    await proxy.cut()


@pytest.mark.slow
async def test_postgres_down_during_ingest_loses_nothing(
    make_api: ApiFactory, tenant: str, outage: Outage, sql
) -> None:
    api = await make_api(
        [tenant], database_url=outage.database_url, flush_backoff_max_ms=300, db_timeout_s=2
    )
    awarded = 0

    async def ingest(batch: int) -> None:
        nonlocal awarded
        events = [
            ev(tenant, f"u{batch}-{i % 50}", "message.text", event_id=f"b{batch}-{i}")
            for i in range(500)
        ]
        resp = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
        awarded += sum(r.points for r in resp.results)

    await ingest(0)
    assert await api.app.flusher.drain(30)
    await outage.stop()
    for batch in range(1, 5):  # ingest keeps answering while the database is away
        await ingest(batch)
    await asyncio.sleep(1.0)
    assert api.app.flusher.stats.failures > 0
    assert await api.app.stores.outbox.backlog(api.app.shards()) > 0
    await outage.start()
    await ingest(5)
    assert await api.app.flusher.drain(60)
    assert awarded == 6 * 50 * 20
    assert ledger_sum(sql, tenant) == awarded
    assert ledger_count(sql, tenant) == len(
        sql("SELECT DISTINCT entry_key FROM ledger_entries WHERE tenant_id=:t", t=tenant)
    )
    assert (await reconcile(api.app)).clean


async def test_drain_reconcile_and_rebuild_give_up_in_time_while_postgres_is_down(
    make_api: ApiFactory, tenant: str, outage: Outage, rds
) -> None:
    """The drain's timeout holds while PostgreSQL is away: reconcile says
    "not drained", and a rebuild refuses and lifts its maintenance flag, so
    the tenant's writes go on. Cancelling a rebuild lifts the flag too."""
    from pointsd.service.ops import RebuildFailed, rebuild

    api = await make_api(
        [tenant], database_url=outage.database_url, flusher="off", flush_backoff_max_ms=200,
        db_timeout_s=1,
    )  # fmt: skip
    await api.stub.RecordActivity(ev(tenant, "u1", "login"))
    await outage.stop()
    try:
        # Hang guards only: each call must return by itself, near its timeout.
        assert not await asyncio.wait_for(api.app.flusher.drain(1.0), 60)
        assert not (await asyncio.wait_for(reconcile(api.app, drain_timeout_s=1.0), 60)).drained
        shard = api.app.shards()[0]
        api.app.flusher.drain = _short(api.app.flusher.drain)  # type: ignore[method-assign]
        with pytest.raises(RebuildFailed, match="could not be drained"):
            await asyncio.wait_for(rebuild(api.app, [tenant]), 60)
        assert not rds.exists(shard.maintenance)
        assert (await api.stub.RecordActivity(ev(tenant, "u2", "login"))).outcome == pb.AWARDED
        task = asyncio.create_task(rebuild(api.app, [tenant]))
        for _ in range(200):
            if rds.exists(shard.maintenance):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not rds.exists(shard.maintenance)
    finally:
        await outage.start()
    assert await api.app.flusher.drain(60)
    assert (await reconcile(api.app)).clean


def _short(drain: Any) -> Any:
    """A rebuild waits up to 300 s for the outbox; a test need not."""

    async def short(timeout_s: float, shards: Any = None) -> bool:
        return bool(await drain(min(timeout_s, 1.0), shards))

    return short
