"""Engine creation and the one place PostgreSQL driver errors are translated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import exc as saexc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from pointsd.storage.errors import LedgerDataError, StorageError, StorageUnavailable

__all__ = ["EngineStore", "create_engine", "pg_errors", "sqlalchemy_url"]


def sqlalchemy_url(url: str) -> str:
    """Accept postgres://, postgresql:// or postgresql+psycopg:// URLs; use psycopg 3."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.drivername in ("postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 5, timeout_s: float = 5.0) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout_s,
        # A restarted PostgreSQL leaves dead connections in the pool.
        pool_pre_ping=True,
        # Error texts go to logs: never with the statement's parameters
        # (a token's hash, a user's text).
        hide_parameters=True,
        connect_args={"connect_timeout": max(1, int(timeout_s))},
    )


def _said(exc: BaseException) -> BaseException:
    """What PostgreSQL or the driver said, without SQLAlchemy's statement."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def pg_errors(exc: BaseException) -> StorageError:
    if isinstance(exc, psycopg.Error):  # raised by raw-connection calls (COPY)
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return StorageUnavailable(f"postgresql unavailable: {exc}", "postgresql")
        if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
            return LedgerDataError(f"postgresql refused the data: {exc}", "postgresql")
        return StorageError(f"postgresql error: {exc}", "postgresql")
    if isinstance(exc, saexc.DBAPIError) and exc.connection_invalidated:
        return StorageUnavailable(f"postgresql connection lost: {exc.orig}", "postgresql")
    if isinstance(exc, saexc.OperationalError | saexc.InterfaceError | OSError | TimeoutError):
        return StorageUnavailable(f"postgresql unavailable: {_said(exc)}", "postgresql")
    if isinstance(exc, saexc.TimeoutError):
        return StorageUnavailable(f"postgresql pool timeout: {_said(exc)}", "postgresql")
    if isinstance(exc, saexc.DataError | saexc.IntegrityError):
        return LedgerDataError(f"postgresql refused the data: {_said(exc)}", "postgresql")
    return StorageError(f"postgresql error: {_said(exc)}", "postgresql")


class EngineStore:
    """A store over one engine: `_run` does a unit of work in a transaction
    (`write`) or on a plain connection (reads), driver errors translated."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def _run(self, work: Callable[[AsyncConnection], Any], *, write: bool = True) -> Any:
        try:
            if write:
                async with self.engine.begin() as conn:
                    return await work(conn)
            async with self.engine.connect() as conn:
                return await work(conn)
        except (saexc.SQLAlchemyError, OSError) as exc:
            raise pg_errors(exc) from exc
