"""`pointsd` as an operator runs it: subcommands, exit codes, the embedded
start, graceful shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import redis as sync_redis
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.clock import child_clock_env
from scripts.procs import ROOT, ServerProcess, free_port, run_cli
from scripts.tokens import channel
from tests import clock as test_clock
from tests.conftest import Servers, _cleanup_tenants, new_tenant, server_data_dir
from tests.helpers import child_env, ev, ledger_count, rules_file


def test_generated_code_matches_the_proto() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.gen_protos", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_check(tmp_path: Path) -> None:
    ok = run_cli(["rules", "check"], dict(os.environ))
    assert ok.returncode == 0
    assert "tenant demo: Asia/Shanghai" in ok.stdout and "like" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tenants: [{id: x, timezone: Mars/Base}]\nrule_sets: {default: {actions: "
        "{like: {actor: {points: -1}}}}}\n"
    )
    out = run_cli(["rules", "check", str(bad)], dict(os.environ))
    assert out.returncode == 3  # ExitCode.RULES, as for every command
    assert "$.tenants[0].timezone: unknown IANA time zone 'Mars/Base'" in out.stdout
    assert "$.rule_sets.default.actions.like.actor.points" in out.stdout


def test_rules_check_lists_levels_badges_and_tasks(tmp_path: Path) -> None:
    default = run_cli(["rules", "check"], dict(os.environ))
    assert default.returncode == 0
    lines = [line.strip() for line in default.stdout.splitlines()]
    # After the actions, in rule-file order.
    first = lines.index(
        "level 1  newcomer               Newcomer (新人小白), from 0 points; tag.newcomer"
    )
    credits = [i for i, line in enumerate(lines) if line.split()[1:2] in (["actor"], ["target"])]
    assert credits and max(credits) < first
    expected = [
        "level 2  communicator           Communicator (沟通达人), from 500 points; "
        "tag.communicator, frame.silver",
        "badge    well-liked             Well liked (人气之星): 100 likes received",
        "task     send-3-messages        day: count message.text, message.voice, message.video "
        ">= 3 -> 5 points",
        "task     like-2-colleagues      day: distinct colleagues of like >= 2 -> 5 points",
        "task     100-likes-received     ever: count like (target) >= 100 -> 100 points and "
        "badge well-liked",
        "task     log-in-5-working-days  week, working days only: count login >= 5 -> 30 points",
        "task     third-feature-use      week: count feature.use, per feature >= 3 -> 10 points",
        "task     group-of-50            ever: peak group.members >= 50 -> 50 points and "
        "badge community-builder",
    ]
    assert [line for line in expected if line not in lines[first:]] == []
    # The other conditions, a badge-only reward and a rule set without levels.
    rules = tmp_path / "tasks.yaml"
    rules.write_text(
        "tenants: [{id: x, timezone: UTC}]\n"
        "rule_sets:\n  default:\n    actions:\n"
        "      file: {actor: {points: 10}}\n"
        "      feature.use: {attributes_required: [feature], actor: {points: 1}}\n"
        "    badges: {sharer: {name: Sharer}}\n"
        "    tasks:\n"
        "      earn-50: {name: Earn 50, period: month, points: '*', at_least: 50,"
        " reward: {points: 5}}\n"
        "      share-in-3-departments: {name: Departments, period: week,"
        " distinct: {feeds: [file], of: department}, at_least: 3, reward: {badge: sharer}}\n"
        "      meet-twice: {name: Meet, period: day, count: [feature.use], per_attribute: feature,"
        " values: [video_meeting, doc_collab], at_least: 2, reward: {points: 1}}\n"
    )
    out = run_cli(["rules", "check", str(rules)], dict(os.environ))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.strip() for line in out.stdout.splitlines()]
    assert not any(line.startswith("level") for line in lines)
    assert "badge    sharer                 Sharer" in lines
    # Last, the farming signals' thresholds: the defaults, on no action
    # here (the rule set has neither likes nor thanks cards).
    assert lines[-1].startswith("farming signals on no action: reciprocity >= 15 each way")
    assert lines[-4:-1] == [
        "task     earn-50                month: points any action >= 50 -> 5 points",
        "task     share-in-3-departments week: distinct departments of file >= 3 -> badge sharer",
        "task     meet-twice             day: count feature.use, per feature "
        "(doc_collab, video_meeting) >= 2 -> 1 points",
    ]


def test_bad_configuration_exits_2() -> None:
    out = run_cli(["rules", "check"], {**os.environ, "POINTS_SHARDS": "many"})
    assert out.returncode == 2 and "POINTS_SHARDS" in out.stderr


@pytest.mark.subprocess
def test_migrate_reconcile_and_rebuild_commands(servers: Servers, tmp_path: Path, rds) -> None:
    tenant = new_tenant()
    env = child_env(
        servers.redis_url,
        servers.database_url,
        rules_file(tmp_path / "r.yaml", {tenant: {}}),
        tmp_path,
    )
    migrated = run_cli(["migrate"], env)
    head = max(
        p.name[:4]
        for p in (ROOT / "storage/pointsd/storage/postgres/migrations/versions").glob("0*.py")
    )
    assert migrated.returncode == 0 and f"revision {head}" in migrated.stdout
    server = ServerProcess(env, free_port(), tmp_path / "log")
    server.start()
    try:
        with server.channel() as ch:
            stub = pb_grpc.PointsServiceStub(ch)
            for i in range(5):
                stub.RecordActivity(ev(tenant, f"u{i}", "file"))
    finally:
        assert server.terminate() == 0
    try:
        clean = run_cli(["reconcile"], env)
        assert clean.returncode == 0 and "5 users, 0 mismatches" in clean.stdout
        rds.hincrby(f"pts:{{{tenant}:0}}:bal", "u3|a", 1)
        dirty = run_cli(["reconcile"], env)
        assert dirty.returncode == 1
        assert f"MISMATCH tenant={tenant} user=u3 redis(available=11" in dirty.stdout
        rebuilt = run_cli(["rebuild", tenant], env)
        assert rebuilt.returncode == 0 and "5 users" in rebuilt.stdout
        assert run_cli(["reconcile"], env).returncode == 0
        assert run_cli(["rebuild", "no-such-tenant"], env).returncode == 2
    finally:
        _cleanup_tenants(servers, [tenant])


@pytest.mark.subprocess
def test_sigterm_drains_the_outbox_and_health_and_reflection_work(
    servers: Servers, tmp_path: Path, sql
) -> None:
    tenant = new_tenant()
    env = child_env(
        servers.redis_url,
        servers.database_url,
        rules_file(tmp_path / "r.yaml", {tenant: {}}),
        tmp_path,
        POINTS_FLUSH_INTERVAL_MS="600000",
        POINTS_LOG_LEVEL="INFO",
    )
    server = ServerProcess(env, free_port(), tmp_path / "log")
    server.start()
    try:
        with server.channel() as ch:
            stub = pb_grpc.PointsServiceStub(ch)
            stub.RecordActivities(
                pb.RecordActivitiesRequest(events=[ev(tenant, f"u{i}", "reply") for i in range(50)])
            )
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            answer = next(
                iter(
                    refl.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                    )
                )
            )
            names = {s.name for s in answer.list_services_response.service}
            assert {"points.v1.PointsService", "grpc.health.v1.Health"} <= names
        healthy = run_cli(["health", "--target", server.target], env)
        assert healthy.returncode == 0 and "SERVING" in healthy.stdout
        # The flusher is asleep (600 s poll): only the shutdown drain can write these.
        assert ledger_count(sql, tenant) == 0
    finally:
        assert server.terminate() == 0
    down = run_cli(["health", "--target", server.target, "--timeout", "1"], env)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stdout
    try:
        assert ledger_count(sql, tenant) == 50
        assert "outbox drained on shutdown" in server.log.read_text()
    finally:
        _cleanup_tenants(servers, [tenant])


@pytest.mark.slow
@pytest.mark.subprocess
def test_serve_with_no_urls_starts_embedded_servers_and_keeps_data(tmp_path: Path) -> None:
    """The newcomer's path: no REDIS_URL, no DATABASE_URL."""
    data = server_data_dir()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        POINTS_DATA_DIR=str(data),
        POINTS_LOG_LEVEL="INFO",
        PYTHONPATH=str(ROOT),
        **child_clock_env(test_clock.current()),
    )
    server = ServerProcess(env, free_port(), tmp_path / "log")
    event = ev("demo", "newcomer", "login", event_id="first-login")
    tokens = []
    for attempt in range(2):
        server.start(timeout_s=120)
        # Auth is on: the first start made an admin token, readable by its owner only.
        token_file = data / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        tokens.append(server.token)
        try:
            with grpc.insecure_channel(server.target) as bare:
                with pytest.raises(grpc.RpcError) as refused:
                    pb_grpc.PointsServiceStub(bare).RecordActivity(event)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with server.channel() as ch:
                stub = pb_grpc.PointsServiceStub(ch)
                r = stub.RecordActivity(event)
                assert r.outcome == (pb.AWARDED if attempt == 0 else pb.DUPLICATE)
                b = stub.GetBalance(pb.GetBalanceRequest(tenant_id="demo", user_id="newcomer"))
                assert b.available == 5
        finally:
            assert server.terminate(60) == 0
        # The servers it started are stopped with it; their data stays.
        sock = data / "redis" / "redis.sock"
        with pytest.raises(sync_redis.ConnectionError):
            sync_redis.Redis(unix_socket_path=str(sock)).ping()
    log = server.log.read_text()
    assert "started embedded redis" in log and "started embedded postgres" in log
    # Made once, printed once: the second start kept it and said nothing.
    assert tokens[0] == tokens[1] and log.count(tokens[0]) == 1
    shutil.rmtree(data, ignore_errors=True)


