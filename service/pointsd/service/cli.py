"""`pointsd`: the one entry point.

    pointsd serve                 run the gRPC server (and the ledger flusher)
    pointsd flush [--drain]       run only the flusher (or drain once and exit)
    pointsd migrate               apply database migrations
    pointsd reconcile             Redis balances == ledger sums? exit 1 if not
    pointsd rebuild [TENANT...]   restore Redis state from the ledger
    pointsd winners               record winners of closed weeks/months, once
    pointsd rules check [FILE]    validate a rule file
    pointsd health [--target H:P] exit 0 if a running server reports SERVING

Configuration comes from environment variables (docs/configuration.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

# Children are started with fork+exec only, so gRPC's fork handlers have
# nothing to protect; without this, gRPC logs a warning at every fork.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from pointsd.service.config import ConfigError, Settings
from pointsd.service.supervisor import die_with_supervisor

__all__ = ["main"]

log = logging.getLogger("pointsd")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pgserver logs every command it runs at INFO.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _serve(settings: Settings) -> int:
    from pointsd.service.server import serve
    from pointsd.service.supervisor import ChildFailed

    try:
        await serve(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ChildFailed as exc:
        log.error("stopping: %s", exc)
        return 1
    return 0


# SIGTERM before the flusher's loop runs (a server stopping right after it
# started its flusher child) must still end in a drain, not a silent death.
_early_stop = threading.Event()


async def _flush(settings: Settings, drain: bool) -> int:
    from pointsd.service.app import App

    if not drain:
        from pointsd.service.server import start_metrics

        try:
            start_metrics(settings)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
    app = await App.open(settings)
    try:
        if drain:
            ok = await app.flusher.drain(settings.shutdown_grace_s * 30)
            print(f"outbox {'drained' if ok else 'NOT drained'}: {app.flusher.summary()}")
            return 0 if ok else 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if _early_stop.is_set():
            stop.set()
        # The flusher process also records the winners of closed periods.
        await asyncio.gather(app.flusher.run(stop), app.winners_recorder().run(stop))
        drained = await app.flusher.drain(settings.shutdown_grace_s)
        log.info(
            "outbox %s on shutdown (%s)",
            "drained" if drained else "NOT drained, the next flusher takes over",
            app.flusher.summary(),
        )
        return 0
    finally:
        await app.close()


async def _migrate(settings: Settings) -> int:
    from pointsd.service.app import resolve_urls
    from pointsd.storage.postgres import migrate

    _, database_url, embedded = await resolve_urls(settings, redis=False)
    try:
        await asyncio.to_thread(migrate.upgrade, database_url)
        revision = await asyncio.to_thread(migrate.current_revision, database_url)
        print(f"database at revision {revision}")
        return 0
    finally:
        for server in embedded:
            if server.owned:
                await asyncio.to_thread(server.stop)


async def _reconcile(settings: Settings, limit: int) -> int:
    from pointsd.service.app import App
    from pointsd.service.ops import reconcile

    app = await App.open(settings)
    try:
        report = await reconcile(app)
    finally:
        await app.close()
    if not report.drained:
        print("reconcile: the outbox could not be drained into PostgreSQL (is it up?)")
        return 2
    for m in report.mismatches[:limit]:
        print(
            f"MISMATCH tenant={m.tenant_id} user={m.user_id} "
            f"redis(available={m.redis.available} earned={m.redis.earned} spent={m.redis.spent}) "
            f"ledger(available={m.ledger.available} earned={m.ledger.earned} "
            f"spent={m.ledger.spent})"
        )
    print(f"reconcile: {report.users} users, {len(report.mismatches)} mismatches")
    return 0 if report.clean else 1


async def _rebuild(settings: Settings, tenants: list[str]) -> int:
    from pointsd.service.app import App
    from pointsd.service.ops import RebuildFailed, rebuild

    app = await App.open(settings)
    try:
        unknown = [t for t in tenants if t not in app.rules.tenants]
        if unknown:
            print(f"unknown tenants: {', '.join(unknown)}")
            return 2
        report = await rebuild(app, tenants or None)
    except RebuildFailed as exc:
        print(f"rebuild failed: {exc}")
        return 1
    finally:
        await app.close()
    print(
        f"rebuild: {report.tenants} tenants, {report.users} users, {report.entries} ledger "
        f"entries replayed, {report.keys_deleted} stale keys removed"
    )
    return 0


async def _winners(settings: Settings) -> int:
    from pointsd.service.app import App

    app = await App.open(settings)
    try:
        written = await app.winners_recorder().run_once()
    finally:
        await app.close()
    print(f"winners: {written} closed period(s) recorded")
    return 0


def _rules_check(path: str | None, default_shards: int) -> int:
    from pointsd.service.rules import RuleError, load_rule_book

    try:
        book = load_rule_book(Path(path) if path else None, default_shards=default_shards)
    except RuleError as exc:
        print(exc)
        return 1
    except OSError as exc:
        print(f"cannot read {path}: {exc}")
        return 1
    for tenant in book.tenants.values():
        print(
            f"tenant {tenant.tenant_id}: {tenant.timezone.key}, {tenant.shards} shard(s), "
            f"rule set {tenant.rule_set!r} with {len(tenant.actions)} actions"
        )
        for action in tenant.actions.values():
            for credit in action.credits:
                said = "; ".join(t for m in book.mechanics if (t := m.describe(credit)))
                print(
                    f"  {action.key:<20} {credit.role.name.lower():<6} "
                    f"{credit.points:>4} points; {said}"
                )
    return 0


def _health(target: str, timeout_s: float) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}")
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(f"{target}: {status}")
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointsd", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gRPC server")
    flush = sub.add_parser("flush", help="run only the ledger flusher")
    flush.add_argument("--drain", action="store_true", help="drain the outbox once and exit")
    sub.add_parser("migrate", help="apply database migrations")
    rec = sub.add_parser("reconcile", help="compare Redis balances with the ledger")
    rec.add_argument("--show", type=int, default=50, help="mismatches to print (default 50)")
    reb = sub.add_parser("rebuild", help="restore Redis state from the ledger")
    reb.add_argument("tenants", nargs="*", help="tenants to rebuild (default: all)")
    sub.add_parser("winners", help="record the winners of closed weeks and months (one pass)")
    rules = sub.add_parser("rules", help="rule file tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate a rule file")
    check.add_argument("file", nargs="?", help="rule file (default: POINTS_RULES_FILE or built-in)")
    health = sub.add_parser("health", help="check a running server's health service")
    health.add_argument("--target", help="host:port (default: POINTS_LISTEN)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    ns = parser.parse_args(argv)
    if ns.command == "flush" and not ns.drain:
        signal.signal(signal.SIGTERM, lambda *_: _early_stop.set())
    die_with_supervisor(os.environ)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    return _dispatch(parser, ns, settings)


def _dispatch(parser: argparse.ArgumentParser, ns: argparse.Namespace, settings: Settings) -> int:
    if ns.command == "health":
        target = ns.target or settings.listen.replace("0.0.0.0", "127.0.0.1")
        return _health(target, ns.timeout)
    if ns.command == "rules":
        return _rules_check(ns.file or settings.rules_file or None, settings.shards)
    if ns.command == "serve":
        return _run(_serve(settings))
    if ns.command == "flush":
        return _run(_flush(settings, ns.drain))
    if ns.command == "migrate":
        return _run(_migrate(settings))
    if ns.command == "reconcile":
        return _run(_reconcile(settings, ns.show))
    if ns.command == "winners":
        return _run(_winners(settings))
    if ns.command == "rebuild":
        return _run(_rebuild(settings, ns.tenants))
    parser.error(f"unknown command {ns.command}")


if __name__ == "__main__":
    sys.exit(main())
