"""Metrics (docs/metrics.md): each process role exports only its own; RPCs
are counted by method and code, cancelled and timed-out calls included;
events, credits, award.lua calls, flushes, dead letters, store errors and
outbox lengths count what really happened; the dashboard and the alerts use
only names the processes export, and promtool accepts and tests the rules."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import redis as sync_redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.metrics import (
    FLUSHER,
    OTHER_ACTION,
    SERVER,
    measure_outbox,
    registry_for,
    roles_of,
    serve_metrics,
    shard_label,
    watch_outbox,
)
from scripts.procs import ROOT, ServerProcess, free_port
from tests.conftest import Api, ApiFactory, Servers, _cleanup_tenants, new_tenant, wait_for
from tests.helpers import child_env, ev, ledger_count, rules_file
from tests.proxy import TcpProxy

DASHBOARD = ROOT / "deploy/grafana/dashboards/pointsd.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
ALERTS_TEST = ROOT / "deploy/prometheus/alerts_test.yml"

# What every test reads its numbers from: both roles, as one process exports them.
_REGISTRY = registry_for([SERVER, FLUSHER])


def sample(name: str, **labels: str) -> float:
    return _REGISTRY.get_sample_value(name, labels) or 0.0


def rpc_count(service: str, method: str, code: str) -> float:
    return sample(
        "points_rpc_requests_total", service=service, method=method, code=code
    )  # fmt: skip


# --------------------------------------------------------------------------
# What each role exports


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample_names(families: dict[str, Any]) -> set[str]:
    """Every name a query can use: the samples a family has or will have."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for name, family in families.items():
        names.update(name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
        return text


@contextlib.contextmanager
def _endpoint(roles: list[str]) -> Iterator[int]:
    server = serve_metrics(0, "127.0.0.1", roles)
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


_SERVER_ONLY = ("points_rpc_", "points_events", "points_credits", "points_award_")
_FLUSHER_ONLY = ("points_flush_", "points_outbox_")


def _roles_of_build_info(families: dict[str, Any]) -> list[str]:
    return sorted(s.labels["role"] for s in families["points_build_info"].samples)


def _check_role_split(server: dict[str, Any], flusher: dict[str, Any]) -> None:
    assert not [n for n in server if n.startswith(_FLUSHER_ONLY)]
    assert not [n for n in flusher if n.startswith(_SERVER_ONLY)]
    assert {"points_rpc_requests", "points_rpc_duration_seconds", "points_events"} <= set(server)
    assert {"points_flush_rows", "points_flush_dead_letters", "points_outbox_length"} <= set(
        flusher
    )
    for families in (server, flusher):
        assert "process_cpu_seconds" in families and "points_store_errors" in families
    assert _roles_of_build_info(server) == [SERVER]
    assert _roles_of_build_info(flusher) == [FLUSHER]


async def test_each_role_exports_only_its_own_metrics() -> None:
    from importlib.metadata import version

    with _endpoint([SERVER]) as s, _endpoint([FLUSHER]) as f, _endpoint([SERVER, FLUSHER]) as both:
        server = _families(await asyncio.to_thread(_scrape, s))
        flusher = _families(await asyncio.to_thread(_scrape, f))
        inline = _families(await asyncio.to_thread(_scrape, both))
    _check_role_split(server, flusher)
    assert _roles_of_build_info(inline) == [FLUSHER, SERVER]
    (info,) = server["points_build_info"].samples
    assert info.value == 1 and info.labels["version"] == version("pointsd")
    assert info.labels["grpc"] == grpc.__version__ and info.labels["python"]
    # serve with POINTS_FLUSHER=inline flushes too: it exports both.
    assert roles_of("inline") == [SERVER, FLUSHER] and roles_of("process") == [SERVER]


# --------------------------------------------------------------------------
# The dashboard and the alerts


def _names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:points|process)_[a-z0-9_]+\b", expr))


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def _alert_exprs() -> list[str]:
    import yaml

    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def _used_names() -> set[str]:
    return {n for e in [*_dashboard_exprs(), *_alert_exprs()] for n in _names_in(e)}


