"""`pointsd`: the one entry point.

    pointsd serve                 run the gRPC server (and the ledger flusher)
    pointsd flush [--drain]       run only the flusher (or drain once and exit)
    pointsd migrate               apply database migrations
    pointsd reconcile             Redis balances == ledger sums? exit 1 if not
    pointsd rebuild [TENANT...]   restore Redis state from the ledger
    pointsd winners               record winners of closed weeks/months, once
    pointsd rules check [FILE]    validate a rule file
    pointsd health [--target H:P] exit 0 if a running server reports SERVING
    pointsd embedded status|stop  the embedded Redis and PostgreSQL of POINTS_DATA_DIR
    pointsd tokens create|list|revoke|rotate   API tokens (docs/security.md)
    pointsd --version

Configuration comes from environment variables (docs/configuration.md).
A start-up failure a user can cause (a taken port, a server that cannot be
reached, a bad rule file or setting) prints what to fix and exits with its
own code (pointsd.service.startup.ExitCode); the traceback is logged at DEBUG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Children are started with fork+exec only, so gRPC's fork handlers have
# nothing to protect; without this, gRPC logs a warning at every fork.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from pointsd.service.config import ConfigError, Settings
from pointsd.service.logs import setup_logging
from pointsd.service.startup import ExitCode, describe_rule_error, explain
from pointsd.service.supervisor import die_with_supervisor

__all__ = ["main"]

log = logging.getLogger("pointsd")


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
    except ChildFailed as exc:
        log.error("stopping: %s", exc)
        return exc.exit_code
    return 0


# SIGTERM before the flusher's loop runs (a server stopping right after it
# started its flusher child) must still end in a drain, not a silent death.
_early_stop = threading.Event()


async def _flush(settings: Settings, drain: bool) -> int:
    from pointsd.service.app import App
    from pointsd.service.server import SHUTDOWN_GIVE_UP_S

    if not drain:
        from pointsd.service.metrics import FLUSHER
        from pointsd.service.server import start_metrics, tune_gc

        tune_gc()
        start_metrics(settings, [FLUSHER])
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
        from pointsd.service.metrics import watch_outbox

        await asyncio.gather(
            app.flusher.run(stop),
            app.winners_recorder().run(stop),
            app.farming_pass().run(stop),
            watch_outbox(app.stores.outbox, app.shards, stop),
        )
        drained = await app.flusher.drain(
            settings.shutdown_grace_s, unreachable_s=SHUTDOWN_GIVE_UP_S
        )
        log.info(
            "outbox %s on shutdown (%s)",
            "drained" if drained else "NOT drained, the next flusher takes over",
            app.flusher.summary(),
        )
        return 0
    finally:
        await app.close()


async def _migrate(settings: Settings) -> int:
    from pointsd.service.app import resolve_urls, stop_owned
    from pointsd.storage.postgres import migrate

    _, database_url, embedded = await resolve_urls(settings, redis=False)
    try:
        await asyncio.to_thread(migrate.upgrade, database_url)
        revision = await asyncio.to_thread(migrate.current_revision, database_url)
        print(f"database at revision {revision}")
        return 0
    finally:
        await stop_owned(embedded)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    """'90s', '15m', '1h', '30d' (argparse type: a bad one exits 2 saying why)."""
    unit = text[-1:]
    if unit not in _DURATION_UNITS or not text[:-1].isdigit() or len(text) > 12:
        raise argparse.ArgumentTypeError(
            f"{text[:20]!r}: a whole number and a unit of s, m, h, d, e.g. 30d"
        )
    return timedelta(seconds=int(text[:-1]) * _DURATION_UNITS[unit])


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _print_token_row(row: Any, now: datetime) -> None:
    if row.revoked_at is not None:
        state = f"revoked {row.revoked_at.isoformat()}"
    elif row.expires_at is not None and row.expires_at <= now:
        state = f"expired {row.expires_at.isoformat()}"
    elif row.expires_at is not None:
        state = f"valid until {row.expires_at.isoformat()}"
    else:
        state = "valid"
    if row.replaced_by:
        state += f", replaced by {row.replaced_by}"
    tenants = "all" if row.tenants is None else ",".join(row.tenants)
    print(f"{row.token_id}  {row.name}  roles={','.join(row.roles)}  tenants={tenants}  {state}")


async def _tokens(settings: Settings, ns: argparse.Namespace) -> int:
    """The token commands: straight to PostgreSQL (as migrate), no server needed.
    A token is printed once, on stdout alone, so `$(pointsd tokens create …)` works.
    Changes are audited as the RPCs are (caller "cli", credential the OS user)."""
    import getpass

    from pointsd.service import audit
    from pointsd.service.api.points.v1 import points_pb2 as pb
    from pointsd.service.api_tokens import TokenCommands
    from pointsd.service.app import resolve_urls, stop_owned
    from pointsd.service.auth import CALLER, ROLES, Caller
    from pointsd.service.errors import FailedPrecondition, NotFound, ServiceError
    from pointsd.storage.errors import RecordChanged, RecordMissing
    from pointsd.storage.postgres.audit import AuditStore
    from pointsd.storage.postgres.db import create_engine
    from pointsd.storage.postgres.tokens import TokenStore

    _, database_url, embedded = await resolve_urls(settings, redis=False)
    engine = create_engine(database_url, pool_size=1, timeout_s=settings.db_timeout_s)
    store, trail = TokenStore(engine), AuditStore(engine)
    commands = TokenCommands(store)
    now_ms = settings.clock()()
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    # Whoever can run this can reach the database: every role and tenant.
    CALLER.set(Caller("cli", frozenset(ROLES), None, f"os user {getpass.getuser()}"))
    try:
        if ns.tokens_command == "create":
            tenants = None if ns.tenants.strip() == "all" else _csv(ns.tenants)
            expires = None if ns.expires_in is None else now + ns.expires_in
            request = pb.CreateTokenRequest(
                name=ns.name, roles=_csv(ns.roles), tenants=tenants or (),
                all_tenants=tenants is None,
            )  # fmt: skip
            if expires is not None:
                request.expires_at.FromDatetime(expires)
            async with audit.calling(trail, now_ms, "CreateToken", request):
                token, row = await commands.create(
                    name=ns.name, roles=_csv(ns.roles), tenants=tenants, expires_at=expires,
                    now=now,
                )  # fmt: skip
            print(token)
            print(f"created token {row.token_id}; the secret is shown only now", file=sys.stderr)
        elif ns.tokens_command == "list":
            for row in await store.list():
                _print_token_row(row, now)
        elif ns.tokens_command == "revoke":
            request_revoke = pb.RevokeTokenRequest(token_id=ns.token_id)
            async with audit.calling(trail, now_ms, "RevokeToken", request_revoke):
                row = await commands.revoke(ns.token_id, now=now)
            print(f"revoked token {row.token_id} ({row.name}); every server refuses it within 5 s")
        elif ns.tokens_command == "rotate":
            grace_s = int(ns.grace.total_seconds())
            request_rotate = pb.RotateTokenRequest(token_id=ns.token_id, grace_s=grace_s)
            async with audit.calling(trail, now_ms, "RotateToken", request_rotate):
                token, old, new = await commands.rotate(ns.token_id, grace=ns.grace, now=now)
            print(token)
            until = old.expires_at.isoformat() if old.expires_at else "?"
            print(
                f"token {new.token_id} replaces {old.token_id}, which stays valid until {until}",
                file=sys.stderr,
            )
        return 0
    except (ServiceError, RecordMissing, RecordChanged) as exc:
        print(f"pointsd tokens {ns.tokens_command}: {exc}", file=sys.stderr)
        # A bad argument is the operator's to fix (2); a missing or changed token, 1.
        state = (NotFound, FailedPrecondition, RecordMissing, RecordChanged)
        return ExitCode.FAILED if isinstance(exc, state) else ExitCode.CONFIG
    finally:
        await engine.dispose()
        await stop_owned(embedded)


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
            f"redis(available={m.redis.available} earned={m.redis.earned} spent={m.redis.spent} "
            f"held={m.redis.held}) ledger(available={m.ledger.available} "
            f"earned={m.ledger.earned} spent={m.ledger.spent} held={m.ledger.held})"
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
    from pointsd.service.rules.farming import FARMING, describe_farming

    try:
        book = load_rule_book(Path(path) if path else None, default_shards=default_shards)
    except RuleError as exc:
        print(describe_rule_error(exc, path or ""))
        return ExitCode.RULES
    for tenant in book.tenants.values():
        print(
            f"tenant {tenant.tenant_id}: {tenant.timezone.key}, {tenant.shards} shard(s), "
            f"rule set {tenant.rule_set!r} with {len(tenant.actions)} actions"
        )
        print(f"  {tenant.calendar.describe()}")
        for action in tenant.actions.values():
            for credit in action.credits:
                said = "; ".join(t for m in book.mechanics if (t := m.describe(credit)))
                print(
                    f"  {action.key:<20} {credit.role.name.lower():<6} "
                    f"{credit.points:>4} points; {said}"
                )
        # Rule-set blocks (levels, badges, tasks), each mechanic's own lines.
        for mechanic in book.mechanics:
            for line in mechanic.describe_rule_set(tenant.parts):
                print(f"  {line}")
        print(f"  {describe_farming(tenant.part(FARMING))}")
    return 0


def _embedded(settings: Settings, command: str) -> int:
    from pointsd.storage.embedded import EmbeddedPostgres, EmbeddedRedis

    servers: dict[str, EmbeddedRedis | EmbeddedPostgres] = {
        "redis": EmbeddedRedis(settings.data_dir),
        "postgres": EmbeddedPostgres(settings.data_dir),
    }
    for name, server in servers.items():
        pid = server.process_pid()  # a Redis still loading its data runs too
        if command == "status":
            state = f"running (pid {pid})" if pid else "not running"
            print(f"embedded {name} in {server.dir}: {state}")
        elif pid:
            server.stop()
            print(f"embedded {name} (pid {pid}) stopped; its data stays in {server.dir}")
        else:
            print(f"embedded {name} in {server.dir}: not running")
    if command == "stop":
        # A serve still running on this folder starts them again within a second.
        print("a pointsd serve running on this folder starts them again: stop it first")
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


def _version() -> str:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import grpc

    try:
        mine = version("pointsd")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        mine = "unknown (not installed)"
    return f"pointsd {mine} (Python {platform.python_version()}, grpcio {grpc.__version__})"


def _settings_help() -> str:
    """Every setting with its default, for `serve --help` and `flush --help`."""
    defaults = Settings()
    lines = ["settings (environment variables; docs/configuration.md explains each):"]
    for f in dataclasses.fields(Settings):
        value = getattr(defaults, f.name)
        shown = "(unset)" if value == "" else str(value)
        lines.append(f"  {Settings.env_name(f.name):<36} {shown}")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointsd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server and the ledger flusher until SIGTERM or SIGINT. "
        "With REDIS_URL / DATABASE_URL unset, embedded servers run in POINTS_DATA_DIR.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flush = sub.add_parser(
        "flush",
        help="run only the ledger flusher",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    embedded = sub.add_parser(
        "embedded", help="the embedded Redis and PostgreSQL of POINTS_DATA_DIR"
    )
    embedded_sub = embedded.add_subparsers(dest="embedded_command", required=True)
    embedded_sub.add_parser("status", help="say which embedded servers run, with their pids")
    embedded_sub.add_parser(
        "stop", help="stop them (a SIGKILLed serve leaves them running); data is kept"
    )
    tokens = sub.add_parser(
        "tokens",
        help="API tokens: create, list, revoke, rotate",
        description="Manage API tokens in PostgreSQL (DATABASE_URL, or the embedded one). "
        "The server does not check them yet: see docs/security.md.",
    )
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_sub.add_parser("create", help="create a token and print it, once")
    create.add_argument("--name", required=True, help="who holds it, e.g. im-gateway-eu")
    create.add_argument(
        "--roles", required=True, help="comma-separated: ingest, read, redeem, admin"
    )
    create.add_argument(
        "--tenants", default="all", help="comma-separated tenant ids, or all (default)"
    )
    create.add_argument("--expires-in", type=_duration, help="e.g. 90d, 12h (default: never)")
    tokens_sub.add_parser("list", help="every token with its caller and state (no secrets)")
    revoke = tokens_sub.add_parser("revoke", help="end a token at once")
    revoke.add_argument("token_id", help="the id shown by list (pt_<token_id>_…)")
    rotate = tokens_sub.add_parser(
        "rotate", help="print a new token for the same caller; the old one ends after --grace"
    )
    rotate.add_argument("token_id", help="the id shown by list")
    rotate.add_argument(
        "--grace", type=_duration, default=timedelta(hours=1), help="e.g. 30m (default 1h)"
    )
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
        return ExitCode.CONFIG
    setup_logging(settings.log_level, settings.log_format)
    try:
        return _dispatch(parser, ns, settings)
    except BrokenPipeError:
        # `pointsd rules check | head`: the reader left; say nothing more.
        _silence_stdout()
        return ExitCode.FAILED
    except Exception as exc:
        explained = explain(exc, settings.rules_file)
        if explained is None:
            raise
        log.debug("start-up failed", exc_info=exc)
        code, message = explained
        print(message, file=sys.stderr)
        return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of the
    broken pipe cannot raise again at exit."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


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
    # Commands that take nothing but the settings.
    plain = {"migrate": _migrate, "winners": _winners}
    if ns.command in plain:
        return _run(plain[ns.command](settings))
    if ns.command == "reconcile":
        return _run(_reconcile(settings, ns.show))
    if ns.command == "rebuild":
        return _run(_rebuild(settings, ns.tenants))
    if ns.command == "embedded":
        return _embedded(settings, ns.embedded_command)
    if ns.command == "tokens":
        return _run(_tokens(settings, ns))
    parser.error(f"unknown command {ns.command}")


if __name__ == "__main__":
    sys.exit(main())
