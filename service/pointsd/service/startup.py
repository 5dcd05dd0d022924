"""Start-up failures a person can act on: one or two lines that say what is
wrong and what to do, and an exit code per kind (docs/operations.md lists
them). The traceback goes to the log at DEBUG only: a taken port or a
stopped database is not a bug in pointsd."""

from __future__ import annotations

import errno
import socket
from enum import IntEnum
from typing import TYPE_CHECKING

from pointsd.service.config import ConfigError
from pointsd.storage.embedded import EmbeddedServerError
from pointsd.storage.errors import StorageUnavailable

if TYPE_CHECKING:
    # Imported when needed: every CLI call (the container's health check
    # every 10 s) imports this module, and the rules engine costs ~100 ms.
    from pointsd.service.rules import RuleError

__all__ = [
    "ExitCode",
    "ListenError",
    "describe_rule_error",
    "diagnose_listen",
    "explain",
    "probe_listen",
]

# Driver messages can run to many lines (SQLAlchemy appends a link); a start-up
# line keeps the first and at most this many characters of it.
_DETAIL_MAX = 240


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    CONFIG = 2
    RULES = 3
    LISTEN = 4
    REDIS = 5
    POSTGRES = 6
    EMBEDDED = 7


class ListenError(Exception):
    """An address the service must listen on cannot be bound."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def _bind_problem(address: str) -> str | None:
    """Why a plain socket cannot bind `address` (host:port), or None."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
    except OSError as exc:
        return {
            errno.EADDRINUSE: "is in use: is another pointsd running?",
            errno.EACCES: "needs privileges (ports below 1024 do):",
            errno.EADDRNOTAVAIL: "is not an address of this host:",
        }.get(exc.errno or 0, f"cannot be bound ({exc.strerror}):")
    except (ValueError, OverflowError):
        return "is not a host:port this machine can listen on:"
    return None


def probe_listen(address: str, setting: str) -> None:
    """Raise ListenError now if `address` cannot be bound."""
    problem = _bind_problem(address)
    if problem is not None:
        raise ListenError(f"{address} {problem} set {setting} to another address")


def diagnose_listen(address: str, setting: str) -> ListenError:
    """The error for an address gRPC failed to bind (gRPC only says that it
    failed; binding it once with a plain socket says why)."""
    problem = _bind_problem(address) or "cannot be bound:"
    return ListenError(f"{address} {problem} set {setting} to another address")


def _detail(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    for prefix in ("redis unavailable: ", "postgresql unavailable: "):
        first = first.removeprefix(prefix)
    return first if len(first) <= _DETAIL_MAX else first[:_DETAIL_MAX] + "…"


def _unavailable(exc: StorageUnavailable) -> tuple[ExitCode, str]:
    if exc.store == "postgresql":
        return ExitCode.POSTGRES, (
            f"cannot reach PostgreSQL: {_detail(exc)}\n"
            "Is it running? Check DATABASE_URL, or unset it to use the embedded PostgreSQL."
        )
    return ExitCode.REDIS, (
        f"cannot reach Redis: {_detail(exc)}\n"
        "Is it running? Check REDIS_URL, or unset it to use the embedded Redis."
    )


def explain(exc: BaseException, rules_file: str = "") -> tuple[ExitCode, str] | None:
    """The exit code and message for a start-up failure a user can cause,
    or None for anything else (a bug: its traceback is the message)."""
    from pointsd.service.rules import RuleError

    if isinstance(exc, ConfigError):
        return ExitCode.CONFIG, f"configuration error: {exc}"
    if isinstance(exc, RuleError):
        return ExitCode.RULES, describe_rule_error(exc, rules_file)
    if isinstance(exc, ListenError):
        return ExitCode.LISTEN, str(exc)
    if isinstance(exc, StorageUnavailable):
        return _unavailable(exc)
    if isinstance(exc, EmbeddedServerError):
        return ExitCode.EMBEDDED, (
            f"{exc}\nSet REDIS_URL and DATABASE_URL to use servers of your own instead."
        )
    return None


def describe_rule_error(exc: RuleError, rules_file: str) -> str:
    """What is wrong with the rule file, one "path: what" line per problem."""
    source = f"rule file {rules_file}" if rules_file else "the built-in rule file"
    hint = "fix it, or unset POINTS_RULES_FILE for the built-in rules"
    problems = "\n".join(f"  {p}" for p in exc.problems)
    return f"{source} is invalid ({hint}):\n{problems}"
