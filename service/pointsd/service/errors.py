"""Service errors and the one table that maps every error to a gRPC status.

Handlers raise (or let storage raise) these; `status_of` picks the code and
the message returned to the caller, and the category counted in metrics.
"""

from __future__ import annotations

import grpc

from pointsd.storage.errors import LedgerDataError, StorageError, StorageUnavailable

__all__ = [
    "AlreadyExists",
    "Conflict",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "ServiceError",
    "ShardBusy",
    "Unauthenticated",
    "Unfinished",
    "clip",
    "status_of",
]

# A message travels in the status trailer (gRPC allows 16 KiB of metadata):
# bounded, whatever a caller sent.
MESSAGE_CHARS_MAX = 1000


def clip(text: str, chars: int = 64) -> str:
    """Caller input quoted in a message: at most `chars` characters."""
    return text if len(text) <= chars else text[:chars] + "…"


class ServiceError(Exception):
    """An error with a message meant for the caller."""


class InvalidArgument(ServiceError):
    pass


class NotFound(ServiceError):
    pass


class AlreadyExists(ServiceError):
    pass


class FailedPrecondition(ServiceError):
    pass


class Conflict(ServiceError):
    """The target changed since the caller read it: read again and retry."""


class Overloaded(ServiceError):
    """A bound was hit (outbox full, too many in flight): retry with backoff."""


class ShardBusy(ServiceError):
    """The state is being rebuilt: retry shortly."""


class Unfinished(ServiceError):
    """Part of the call took effect and the rest waits for a store that
    did not answer; the message says what stands: retry the call."""


class Unauthenticated(ServiceError):
    """No usable credentials: missing, malformed, unknown, expired or revoked
    token. The message says which, never the secret."""


class PermissionDenied(ServiceError):
    """A known caller without the role or the tenant the request needs."""


# Order matters: the first matching class wins (subclasses before bases).
_TABLE: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Conflict, grpc.StatusCode.ABORTED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ShardBusy, grpc.StatusCode.UNAVAILABLE),
    (Unfinished, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (StorageUnavailable, grpc.StatusCode.UNAVAILABLE),
    (LedgerDataError, grpc.StatusCode.INTERNAL),
    (StorageError, grpc.StatusCode.INTERNAL),
]


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status for a known error, or None for an unexpected one (a bug)."""
    for kind, code in _TABLE:
        if isinstance(exc, kind):
            if isinstance(exc, ServiceError):
                return code, str(exc)
            if isinstance(exc, StorageUnavailable):
                return code, "a backing store is unavailable; retry with backoff"
            return code, "internal storage error"
    return None
