"""Child processes of `pointsd serve`: the ledger flusher, and the extra
server workers of POINTS_WORKERS > 1.

Why processes: one Python process runs on one core, and inside one event loop
a busy ingest path starves the flusher (its database round trips wait behind
request handling), so flush lag grows exactly at peaks. A flusher process gets
its own core time; workers share the port with SO_REUSEPORT.

A child asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG,
see `die_with_supervisor`), so a killed server never leaves orphans; it is
restarted if it exits on its own, and on shutdown it gets SIGTERM and time to
finish (a flusher drains the outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping

from pointsd.service.startup import ExitCode

__all__ = ["SUPERVISOR_ENV", "Child", "ChildFailed", "die_with_supervisor"]

log = logging.getLogger("pointsd.supervisor")

_PR_SET_PDEATHSIG = 1
_RESTART_BACKOFF_S = 1.0
# A child that keeps dying this soon after its start, this many times in a
# row, cannot start (a port taken, a bad setting): give up instead of looping.
_HEALTHY_AFTER_S = 10.0
_FAST_FAILURES_MAX = 5


# The exit codes of a child that could not start (a setting, a port, a store).
_STARTUP_CODES = {int(c) for c in ExitCode if c >= ExitCode.CONFIG}


class ChildFailed(RuntimeError):
    """A child process kept exiting right after it started. `exit_code` is
    its own when it exited with a start-up code (a taken port: 4), so the
    supervisor ends the way the child said; else 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# Set in a child's environment to its supervisor's pid.
SUPERVISOR_ENV = "POINTS_SUPERVISOR_PID"


def die_with_supervisor(env: Mapping[str, str]) -> None:
    """In a child, first thing: get SIGTERM when the supervisor dies, and exit
    now if it already has (we would have been re-parented)."""
    supervisor = env.get(SUPERVISOR_ENV)
    if not supervisor:
        return
    # Not Linux/glibc: children may outlive a killed parent.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):
        sys.exit(0)


class Child:
    def __init__(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", "pointsd.service.cli", *args]
        self.env = {**env, SUPERVISOR_ENV: str(os.getpid())}
        self.proc: asyncio.subprocess.Process | None = None

    async def run(self, stopping: asyncio.Event, stop_timeout_s: float = 60.0) -> None:
        """Keep the child running until `stopping` is set, then stop it.
        Raises ChildFailed when it keeps exiting right after starting."""
        fast_failures = 0
        while not stopping.is_set():
            started = time.monotonic()
            # A session of its own: a Ctrl+C in the terminal reaches only the
            # supervisor, which stops children in order (workers, then the
            # flusher, whose last drain must see everything they accepted).
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, start_new_session=True
            )
            log.info("%s started (pid %d)", self.name, self.proc.pid)
            exited = asyncio.ensure_future(self.proc.wait())
            stop = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.is_set():
                if self.proc.returncode is None:
                    self.proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(exited, stop_timeout_s)
                    except TimeoutError:
                        log.error("%s did not stop in %.0fs; killing it", self.name, stop_timeout_s)
                        self.proc.kill()
                        await exited
                log.info("%s stopped (exit %s)", self.name, self.proc.returncode)
                return
            stop.cancel()
            lived = time.monotonic() - started
            fast_failures = fast_failures + 1 if lived < _HEALTHY_AFTER_S else 0
            if fast_failures >= _FAST_FAILURES_MAX:
                code = self.proc.returncode
                raise ChildFailed(
                    f"{self.name} exited {fast_failures} times in a row right after starting "
                    f"(last exit {code}); see its log above",
                    code if code in _STARTUP_CODES else 1,
                )
            log.error(
                "%s (pid %d) exited with %s; restarting",
                self.name,
                self.proc.pid,
                self.proc.returncode,
            )
            if lived < _RESTART_BACKOFF_S:
                await asyncio.sleep(_RESTART_BACKOFF_S)
