"""What every handler shares: the context type, and the decorator that maps
errors to gRPC statuses through service.errors (and counts them)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from pointsd.service.errors import status_of
from pointsd.service.metrics import RPC_ERRORS

__all__ = ["Ctx", "abort", "unary"]

log = logging.getLogger("pointsd.rpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Ctx = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Req, Ctx], Awaitable[Resp]]


async def abort(context: Ctx, method: str, exc: BaseException) -> None:
    """End the RPC with the status `exc` maps to; an unexpected error is a bug:
    logged with its traceback and answered INTERNAL."""
    mapped = status_of(exc)
    if mapped is None:
        log.exception("%s failed unexpectedly", method, exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, "internal error"
    else:
        code, message = mapped
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE):
            log.warning("%s: %s", method, exc)
    RPC_ERRORS.labels(method, code.name).inc()
    await context.abort(code, message)


def unary(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Ctx) -> Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, method.__name__, exc)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapper
