"""Alembic environment: online migrations only, serialized by an advisory lock
so several service processes starting at once migrate exactly once."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from pointsd.storage.postgres.models import metadata

# Any constant works; it only has to be the same in every process.
_MIGRATION_LOCK = 7_305_216_001

config = context.config
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
if not url:
    raise SystemExit("no database URL: set DATABASE_URL or pass one to pointsd migrate")

engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
    try:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        # A failed migration left its transaction aborted: end it, or the
        # unlock fails too and hides the migration's own error.
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
        connection.commit()
engine.dispose()
