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
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from pointsd.service.auth import CALLER
from pointsd.service.errors import MESSAGE_CHARS_MAX, InvalidArgument, clip, status_of
from pointsd.service.logs import REQUEST_ID, REQUEST_ID_KEY, request_id_of
from pointsd.service.metrics import RpcMeter, count_store_error
from pointsd.storage.errors import StorageError

__all__ = ["Ctx", "Undecodable", "abort", "add_service", "admin_mixin", "stream", "unary"]

log = logging.getLogger("pointsd.rpc")

# At most one log line per method this often for requests that do not decode
# (they are caller input: a flood of them must not flood the log).
_UNDECODABLE_LOG_S = 60.0

Req = TypeVar("Req")
Resp = TypeVar("Resp")
M = TypeVar("M", bound=Callable[..., Any])
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
        message = clip(message, MESSAGE_CHARS_MAX)
    if isinstance(exc, StorageError):
        count_store_error(exc, method)
    await context.abort(code, message)


def _service_of(method: Callable[..., Any]) -> str:
    """The service of a servicer method: PointsServicer.X -> "PointsService"."""
    owner = method.__qualname__.rpartition(".")[0]
    return owner.removesuffix("r") if owner.endswith("Servicer") else owner


def admin_mixin(method: M) -> M:
    """Under `@unary`, on a method of a mixin of AdminServicer (its token and
    flag RPCs): the service is read off the class that defines a method
    (`_service_of`), and this one belongs to AdminService (role table,
    metrics)."""
    method.__qualname__ = f"AdminServicer.{method.__name__}"
    return method


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


class Undecodable:
    """What a unary handler receives instead of a request whose bytes are not
    a valid message (gRPC would answer UNKNOWN and log a traceback)."""

    __slots__ = ("message_type",)

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type


def _safe_parser(message: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    name = message.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | Undecodable:
        try:
            return message.FromString(data)
        except DecodeError:
            return Undecodable(name)

    return parse


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Register a servicer of `service`: as the generated add_*_to_server,
    but a unary request that does not decode reaches its handler as an
    Undecodable (INVALID_ARGUMENT naming the message type); streams parse
    their own messages (and say which one was bad)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for m in service.methods:
        request = message_factory.GetMessageClass(m.input_type)
        response = message_factory.GetMessageClass(m.output_type)
        behaviour = getattr(servicer, m.name)
        if not getattr(behaviour, GATED, False):
            # A method without @unary/@stream would run without the gate.
            raise RuntimeError(f"{service.full_name}.{m.name} is not wrapped by @unary or @stream")
        if m.client_streaming or m.server_streaming:
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(
                behaviour,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
        else:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=_safe_parser(request),
                response_serializer=response.SerializeToString,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


def _undecodable(context_name: str, request: Undecodable, last: list[float]) -> InvalidArgument:
    now = time.monotonic()
    if now - last[0] >= _UNDECODABLE_LOG_S:
        last[0] = now
        log.warning("%s: a request was not a valid %s (one line a minute at most)",
                    context_name, request.message_type)  # fmt: skip
    return InvalidArgument(
        f"the request is not a valid {request.message_type} message (its bytes do not decode)"
    )


def _full_name(method: Callable[..., Any]) -> str:
    return f"/points.v1.{_service_of(method)}/{method.__name__}"


# Set on every wrapper of `unary` and `stream`; add_service refuses others.
GATED = "_pointsd_gated"


def unary(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    name = method.__name__
    full = _full_name(method)
    meter = RpcMeter(_service_of(method), name)
    logged = [-_UNDECODABLE_LOG_S]

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Ctx) -> Resp:
        started = time.perf_counter()
        token = _begin(context)
        code = grpc.StatusCode.UNKNOWN
        try:
            # Who first: an unauthenticated caller learns nothing, not even
            # whether its bytes decode. Nothing runs before the check.
            gate = self.app.gate
            caller = gate.caller(context)
            if isinstance(request, Undecodable):
                # The role first: a caller without it learns no more.
                gate.check(caller, full, None)
                raise _undecodable(name, request, logged)
            gate.check(caller, full, cast(Message, request))
            CALLER.set(caller)
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

    setattr(wrapper, GATED, True)
    return wrapper


def stream(method: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """For handlers that return a stream; they map their own errors (the
    stream may have sent results already) with `abort`. The caller's role is
    checked here; the handler checks the tenants of each batch (and the
    credential again) with `Gate.check_events`."""
    name = method.__name__
    full = _full_name(method)
    meter = RpcMeter(_service_of(method), name)

    @functools.wraps(method)
    async def wrapper(self: Any, requests: AsyncIterator[Req], context: Ctx) -> AsyncIterator[Resp]:
        started = time.perf_counter()
        token = _begin(context)
        code = grpc.StatusCode.UNKNOWN
        try:
            try:
                gate = self.app.gate
                caller = gate.caller(context)
                gate.check(caller, full, None)
            except Exception as exc:
                await abort(context, name, exc)
            CALLER.set(caller)
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

    setattr(wrapper, GATED, True)
    return wrapper