def test_the_dashboard_and_the_alerts_use_only_exported_metrics() -> None:
    exported = _sample_names(_families(generate_latest(registry_for([SERVER, FLUSHER])).decode()))
    used = _used_names()
    # The panels the dashboard promises are there (and their queries parsed).
    assert {
        "points_rpc_requests_total", "points_rpc_duration_seconds_bucket", "points_events_total",
        "points_award_lua_seconds_bucket", "points_award_lua_batch_ops_bucket",
        "points_outbox_length", "points_flush_rows_total", "points_flush_lag_seconds_bucket",
        "points_flush_dead_letters_total", "points_store_errors_total", "points_build_info",
    } <= used  # fmt: skip
    assert sorted(used - exported) == []


def test_promtool_checks_the_rules_and_each_alert_fires_only_when_it_should() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/ensure-tools (apt-get install prometheus)"
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS_TEST)]):
        done = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    assert tested == set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))


# --------------------------------------------------------------------------
# RPCs


async def test_calls_are_counted_by_service_method_and_code(api: Api) -> None:
    before = {
        "ok": rpc_count("PointsService", "RecordActivity", "OK"),
        "bad": rpc_count("PointsService", "RecordActivity", "INVALID_ARGUMENT"),
        "admin": rpc_count("AdminService", "ListItems", "OK"),
        "stream": rpc_count("PointsService", "StreamActivities", "OK"),
        "timed": sample(
            "points_rpc_duration_seconds_count",
            service="PointsService", method="RecordActivity", code="OK",
        ),
    }  # fmt: skip
    await api.stub.RecordActivity(ev(api.tenant, "u1", "login"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(ev(api.tenant, "", "login"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await pb_grpc.AdminServiceStub(api.channel).ListItems(pb.ListItemsRequest(tenant_id=api.tenant))
    call = api.stub.StreamActivities()
    await call.write(ev(api.tenant, "u2", "login"))
    await call.done_writing()
    assert [r.outcome async for r in call] == [pb.AWARDED]
    await _counted("PointsService", "StreamActivities", "OK", before["stream"] + 1)
    assert rpc_count("PointsService", "RecordActivity", "OK") == before["ok"] + 1
    assert rpc_count("PointsService", "RecordActivity", "INVALID_ARGUMENT") == before["bad"] + 1
    assert rpc_count("AdminService", "ListItems", "OK") == before["admin"] + 1
    assert (
        sample(
            "points_rpc_duration_seconds_count",
            service="PointsService", method="RecordActivity", code="OK",
        )
        == before["timed"] + 1
    )  # fmt: skip


async def _counted(service: str, method: str, code: str, expected: float) -> None:
    async def reached() -> bool:
        return rpc_count(service, method, code) >= expected

    await wait_for(reached, timeout_s=10)
    assert rpc_count(service, method, code) == expected


async def test_a_stream_the_client_cancels_is_counted_cancelled(api: Api) -> None:
    before = rpc_count("PointsService", "StreamActivities", "CANCELLED")
    call = api.stub.StreamActivities()
    await call.write(ev(api.tenant, "u1", "login"))
    assert (await call.read()).outcome == pb.AWARDED
    call.cancel()
    await _counted("PointsService", "StreamActivities", "CANCELLED", before + 1)


def _redis_proxy(url: str) -> tuple[TcpProxy, Callable[[int], str]]:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        path, db = parts.path, "0"
        proxy = TcpProxy(connect=lambda: asyncio.open_unix_connection(path))
    else:
        host, port, db = parts.hostname or "127.0.0.1", parts.port or 6379, parts.path.strip("/")
        proxy = TcpProxy(host, port)
    return proxy, lambda p: f"redis://127.0.0.1:{p}/{db or '0'}"


def _postgres_proxy(url: str) -> tuple[TcpProxy, Callable[[int], str]]:
    parsed = make_url(url)
    socket_dir = parsed.query.get("host")
    if parsed.host is None and isinstance(socket_dir, str):
        (path,) = [p for p in glob.glob(f"{socket_dir}/.s.PGSQL.*") if not p.endswith(".lock")]
        proxy = TcpProxy(connect=lambda: asyncio.open_unix_connection(path))
    else:
        host, port = parsed.host or "127.0.0.1", parsed.port or 5432
        proxy = TcpProxy(host, port)
    query = {k: v for k, v in parsed.query.items() if k != "host"}

    def proxied(p: int) -> str:
        return parsed.set(host="127.0.0.1", port=p, query=query).render_as_string(
            hide_password=False
        )

    return proxy, proxied


@dataclass
class Proxied:
    proxy: TcpProxy
    url: str


# Request these before make_api: fixtures stop in reverse order, so the app
# is stopped while its server is still reachable through the proxy.
@pytest.fixture
async def redis_proxy(servers: Servers) -> AsyncIterator[Proxied]:
    proxy, url = _redis_proxy(servers.redis_url)
    await proxy.start()
    yield Proxied(proxy, url(proxy.port))
    proxy.flowing.set()
    await proxy.cut()


@pytest.fixture
async def postgres_proxy(servers: Servers) -> AsyncIterator[Proxied]:
    proxy, url = _postgres_proxy(servers.database_url)
    await proxy.start()
    yield Proxied(proxy, url(proxy.port))
    await proxy.cut()


async def test_calls_cut_short_by_their_deadline_or_the_client_are_counted(
    redis_proxy: Proxied, make_api: ApiFactory, tenant: str
) -> None:
    """Redis stops answering: one call's deadline passes, another's client
    gives up; both handlers are cancelled, and counted as such."""
    proxy = redis_proxy.proxy
    api = await make_api([tenant], redis_url=redis_proxy.url, flusher="off", redis_timeout_s=3)
    deadline = rpc_count("PointsService", "RecordActivity", "DEADLINE_EXCEEDED")
    cancelled = rpc_count("PointsService", "RecordActivity", "CANCELLED")
    proxy.flowing.clear()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.RecordActivity(ev(tenant, "u1", "login"), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        call = api.stub.RecordActivity(ev(tenant, "u2", "login"))
        await asyncio.sleep(0.3)
        call.cancel()
        await _counted("PointsService", "RecordActivity", "DEADLINE_EXCEEDED", deadline + 1)
        await _counted("PointsService", "RecordActivity", "CANCELLED", cancelled + 1)
    finally:
        proxy.flowing.set()
    await _redis_gone_is_a_store_error(api, proxy, tenant)


async def _redis_gone_is_a_store_error(api: Api, proxy: TcpProxy, tenant: str) -> None:
    rpc = ("redis", "RecordActivity")
    outbox = ("redis", "outbox_length")
    before = {k: sample("points_store_errors_total", store=k[0], op=k[1]) for k in (rpc, outbox)}
    unavailable = rpc_count("PointsService", "RecordActivity", "UNAVAILABLE")
    await proxy.cut()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(ev(tenant, "u3", "login"), timeout=20)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not await measure_outbox(api.app.stores.outbox, api.app.shards())
    assert (
        sample("points_store_errors_total", store="redis", op="RecordActivity") == before[rpc] + 1
    )
    assert (
        sample("points_store_errors_total", store="redis", op="outbox_length") == before[outbox] + 1
    )
    assert rpc_count("PointsService", "RecordActivity", "UNAVAILABLE") == unavailable + 1
    await proxy.start()  # back, for an orderly stop


# --------------------------------------------------------------------------
# Events, credits and the award store


def _events(outcome: str, action: str) -> float:
    return sample("points_events_total", outcome=outcome, action=action)


def _credits(outcome: str, action: str, role: str) -> float:
    return sample("points_credits_total", outcome=outcome, action=action, credit_role=role)


async def test_events_and_credits_are_counted_by_outcome_and_action(api: Api) -> None:
    before = {
        "awarded": _events("AWARDED", "like"),
        "duplicate": _events("DUPLICATE", "like"),
        "no_rule": _events("NO_RULE", OTHER_ACTION),
        "actor": _credits("AWARDED", "like", "actor"),
        "target": _credits("AWARDED", "like", "target"),
        "dup_actor": _credits("DUPLICATE", "like", "actor"),
    }
    like = ev(api.tenant, "giver", "like", target_user_id="taker")
    assert (await api.stub.RecordActivity(like)).outcome == pb.AWARDED
    assert (await api.stub.RecordActivity(like)).outcome == pb.DUPLICATE
    unknown = ev(api.tenant, "giver", "no.such.action")
    assert (await api.stub.RecordActivity(unknown)).outcome == pb.NO_RULE
    assert _events("AWARDED", "like") == before["awarded"] + 1
    assert _events("DUPLICATE", "like") == before["duplicate"] + 1
    # Caller input never becomes a label value.
    assert _events("NO_RULE", OTHER_ACTION) == before["no_rule"] + 1
    assert _events("NO_RULE", "no.such.action") == 0
    assert _credits("AWARDED", "like", "actor") == before["actor"] + 1
    assert _credits("AWARDED", "like", "target") == before["target"] + 1
    assert _credits("DUPLICATE", "like", "actor") == before["dup_actor"] + 1


async def test_award_round_trips_and_their_batch_sizes_are_observed(api: Api) -> None:
    trips = sample("points_award_lua_seconds_count")
    calls = sample("points_award_lua_batch_ops_count")
    ops = sample("points_award_lua_batch_ops_sum")
    events = [ev(api.tenant, f"u{i}", "login") for i in range(30)]
    response = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    assert [r.outcome for r in response.results] == [pb.AWARDED] * 30
    # One shard, 30 one-credit events: one round trip, one call of 30.
    assert sample("points_award_lua_seconds_count") == trips + 1
    assert sample("points_award_lua_batch_ops_count") == calls + 1
    assert sample("points_award_lua_batch_ops_sum") == ops + 30


# --------------------------------------------------------------------------
# The flusher


def _entry(points: int, key: str = "e:odd:a:u1") -> dict[Any, Any]:
    parts = ["1", "award", key, "u1", "odd", "a", "login", "", "", "", "1",
             "1700000000000", "1700000000000", "", "x"]  # fmt: skip
    return {"p": str(points), "b": str(points), "d": "\x1f".join(parts)}


def _flush_numbers() -> dict[str, float]:
    return {
        "inserted": sample("points_flush_rows_total", result="inserted"),
        "duplicate": sample("points_flush_rows_total", result="duplicate"),
        "batches": sample("points_flush_batches_total"),
        "lags": sample("points_flush_lag_seconds_count"),
        **{
            r: sample("points_flush_dead_letters_total", reason=r)
            for r in ("malformed", "refused", "conflict")
        },
    }


def _delta(before: dict[str, float]) -> dict[str, float]:
    after = _flush_numbers()
    return {k: after[k] - before[k] for k in before}


async def test_flushed_rows_lag_and_dead_letters_are_counted(
    make_api: ApiFactory, tenant: str, sql: Any, rds: sync_redis.Redis
) -> None:
    api = await make_api([tenant], flusher="off")
    shard = api.app.shards()[0]
    before = _flush_numbers()
    for user in ("u1", "u2", "u3"):
        await api.stub.RecordActivity(ev(tenant, user, "login"))
    rds.xadd(shard.outbox, {"garbage": "1"})  # not an entry at all
    rds.xadd(shard.outbox, _entry(0, "e:zero:a:u1"))  # the ledger refuses 0 points
    assert await api.app.flusher.drain(30)
    assert ledger_count(sql, tenant) == 3
    got = _delta(before)
    assert got["inserted"] == 3 and got["duplicate"] == 0
    assert got["malformed"] == 1 and got["refused"] == 1 and got["conflict"] == 0
    assert got["batches"] >= 1 and got["lags"] >= 3
    # The same entry again is a duplicate; other content under its key a conflict.
    before = _flush_numbers()
    for points in (5, 5, 7):
        rds.xadd(shard.outbox, _entry(points))
        assert await api.app.flusher.drain(30)
    got = _delta(before)
    assert (got["inserted"], got["duplicate"], got["conflict"], got["refused"]) == (1, 1, 1, 0)
    assert rds.xlen(shard.dead_letters) == 3


async def test_flush_failures_are_counted_as_postgresql_errors(
    postgres_proxy: Proxied, make_api: ApiFactory, tenant: str, sql: Any
) -> None:
    proxy = postgres_proxy.proxy
    api = await make_api(
        [tenant], database_url=postgres_proxy.url, flusher="off", db_timeout_s=2,
        flush_backoff_max_ms=200,
    )  # fmt: skip
    await api.stub.RecordActivity(ev(tenant, "u1", "login"))
    failures = sample("points_flush_failures_total")
    errors = sample("points_store_errors_total", store="postgresql", op="flush")
    await proxy.cut()
    try:
        assert not await api.app.flusher.drain(2)
    finally:
        await proxy.start()
    failed = sample("points_flush_failures_total") - failures
    assert failed >= 1
    assert sample("points_store_errors_total", store="postgresql", op="flush") == errors + failed
    assert await api.app.flusher.drain(30)
    assert ledger_count(sql, tenant) == 1


async def test_outbox_lengths_are_measured_per_shard(
    make_api: ApiFactory, tenant: str, rds: sync_redis.Redis
) -> None:
    api = await make_api({tenant: {"shards": 2}}, flusher="off")
    shards = api.app.shards()
    for i in range(12):
        await api.stub.RecordActivity(ev(tenant, f"user-{i}", "login"))
    lengths = {shard_label(s): rds.xlen(s.outbox) for s in shards}
    assert sum(lengths.values()) == 12 and all(lengths.values())  # both shards hold some
    assert await measure_outbox(api.app.stores.outbox, shards)
    got = {label: sample("points_outbox_length", shard=label) for label in lengths}
    assert got == lengths
    # The flusher role's loop measures until stopped; a drained outbox reads 0.
    assert await api.app.flusher.drain(30)
    stop = asyncio.Event()
    watching = asyncio.create_task(watch_outbox(api.app.stores.outbox, api.app.shards, stop, 0.05))

    async def drained() -> bool:
        return all(sample("points_outbox_length", shard=label) == 0 for label in lengths)

    try:
        await wait_for(drained, timeout_s=10)
    finally:
        stop.set()
        await asyncio.wait_for(watching, 5)


# --------------------------------------------------------------------------
# Real processes


def _ports() -> int:
    """A base port whose next port is free too."""
    for _ in range(50):
        port = free_port()
        with contextlib.suppress(OSError), _bound(port + 1):
            return port
    raise AssertionError("no two consecutive free ports")


@contextlib.contextmanager
def _bound(port: int) -> Iterator[None]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        yield


@pytest.mark.subprocess
def test_serve_and_its_flusher_child_each_export_their_role(
    servers: Servers, tmp_path: Path
) -> None:
    """`pointsd serve`: the server's metrics on POINTS_METRICS_PORT, its flusher
    child's on the next port; what the dashboard and the alerts query is
    what they export."""
    tenant = new_tenant()
    base = _ports()
    env = child_env(
        servers.redis_url, servers.database_url, rules_file(tmp_path / "r.yaml", {tenant: {}}),
        tmp_path, POINTS_METRICS_PORT=str(base), POINTS_FLUSH_INTERVAL_MS="20",
    )  # fmt: skip
    server = ServerProcess(env, free_port(), tmp_path / "log")
    server.start()
    try:
        with server.channel() as ch:
            stub = pb_grpc.PointsServiceStub(ch)
            stub.RecordActivity(ev(tenant, "u1", "login"), timeout=10)
            flusher = _wait_for_rows(base + 1)
            gc_before = (_gen0(_families(_scrape(base))), _gen0(flusher))
            # 2,000 events, 2,000 ledger rows: with the collector's default
            # thresholds (700) the server collects ~27 times here, as a
            # batch's objects live together; tuned, it does not.
            for b in range(4):
                events = [ev(tenant, f"g{b}-{i}", "message.text") for i in range(500)]
                stub.RecordActivities(pb.RecordActivitiesRequest(events=events), timeout=30)
            flusher = _wait_for_rows(base + 1, rows=2001)
            served = _families(_scrape(base))
    finally:
        assert server.terminate() == 0
        _cleanup_tenants(servers, [tenant])
    _check_role_split(served, flusher)
    # Serving and flushing processes run with the tuned thresholds
    # (pointsd.service.server.GC_THRESHOLDS).
    gc_during = (_gen0(served) - gc_before[0], _gen0(flusher) - gc_before[1])
    assert gc_during[0] < 8 and gc_during[1] < 8, gc_during
    rpc = served["points_rpc_requests"].samples
    assert any(s.labels["method"] == "RecordActivity" and s.value >= 1 for s in rpc)
    lengths = [s.labels["shard"] for s in flusher["points_outbox_length"].samples]
    assert f"{tenant}:0" in lengths
    # Present at 0 before any is parked, so the first one is an increase.
    dead = flusher["points_flush_dead_letters"].samples
    reasons = {s.labels["reason"]: s.value for s in dead if s.name.endswith("_total")}
    assert reasons == {"malformed": 0, "refused": 0, "conflict": 0}
    assert sorted(_used_names() - _sample_names({**served, **flusher})) == []


def _gen0(families: dict[str, Any]) -> float:
    """Collections of the cyclic collector's youngest generation so far."""
    return next(
        s.value
        for s in families["python_gc_collections"].samples
        if s.labels.get("generation") == "0" and s.name.endswith("_total")
    )


def _wait_for_rows(port: int, timeout_s: float = 60, rows: int = 1) -> dict[str, Any]:
    """The flusher's metrics once it has written `rows` rows (it starts after
    the server)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError):
            families = _families(_scrape(port))
            written = families["points_flush_rows"].samples
            if any(s.name == "points_flush_rows_total" and s.value >= rows for s in written):
                return families
        if time.monotonic() > deadline:
            raise AssertionError(f"the flusher on port {port} wrote < {rows} rows in {timeout_s} s")
        time.sleep(0.2)


@pytest.mark.slow
async def test_calls_grpc_sheds_before_any_handler_are_counted_by_its_core() -> None:
    """More calls than gRPC lets wait (grpc.server.max_pending_requests) on
    a server whose handlers hold the event loop: gRPC cancels some before
    any handler runs, and expires others; no decorator can count those, but
    gRPC core's own counts (points_grpc_core_calls) do: each is started and
    neither succeeded nor failed, or failed."""
    import gc
    import hashlib

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from pointsd.service.metrics import GRPC_CORE_CALLS

    class Busy(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
        async def Check(self, request: Any, context: Any) -> Any:
            hashlib.sha256(bytes(3_000_000)).digest()  # >= 1 ms of CPU: a busy service
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    def core() -> dict[str, float]:
        (family,) = GRPC_CORE_CALLS.collect()
        return {s.labels["state"]: s.value for s in family.samples}

    gc.collect()  # servers of earlier tests leave channelz now, not mid-test
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Busy(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    before = core()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def one() -> str:
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name
                return "OK"

            codes = await asyncio.gather(*(one() for _ in range(3000)))
        await asyncio.sleep(2.5)  # every call is over: none in flight
        after = core()
    finally:
        await server.stop(0)
    delta = {k: after[k] - before[k] for k in after}
    not_ok = sum(1 for c in codes if c != "OK")
    assert not_ok > 0  # the test made gRPC shed or expire calls
    assert delta["started"] == 3000
    # A call that ends right at its deadline can be a success to the server
    # and DEADLINE_EXCEEDED to the client: a few either way.
    slack = 5
    assert abs(delta["started"] - delta["succeeded"] - not_ok) <= slack
    # The shed ones (the client saw CANCELLED) never finished at all.
    unfinished = delta["started"] - delta["succeeded"] - delta["failed"]
    assert abs(unfinished - codes.count("CANCELLED")) <= slack
