"""The grpc.aio server: PointsService, health, reflection, graceful shutdown.

Shutdown on SIGTERM/SIGINT, in order: health NOT_SERVING (load balancers stop
sending) -> server.stop(grace) (in-flight RPCs finish) -> the ingest queue is
drained -> the flusher finishes its batch and drains the outbox (bounded by
the grace period) -> pools close.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pointsd.service import first_token
from pointsd.service.admin import AdminServicer
from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.app import App, resolve_urls, stop_owned
from pointsd.service.clock import Clock, child_clock_env
from pointsd.service.config import Settings
from pointsd.service.metrics import roles_of, serve_metrics, watch_outbox
from pointsd.service.rpc import add_service
from pointsd.service.servicer import PointsServicer
from pointsd.service.startup import diagnose_listen, probe_listen
from pointsd.service.supervisor import Child, ChildFailed
from pointsd.service.tls import ServerTls
from pointsd.storage.embedded import supervise
from pointsd.storage.postgres import migrate

__all__ = [
    "GC_THRESHOLDS",
    "SERVICE_NAMES",
    "SHUTDOWN_GIVE_UP_S",
    "Running",
    "serve",
    "start_server",
    "tune_gc",
]

log = logging.getLogger("pointsd")

SERVICE_NAMES = [
    pb.DESCRIPTOR.services_by_name["PointsService"].full_name,
    pb.DESCRIPTOR.services_by_name["AdminService"].full_name,
]
_HEALTH_INTERVAL_S = 2.0
# A shutdown drain stops after a store has been unreachable this long: the
# outbox keeps what is left for the next flusher, so waiting out the grace
# period would only delay the exit.
SHUTDOWN_GIVE_UP_S = 2.0


@dataclass
class Running:
    app: App
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    stop_flusher: asyncio.Event
    health_task: asyncio.Task[None]
    flusher_task: asyncio.Task[None] | None
    # A flusher child process (POINTS_FLUSHER=process) or None.
    children: list[asyncio.Task[None]] = field(default_factory=list)
    recovery_task: asyncio.Task[None] | None = None

    async def stop(self, grace_s: float | None = None) -> None:
        grace = self.app.settings.shutdown_grace_s if grace_s is None else grace_s
        started = time.monotonic()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.app.stores.awards.drain()
        # The loops end on this event; none is cancelled (a cancel landing
        # inside a Redis call can be swallowed, and the loop would go on).
        self.stop_flusher.set()
        await asyncio.gather(
            self.health_task,
            *([self.recovery_task] if self.recovery_task else []),
            *([self.flusher_task] if self.flusher_task else []),
            return_exceptions=True,
        )
        remaining = max(1.0, grace - (time.monotonic() - started))
        if self.children:
            # A flusher child drains the outbox on SIGTERM before exiting.
            await asyncio.gather(*self.children, return_exceptions=True)
        if self.flusher_task is not None:
            drained = await self.app.flusher.drain(remaining, unreachable_s=SHUTDOWN_GIVE_UP_S)
            log.info(
                "outbox %s on shutdown (%s)",
                "drained" if drained else "NOT drained, the next flusher takes over",
                self.app.flusher.summary(),
            )
        await self.app.close()


async def _watch_health(app: App, servicer: health.aio.HealthServicer, stop: asyncio.Event) -> None:
    serving = None
    while not stop.is_set():
        ok = await app.stores.ping_redis()
        if ok != serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ["", *SERVICE_NAMES]:
                await servicer.set(name, status)
            if serving is not None:
                log.warning("redis %s", "reachable again" if ok else "unreachable: NOT_SERVING")
            serving = ok
        with contextlib.suppress(Exception):
            await app.tokens.refresh()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _HEALTH_INTERVAL_S)


async def start_server(
    app: App, listen: str | None = None, *, flusher_child: bool = False
) -> Running:
    """Start serving `app` (tests pass listen="127.0.0.1:0"). The flusher runs
    inline with POINTS_FLUSHER=inline, as a child process with "process" when
    `flusher_child` is set (serve), and not at all otherwise."""
    settings = app.settings
    size = settings.request_bytes_max
    server = grpc.aio.server(
        options=[
            # The transport stops what is far too big (RESOURCE_EXHAUSTED, before
            # decoding); RecordActivities refuses what is over the limit with
            # INVALID_ARGUMENT and the size.
            ("grpc.max_receive_message_length", size * 2),
            ("grpc.max_send_message_length", size * 2),
            # Off unless workers share the port: a second instance started by
            # mistake must fail to bind, not silently take half the traffic.
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ]
    )
    add_service(server, pb.DESCRIPTOR.services_by_name["PointsService"], PointsServicer(app))
    add_service(server, pb.DESCRIPTOR.services_by_name["AdminService"], AdminServicer(app))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = listen or settings.listen
    if not settings.reuse_port and not address.startswith("unix:"):
        # Probed first: gRPC would log its own multi-line error before failing.
        probe_listen(address, "POINTS_LISTEN")
    # Bad certificate files: a ConfigError (one line, exit code 2) before the port opens.
    tls = ServerTls.from_settings(settings)
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.credentials())
    except RuntimeError:  # grpcio >= 1.64 raises where older ones returned 0
        port = 0
    if port == 0:
        raise diagnose_listen(address, "POINTS_LISTEN")
    _use_tls(app, tls)
    await _start_gate(app)
    await server.start()
    for name in ["", *SERVICE_NAMES]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop_flusher = asyncio.Event()
    health_task = asyncio.create_task(_watch_health(app, health_servicer, stop_flusher))
    recovery_task = asyncio.create_task(app.redemptions.run_recovery(stop_flusher))
    flusher_task = None
    children: list[asyncio.Task[None]] = []
    if settings.flusher == "inline":
        flusher_task = asyncio.create_task(
            _gather(
                app.flusher.run(stop_flusher),
                app.winners_recorder().run(stop_flusher),
                app.farming_pass().run(stop_flusher),
                # The flusher role owns the outbox lengths (docs/metrics.md).
                watch_outbox(app.stores.outbox, app.shards, stop_flusher),
            )
        )
    elif settings.flusher == "process" and flusher_child:
        env = child_env(app.settings, app.redis_url, app.database_url, app.clock)
        # The flusher counts flush rows and lag: it serves them on port + 1.
        env["POINTS_METRICS_PORT"] = metrics_port_for(settings, 1)
        child = Child("flusher", ["flush"], env)
        children.append(asyncio.create_task(child.run(stop_flusher)))
    return Running(
        app, server, health_servicer, port, stop_flusher, health_task, flusher_task, children,
        recovery_task,
    )  # fmt: skip


def _use_tls(app: App, tls: ServerTls | None) -> None:
    """Record the TLS state on `app` (SIGHUP reloads `app.tls`) and let
    mapped client certificates stand for callers."""
    app.tls = tls
    if tls is None:
        return
    log.info("%s", tls.describe())
    if app.settings.tls_client_callers_file:
        app.gate.certificates = lambda ctx: tls.caller_of(ctx.auth_context())


def _reload_on_sighup(tls: ServerTls | None, workers: Sequence[Child] = ()) -> None:
    """SIGHUP reloads the certificates for new connections: this process's
    (`tls`), and each worker's, which runs in a session of its own and gets
    the signal forwarded. Without TLS, SIGHUP keeps its default action."""
    if tls is None and not workers:
        return

    def reload() -> None:
        if tls is not None:
            tls.reload()
        for worker in workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGHUP)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


async def _start_gate(app: App) -> None:
    """Load the tokens before the port opens (a failed load is retried in
    the background: calls get UNAVAILABLE meanwhile, never a wrong answer)."""
    if not app.gate.enabled:
        log.warning(
            "POINTS_AUTH=off: EVERY CALLER MAY CALL EVERY RPC FOR EVERY TENANT, no token is "
            "checked. For development only; never expose this port."
        )
        return
    await app.gate.start()
    if not app.gate.authenticator or not app.gate.authenticator.loaded:
        log.warning("the API tokens could not be loaded yet: calls get UNAVAILABLE until they are")


async def _gather(*coros: Coroutine[Any, Any, None]) -> None:
    await asyncio.gather(*coros)


def child_env(
    settings: Settings, redis_url: str, database_url: str, clock: Clock
) -> dict[str, str]:
    """Environment of a child process: the resolved servers, no migrations,
    and this process's clock (as a shift, so a restarted child keeps it)."""
    env = dict(os.environ)
    env.pop("POINTS_CLOCK_START", None)
    env.update(REDIS_URL=redis_url, DATABASE_URL=database_url, POINTS_MIGRATE_ON_START="false")
    env.update(child_clock_env(clock))
    return env


