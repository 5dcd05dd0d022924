"""Run the Alembic migrations programmatically (`pointsd migrate`, start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import exc as saexc

from pointsd.storage.postgres.db import pg_errors, sqlalchemy_url

__all__ = ["current_revision", "downgrade", "upgrade"]

_SCRIPTS = Path(__file__).resolve().parent / "migrations"


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["url"] = sqlalchemy_url(url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Blocking; run it in a thread from async code."""
    try:
        command.upgrade(_config(url), revision)
    except (saexc.SQLAlchemyError, OSError) as exc:
        raise pg_errors(exc) from exc


def downgrade(url: str, revision: str) -> None:
    """Blocking; for operators undoing a release (and the migration tests)."""
    try:
        command.downgrade(_config(url), revision)
    except (saexc.SQLAlchemyError, OSError) as exc:
        raise pg_errors(exc) from exc


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except (saexc.SQLAlchemyError, OSError) as exc:
        raise pg_errors(exc) from exc
    finally:
        engine.dispose()