@pytest.mark.subprocess
def test_workers_share_the_port_and_stop_together(servers: Servers, tmp_path: Path) -> None:
    import psutil

    tenant = new_tenant()
    rules = rules_file(tmp_path / "r.yaml", {tenant: {}})
    env = child_env(servers.redis_url, servers.database_url, rules, tmp_path, POINTS_WORKERS="2")
    server = ServerProcess(env, free_port(), tmp_path / "log")
    server.start()
    try:
        workers = psutil.Process(server.pid).children()
        assert len(workers) == 3  # two servers and the flusher
        # Separate connections land on either worker; all see one state.
        for i in range(8):
            with channel(
                server.target, server.token, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as ch:
                r = pb_grpc.PointsServiceStub(ch).RecordActivity(ev(tenant, "u1", "file"))
                assert r.outcome == (pb.AWARDED if i < 5 else pb.CAPPED)
    finally:
        assert server.terminate() == 0
        _cleanup_tenants(servers, [tenant])
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


@pytest.mark.subprocess
def test_serve_refuses_a_taken_port_and_exits(servers: Servers, tmp_path: Path) -> None:
    """A taken metrics port, or a gRPC port a worker can never bind: the
    service says which and exits instead of hanging or restarting forever."""
    import socket
    import subprocess

    tenant = new_tenant()
    rules = rules_file(tmp_path / "r.yaml", {tenant: {}})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = child_env(servers.redis_url, servers.database_url, rules, tmp_path)
        env["POINTS_LISTEN"] = f"127.0.0.1:{free_port()}"
        done = subprocess.run(
            [sys.executable, "-m", "pointsd.service.cli", "serve"],
            env={**env, "POINTS_METRICS_PORT": str(port)},
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 4  # ExitCode.LISTEN
        assert "POINTS_METRICS_PORT" in done.stderr
        # Workers on a gRPC port held by another process (without SO_REUSEPORT).
        done = subprocess.run(
            [sys.executable, "-m", "pointsd.service.cli", "serve"],
            env={**env, "POINTS_WORKERS": "2", "POINTS_LISTEN": f"127.0.0.1:{port}"},
            cwd=ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        # The workers' own start-up code: the port is taken.
        assert done.returncode == 4
        assert "right after starting" in done.stderr and "is in use" in done.stderr
        # Workers that start, and a flusher that cannot (its metrics port,
        # base + 2, is taken): the whole service stops, not just the flusher.
        done = subprocess.run(
            [sys.executable, "-m", "pointsd.service.cli", "serve"],
            env={**env, "POINTS_WORKERS": "2", "POINTS_METRICS_PORT": str(port - 2)},
            cwd=ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 4
        assert "flusher exited 5 times" in done.stderr


@pytest.mark.subprocess
def test_children_do_not_share_the_terminal_signals(servers: Servers, tmp_path: Path) -> None:
    """Ctrl+C reaches the whole foreground process group: the flusher child
    has a session of its own, so only the server's orderly stop ends it."""
    import psutil

    tenant = new_tenant()
    rules = rules_file(tmp_path / "r.yaml", {tenant: {}})
    env = child_env(
        servers.redis_url, servers.database_url, rules, tmp_path, POINTS_LOG_LEVEL="INFO"
    )
    server = ServerProcess(env, free_port(), tmp_path / "log", new_session=True)
    server.start()
    try:
        (child,) = psutil.Process(server.pid).children()
        assert os.getpgid(child.pid) != os.getpgid(server.pid)
        with server.channel() as ch:
            stub = pb_grpc.PointsServiceStub(ch)
            assert stub.RecordActivity(ev(tenant, "u1", "file")).outcome == pb.AWARDED
        os.killpg(os.getpgid(server.pid), signal.SIGINT)
        assert server.proc is not None and server.proc.wait(60) == 0
    finally:
        server.terminate()
        _cleanup_tenants(servers, [tenant])
    log = server.log.read_text()
    assert log.index("shutting down") < log.index("flusher stopped")


@pytest.mark.subprocess
def test_tokens_create_list_rotate_and_revoke(
    servers: Servers, tmp_path: Path, clock: test_clock.TestClock
) -> None:
    """`pointsd tokens …` against the real PostgreSQL: a token printed once and
    valid, list without secrets, rotate with a grace, revoke; bad input exits 2."""
    import asyncio
    from datetime import timedelta

    from sqlalchemy import create_engine, text

    from pointsd.service.auth import Authenticator, parse_token
    from pointsd.service.clock import parse_instant
    from pointsd.service.errors import Unauthenticated
    from pointsd.storage.postgres import sqlalchemy_url
    from pointsd.storage.postgres.db import create_engine as async_engine
    from pointsd.storage.postgres.tokens import TokenStore

    clock.set(parse_instant("2026-12-07T10:00:00+08:00"))
    env = child_env(
        servers.redis_url, servers.database_url, rules_file(tmp_path / "r.yaml", {}), tmp_path
    )
    name = f"cli-{new_tenant()}"
    created = run_cli(
        ["tokens", "create", "--name", name, "--roles", "ingest,read", "--tenants", "a,b",
         "--expires-in", "30d"], env,
    )  # fmt: skip
    try:
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        token_id, secret = parse_token(token)
        assert "shown only now" in created.stderr

        listed = run_cli(["tokens", "list"], env)
        line = next(x for x in listed.stdout.splitlines() if x.startswith(token_id))
        assert f"{name}  roles=ingest,read  tenants=a,b  valid until 2027-01-06T02:00" in line
        assert secret not in listed.stdout

        rotated = run_cli(["tokens", "rotate", token_id, "--grace", "10m"], env)
        assert rotated.returncode == 0, rotated.stderr
        new_token = rotated.stdout.strip()
        new_id = parse_token(new_token)[0]
        assert f"replaces {token_id}, which stays valid until 2026-12-07T02:10" in rotated.stderr

        async def check() -> None:
            engine = async_engine(servers.database_url, pool_size=1)
            try:
                authenticator = Authenticator(TokenStore(engine), clock)
                await authenticator.refresh()
                for t in (token, new_token):
                    caller = authenticator.authenticate([("authorization", f"Bearer {t}")])
                    assert caller.name == name and caller.tenants == frozenset({"a", "b"})
                clock.set(clock() + int(timedelta(minutes=11).total_seconds() * 1000))
                with pytest.raises(Unauthenticated, match=f"token {token_id} expired"):
                    authenticator.authenticate([("authorization", f"Bearer {token}")])
            finally:
                await engine.dispose()

        asyncio.run(check())

        revoked = run_cli(["tokens", "revoke", new_id], env)
        assert revoked.returncode == 0 and f"revoked token {new_id}" in revoked.stdout
        assert f"{new_id}  {name}" in run_cli(["tokens", "list"], env).stdout
        assert "revoked 2026-12-07T02:" in run_cli(["tokens", "list"], env).stdout
        missing = run_cli(["tokens", "revoke", "0000000000000000"], env)
        assert missing.returncode == 1 and "no token 0000000000000000" in missing.stderr
        again = run_cli(["tokens", "rotate", new_id], env)
        assert again.returncode == 1 and "revoked" in again.stderr
        for bad, says in [
            (["--roles", "root"], "unknown role 'root'"),
            (["--roles", "read", "--expires-in", "3y"], "unit of s, m, h, d"),
            (["--roles", "read", "--tenants", ","], "at least one tenant"),
        ]:
            out = run_cli(["tokens", "create", "--name", name, *bad], env)
            assert out.returncode == 2 and says in out.stderr, out.stderr
    finally:
        engine = create_engine(sqlalchemy_url(servers.database_url))
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM api_tokens WHERE name = :n"), {"n": name})
        engine.dispose()