def start_metrics(settings: Settings, roles: Sequence[str]) -> None:
    """Serve the metrics of this process's `roles` ("server", "flusher") on
    POINTS_METRICS_PORT (if set), on the host gRPC listens on."""
    if not settings.metrics_port:
        return
    host = settings.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"
    try:
        serve_metrics(settings.metrics_port, host, roles)
    except OSError as exc:
        raise diagnose_listen(f"{host}:{settings.metrics_port}", "POINTS_METRICS_PORT") from exc


def metrics_port_for(settings: Settings, offset: int) -> str:
    """A child's POINTS_METRICS_PORT: the base port plus `offset`, or off."""
    return str(settings.metrics_port + offset) if settings.metrics_port else "0"


# The cyclic collector's thresholds for a serving process (gc's defaults:
# 700, 10, 10). A batch of 500 events makes tens of thousands of short-lived
# container objects, nearly all freed by reference counting, yet each 700
# of them set off a collection and every tenth of those a deeper one over
# the long-lived heap (rule books, compiled programs, caches). Measured side
# by side (docs/benchmarks.md, "The cyclic collector"): a third less server
# CPU per batch event. Young cycles (exceptions, cancelled tasks) are still
# collected, every 50,000 allocations.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """For a long-running serving or flushing process."""
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the TLS certificates."""
    tune_gc()
    # Bad certificate files stop the start before any store or worker starts.
    ServerTls.from_settings(settings)
    if settings.workers > 1:
        await serve_workers(settings)
        return
    # Before anything else starts: a taken port must stop the start-up.
    start_metrics(settings, roles_of(settings.flusher))
    app = await App.open(settings)
    try:
        if first_token.wanted(settings):
            made = await first_token.ensure_admin_token(
                settings, app.stores.tokens, app.stores.audit, app.clock()
            )
            if made is not None:
                first_token.announce(made, first_token.token_file(settings))
        running = await start_server(app, flusher_child=True)
    except BaseException:
        await app.close()
        raise
    _reload_on_sighup(app.tls)  # before "serving on": tests send SIGHUP once they read it
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "pointsd serving on %s:%d (redis %s, postgres %s, %d tenants)",
        host,
        running.port,
        app.redis_url,
        _safe(app.database_url),
        len(app.rules.tenants),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The embedded servers this service runs on are started again if they die.
    supervising = asyncio.create_task(supervise(app.embedded, stop))
    # Until a signal, or a child (the flusher) that cannot run at all.
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stopped, *running.children], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    stop.set()
    await supervising
    failed = [
        exc
        for t in running.children
        if t.done() and not t.cancelled() and (exc := t.exception()) is not None
    ]
    log.info("shutting down (grace %.1fs)", settings.shutdown_grace_s)
    await running.stop()
    log.info("stopped")
    if failed:
        raise failed[0]


async def serve_workers(settings: Settings) -> None:
    """POINTS_WORKERS > 1: this process supervises N server processes sharing
    the port (SO_REUSEPORT) and one flusher process."""
    redis_url, database_url, embedded = await resolve_urls(settings)
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate.upgrade, database_url)
    if first_token.wanted(settings):
        await first_token.first_start(settings, database_url, settings.clock()())
    env = child_env(settings, redis_url, database_url, settings.clock())
    workers = _worker_children(settings, env)
    stopping = asyncio.Event()
    flusher_stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    _reload_on_sighup(None, workers if settings.tls_cert_file else ())
    flusher = _start_flusher_child(settings, env, flusher_stopping)
    supervised = asyncio.Event()
    supervising = asyncio.create_task(supervise(embedded, supervised))
    log.info("pointsd serving on %s with %d workers", settings.listen, settings.workers)

    async def run_worker(worker: Child) -> None:
        try:
            await worker.run(stopping)
        except ChildFailed:
            stopping.set()  # one worker cannot start: stop them all
            raise

    if flusher is not None:
        # A flusher that cannot run stops the service (as without workers):
        # serving on without one would only fill the outbox.
        def on_flusher_done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                stopping.set()

        flusher.add_done_callback(on_flusher_done)
    outcomes = await asyncio.gather(*(run_worker(w) for w in workers), return_exceptions=True)
    supervised.set()
    await supervising
    # Only once every worker has finished its last requests does the flusher
    # get SIGTERM: its final drain then sees everything they accepted.
    flusher_stopping.set()
    if flusher is not None:
        outcomes.append(*await asyncio.gather(flusher, return_exceptions=True))
    await stop_owned(embedded)
    _raise_first(outcomes)


def _worker_children(settings: Settings, env: dict[str, str]) -> list[Child]:
    workers = []
    for i in range(settings.workers):
        worker_env = dict(env, POINTS_WORKERS="1", POINTS_REUSE_PORT="true", POINTS_FLUSHER="off")
        # One metrics port per worker: base, base + 1, ...
        worker_env["POINTS_METRICS_PORT"] = metrics_port_for(settings, i)
        workers.append(Child(f"worker {i}", ["serve"], worker_env))
    return workers


def _start_flusher_child(
    settings: Settings, env: dict[str, str], stop: asyncio.Event
) -> asyncio.Task[None] | None:
    if settings.flusher == "off":
        return None
    return asyncio.create_task(
        Child(
            "flusher",
            ["flush"],
            dict(env, POINTS_METRICS_PORT=metrics_port_for(settings, settings.workers)),
        ).run(stop)
    )


def _raise_first(outcomes: Sequence[BaseException | None]) -> None:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _safe(url: str) -> str:
    """A URL without its password, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"
