"""What every handler shares: the context type, and the decorators that map
errors to gRPC statuses through service.errors, count every call by status
code and time it (metrics), and give it a request id (logs).

Decorators, not a grpc.aio server interceptor: an interceptor adds a pass
through grpc's interceptor chain (and a handler lookup) to every call; a
decorator costs one wrapper call. Health and reflection calls are therefore
not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc

from pointsd.service.errors import status_of
from pointsd.service.logs import REQUEST_ID, REQUEST_ID_KEY, request_id_of
from pointsd.service.metrics import RpcMeter, count_store_error
from pointsd.storage.errors import StorageError

__all__ = ["Ctx", "abort", "stream", "unary"]

log = logging.getLogger("pointsd.rpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Ctx = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Req, Ctx], Awaitable[Resp]]
StreamHandler = Callable[[Any, AsyncIterator[Req], Ctx], AsyncIterator[Resp]]

_OK = grpc.StatusCode.OK


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
    if isinstance(exc, StorageError):
        count_store_error(exc, method)
    await context.abort(code, message)


def _service_of(method: Callable[..., Any]) -> str:
    """The service of a servicer method: PointsServicer.X -> "PointsService"."""
    owner = method.__qualname__.rpartition(".")[0]
    return owner.removesuffix("r") if owner.endswith("Servicer") else owner


def _begin(context: Ctx) -> contextvars.Token[str]:
    """Set the call's request id (for its log lines) and return it to the
    caller with the status (trailing metadata: no extra send)."""
    request_id = request_id_of(context.invocation_metadata())
    context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
    return REQUEST_ID.set(request_id)


def _end(token: contextvars.Token[str]) -> None:
    # A stream closed from another context (its finaliser) cannot reset.
    with contextlib.suppress(ValueError):
        REQUEST_ID.reset(token)


def _cancelled_code(context: Ctx) -> grpc.StatusCode:
    """A handler is cancelled when the client cancels or its deadline passes."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _code_of(context: Ctx, default: grpc.StatusCode) -> grpc.StatusCode:
    """The code the handler set or aborted with, else `default`."""
    # The stubs say StatusCode; grpc.aio returns None while none is set.
    code: grpc.StatusCode | None = context.code()
    return code or default


def unary(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    name = method.__name__
    meter = RpcMeter(_service_of(method), name)

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Ctx) -> Resp:
        started = time.perf_counter()
        token = _begin(context)
        code = grpc.StatusCode.UNKNOWN
        try:
            response = await method(self, request, context)
            code = _code_of(context, _OK)
            return response
        except grpc.aio.AbortError:
            code = _code_of(context, grpc.StatusCode.UNKNOWN)
            raise
        except asyncio.CancelledError:
            code = _cancelled_code(context)
            raise
        except Exception as exc:
            try:
                await abort(context, name, exc)
            except grpc.aio.AbortError:
                code = _code_of(context, grpc.StatusCode.UNKNOWN)
                raise
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            meter.observe(code, time.perf_counter() - started)
            _end(token)

    return wrapper


def stream(method: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """For handlers that return a stream; they map their own errors (the
    stream may have sent results already) with `abort`."""
    meter = RpcMeter(_service_of(method), method.__name__)

    @functools.wraps(method)
    async def wrapper(self: Any, requests: AsyncIterator[Req], context: Ctx) -> AsyncIterator[Resp]:
        started = time.perf_counter()
        token = _begin(context)
        code = grpc.StatusCode.UNKNOWN
        try:
            # Closed with the call: a cancelled stream ends its inner generator now.
            inner = cast(AsyncGenerator[Resp, None], method(self, requests, context))
            async with contextlib.aclosing(inner) as results:
                async for result in results:
                    yield result
            code = _code_of(context, _OK)
        except grpc.aio.AbortError:
            code = _code_of(context, grpc.StatusCode.UNKNOWN)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = _cancelled_code(context)
            raise
        finally:
            meter.observe(code, time.perf_counter() - started)
            _end(token)

    return wrapper
