"""`pointsd serve` with POINTS_WORKERS > 1: N server processes on one port.

A Python process runs one core; gRPC's recommended way to use more is
several processes sharing the listening port with SO_REUSEPORT (the kernel
spreads connections). This parent starts the embedded servers (if any) and
migrates once, then runs the workers as `pointsd serve` children with the
resolved URLs, restarts a worker that dies, and on SIGTERM/SIGINT passes the
signal on and waits for every worker's graceful shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from service.app import resolve_urls
from service.config import Settings
from storage.postgres import migrate

__all__ = ["serve_workers"]

log = logging.getLogger("pointsd.workers")

_RESTART_BACKOFF_S = 1.0


async def serve_workers(settings: Settings) -> None:
    redis_url, database_url, embedded = await resolve_urls(settings)
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate.upgrade, database_url)
    base_env = dict(os.environ)
    base_env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        POINTS_WORKERS="1",
        POINTS_REUSE_PORT="true",
        POINTS_MIGRATE_ON_START="false",
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def worker(index: int) -> None:
        env = dict(base_env)
        # One metrics port per worker: base, base + 1, ...
        env["POINTS_METRICS_PORT"] = str(
            settings.metrics_port + index if settings.metrics_port else 0
        )
        while not stopping.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service.cli", "serve", env=env
            )
            log.info("worker %d started (pid %d)", index, proc.pid)
            waiter = asyncio.ensure_future(proc.wait())
            stop = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.is_set():
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                await waiter
                log.info("worker %d stopped", index)
                return
            stop.cancel()
            log.error(
                "worker %d (pid %d) exited with %s; restarting", index, proc.pid, proc.returncode
            )
            if time.monotonic() - started < _RESTART_BACKOFF_S:
                await asyncio.sleep(_RESTART_BACKOFF_S)

    log.info("pointsd serving on %s with %d workers", settings.listen, settings.workers)
    await asyncio.gather(*(worker(i) for i in range(settings.workers)))
    for server in embedded:
        if server.owned:
            await asyncio.to_thread(server.stop)
