"""Domain errors raised by storage. Driver errors never leave this package:
each is translated here-ish (`raise StorageUnavailable(...) from exc`)."""

from __future__ import annotations

__all__ = [
    "LedgerDataError",
    "RecordChanged",
    "RecordExists",
    "RecordMissing",
    "StorageError",
    "StorageUnavailable",
]


class StorageError(Exception):
    """A store failed in a way the caller cannot fix by changing the request.
    `store` names the server ("redis" or "postgresql"; "" when neither), so
    a start-up error and the metrics can say which."""

    def __init__(self, message: str, store: str = "") -> None:
        super().__init__(message)
        self.store = store


class StorageUnavailable(StorageError):
    """Redis or PostgreSQL could not be reached or timed out; retry later.

    For writes the outcome is unknown; every write here is idempotent, so the
    caller retries the same request.
    """


class LedgerDataError(StorageError):
    """PostgreSQL refused a ledger row for its content (not connectivity)."""


class RecordExists(StorageError):
    """A record with this key exists already."""


class RecordMissing(StorageError):
    """No record with this key."""


class RecordChanged(StorageError):
    """The record changed since the caller read it (optimistic concurrency)."""
