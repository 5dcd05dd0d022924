"""`pointsd serve` keeps the embedded servers it runs on alive: a killed
Redis or PostgreSQL is started again on its own data, health returns to
SERVING by itself, and nothing accepted is lost (G2). A SIGTERM while a
store is down does not wait out the grace period. These tests always run
embedded servers of their own, whatever REDIS_URL / DATABASE_URL say."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.storage.embedded import EmbeddedPostgres, EmbeddedRedis
from pointsd.storage.postgres import sqlalchemy_url
from scripts.procs import ServerProcess, free_port, run_cli
from tests.conftest import new_tenant, server_data_dir
from tests.helpers import child_env, ev, rules_file


def _serving(target: str) -> bool:
    try:
        with grpc.insecure_channel(target) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.RpcError:
        return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie until its parent reaps it: gone all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _until(what: str, check: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


def _record(stub: pb_grpc.PointsServiceStub, event: pb.ActivityEvent) -> pb.ActivityResult:
    """Retry while the service answers UNAVAILABLE (a store restarting): the
    same event id each time, so a retry can never pay twice."""
    deadline = time.monotonic() + 60
    while True:
        try:
            result: pb.ActivityResult = stub.RecordActivity(event, timeout=5)
            return result
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _ledger_rows(database_url: str, tenant: str) -> int:
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            count = conn.execute(
                text("SELECT COUNT(*) FROM ledger_entries WHERE tenant_id = :t"), {"t": tenant}
            ).scalar_one()
    except Exception:  # PostgreSQL restarting: not yet
        return -1
    finally:
        engine.dispose()
    return int(count)


def _start(tmp_path: Path, data: Path, tenant: str, **extra: str) -> ServerProcess:
    rules = rules_file(tmp_path / "r.yaml", {tenant: {}})
    env = child_env(
        "", "", rules, data, POINTS_MIGRATE_ON_START="true", POINTS_LOG_LEVEL="INFO", **extra
    )
    server = ServerProcess(env, free_port(), tmp_path / "serve.log")
    server.start(timeout_s=180)
    return server


@pytest.mark.subprocess
@pytest.mark.slow
def test_killed_embedded_servers_come_back_and_nothing_is_lost(tmp_path: Path) -> None:
    data = server_data_dir()
    tenant = new_tenant()
    server = _start(tmp_path, data, tenant)
    redis, postgres = EmbeddedRedis(data), EmbeddedPostgres(data)
    try:
        with server.channel() as ch:
            stub = pb_grpc.PointsServiceStub(ch)
            first = [ev(tenant, f"u{i}", "file") for i in range(5)]
            assert [_record(stub, e).outcome for e in first] == [pb.AWARDED] * 5

            killed = redis.process_pid()
            assert killed is not None
            os.kill(killed, signal.SIGKILL)
            _until("redis restarted", lambda: redis.running_pid() not in (None, killed))
            _until("health SERVING again", lambda: _serving(server.target))
            # The restarted Redis kept its data: a replay is a duplicate.
            assert _record(stub, first[0]).outcome == pb.DUPLICATE

            killed = postgres.process_pid()
            assert killed is not None
            os.kill(killed, signal.SIGKILL)
            # Ingest goes on while PostgreSQL is down (the outbox holds it).
            second = [ev(tenant, f"v{i}", "file") for i in range(5)]
            assert [_record(stub, e).outcome for e in second] == [pb.AWARDED] * 5
            _until("postgres restarted", lambda: postgres.running_pid() not in (None, killed))
            url = postgres.start()  # reuses the running server: its URL
            _until("every award in the ledger", lambda: _ledger_rows(url, tenant) == 10)
    finally:
        code = server.terminate()
    assert code == 0
    log = server.log.read_text()
    assert "embedded redis in" in log and "is not running: starting it again" in log
    assert "embedded postgres is running again" in log
    # serve started them again, so they are its own: a clean stop stops them.
    assert redis.process_pid() is None and postgres.process_pid() is None
    with_data = run_cli(["embedded", "status"], child_env("", "", tmp_path / "r.yaml", data))
    assert with_data.stdout.count("not running") == 2


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigterm_with_redis_down_does_not_wait_out_the_grace(tmp_path: Path) -> None:
    """The embedded Redis is stopped for good (its folder made unusable), so
    the supervisor cannot bring it back; SIGTERM must still end serve soon:
    the outbox keeps what the flusher could not drain."""
    data = server_data_dir()
    tenant = new_tenant()
    server = _start(tmp_path, data, tenant, POINTS_SHUTDOWN_GRACE_S="30")
    redis = EmbeddedRedis(data)
    try:
        # The flusher child runs its loop (it is not still starting).
        _until("flusher running", lambda: "pointsd.flusher: flusher" in server.log.read_text())
        with server.channel() as ch:
            assert _record(pb_grpc.PointsServiceStub(ch), ev(tenant, "u1", "file")).outcome == (
                pb.AWARDED
            )
        pid = redis.process_pid()
        assert pid is not None
        # A file where the restart wants its folder, before the kill: the
        # supervisor restarts Redis at once, and that restart must fail (a
        # folder broken after the kill would race it).
        aof = redis.dir
        for child in aof.iterdir():
            if child.is_dir():
                for f in child.iterdir():
                    f.unlink()
                child.rmdir()
            else:
                child.unlink()
        aof.rmdir()
        aof.write_text("not a folder")
        os.kill(pid, signal.SIGKILL)
        _until("redis gone", lambda: not _alive(pid))
        _until("NOT_SERVING", lambda: not _serving(server.target), 30)
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(60)
        took = time.monotonic() - started
    finally:
        server.terminate()
        if aof.is_file():
            aof.unlink()
        EmbeddedPostgres(data).stop()
    assert code == 0
    # Well inside the 30 s grace: the drain gives up on an unreachable store.
    assert took < 20, took
    assert "giving up the drain" in server.log.read_text()


@pytest.mark.usefixtures("servers")
async def test_a_stale_failure_does_not_cut_the_last_drain_short(make_api, tenant: str) -> None:
    """The run loop's failures from before the drain (a blip an hour ago,
    a backoff cut short by SIGTERM) must not make the shutdown drain give
    up on stores that answer now: it drains everything."""
    from pointsd.storage.errors import StorageUnavailable

    # Batches of 5: the drain takes several, time for a wrong give-up to bite.
    api = await make_api([tenant], flusher="off", flush_batch_rows_max=5)
    stub = api.stub
    for i in range(20):
        await stub.RecordActivity(ev(tenant, f"u{i}", "file"))
    flusher = api.app.flusher
    flusher._failed(StorageUnavailable("postgresql unavailable: an old blip", "postgresql"))
    flusher._failing_since -= 3600
    assert flusher.stats.failures == 1
    assert await flusher.drain(30, unreachable_s=0.2)
    assert await api.app.stores.outbox.backlog(api.app.shards()) == 0
