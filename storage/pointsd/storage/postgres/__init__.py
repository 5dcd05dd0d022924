"""PostgreSQL side of storage: the durable ledger and its migrations."""

from pointsd.storage.postgres import migrate
from pointsd.storage.postgres.db import create_engine, pg_errors, sqlalchemy_url
from pointsd.storage.postgres.ledger import Ledger, LedgerPage, UserSums

__all__ = [
    "Ledger",
    "LedgerPage",
    "UserSums",
    "create_engine",
    "migrate",
    "pg_errors",
    "sqlalchemy_url",
]
