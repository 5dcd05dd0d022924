"""points.v1.PointsService handlers: validate, call, map errors. Nothing else.

Every error goes through `service.errors.status_of`; an unexpected one is
logged with its traceback and answered INTERNAL.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from service.api.points.v1 import points_pb2 as pb
from service.api.points.v1 import points_pb2_grpc as pb_grpc
from service.app import App
from service.domain import Outcome, Period
from service.errors import AlreadyExists, InvalidArgument, status_of
from service.ingest import EventResult
from service.metrics import EVENTS, RPC_ERRORS
from service.rules import EARNED
from service.validation import InvalidField, check_id, event_from_pb
from storage.entries import KIND_AWARD, LedgerRow

__all__ = ["PointsServicer"]

log = logging.getLogger("pointsd.rpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Ctx = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Req, Ctx], Awaitable[Resp]]

_ROLES = {"a": pb.ACTOR, "t": pb.TARGET}
_KINDS = {KIND_AWARD: pb.AWARD}


async def _abort(context: Ctx, method: str, exc: BaseException) -> None:
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
            await _abort(context, method.__name__, exc)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapper


def _timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def result_to_pb(r: EventResult) -> pb.ActivityResult:
    msg = pb.ActivityResult(
        event_id=r.event_id,
        outcome=int(r.outcome),  # type: ignore[arg-type]
        points=r.points,
        balance=r.balance,
        reason=r.reason,
        field=r.field,
    )
    if r.original_outcome is not None:
        msg.original_outcome = int(r.original_outcome)  # type: ignore[assignment]
    for c in r.credits:
        msg.credits.add(
            user_id=c.user_id,
            role=int(c.role),
            outcome=int(c.outcome),
            points=c.points,
            balance=c.balance,
            reason=c.reason,
        )
    return msg


def entry_to_pb(row: LedgerRow) -> pb.LedgerEntry:
    return pb.LedgerEntry(
        entry_id=row.entry_key,
        kind=_KINDS.get(row.kind, pb.ENTRY_KIND_UNSPECIFIED),
        action=row.action,
        points=row.points,
        balance_after=row.balance_after,
        event_id=row.event_id,
        role=_ROLES.get(row.role, pb.ROLE_UNSPECIFIED),
        counterpart_user_id=row.counterpart_id,
        group_id=row.group_id,
        department_id=row.department_id,
        occurred_at=_timestamp(row.occurred_at_ms),
        recorded_at=_timestamp(row.recorded_at_ms),
        reason=row.reason,
        quantity=row.quantity,
        attributes=dict(row.attributes),
    )


def _query_tag(tenant_id: str, user_id: str) -> str:
    return hashlib.blake2b(f"{tenant_id}\0{user_id}".encode(), digest_size=6).hexdigest()


def encode_page_token(tenant_id: str, user_id: str, cursor: tuple[int, int]) -> str:
    raw = json.dumps({"q": _query_tag(tenant_id, user_id), "o": cursor[0], "i": cursor[1]})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, tenant_id: str, user_id: str) -> tuple[int, int]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = (int(raw["o"]), int(raw["i"]))
        tag = raw["q"]
    except (ValueError, KeyError, TypeError):
        raise InvalidField("page_token", "is not a token returned by ListLedger") from None
    if tag != _query_tag(tenant_id, user_id):
        raise InvalidField("page_token", "belongs to another tenant_id/user_id query")
    return cursor


class PointsServicer(pb_grpc.PointsServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    def _now_ms(self) -> int:
        return self.app.ingestor.clock_ms()

    def _tenant(self, tenant_id: str) -> None:
        check_id("tenant_id", tenant_id)
        if self.app.engine.tenant(tenant_id) is None:
            raise InvalidField("tenant_id", f"unknown tenant {tenant_id!r}")

    @staticmethod
    def _count(results: list[EventResult]) -> None:
        for r in results:
            EVENTS.labels(r.outcome.name).inc()

    @unary
    async def RecordActivity(self, request: pb.ActivityEvent, context: Ctx) -> pb.ActivityResult:
        event = event_from_pb(request, self._now_ms(), self.app.limits)
        results = await self.app.ingestor.record([event])
        self._count(results)
        result = results[0]
        if result.outcome is Outcome.REJECTED:
            if result.field == "event_id":
                raise AlreadyExists(result.reason)
            raise InvalidArgument(result.reason)
        return result_to_pb(result)

    @unary
    async def RecordActivities(
        self, request: pb.RecordActivitiesRequest, context: Ctx
    ) -> pb.RecordActivitiesResponse:
        limit = self.app.settings.batch_events_max
        if len(request.events) > limit:
            raise InvalidField(
                "events", f"has {len(request.events)} events; at most {limit} per call"
            )
        now_ms = self._now_ms()
        items: list[Any] = []
        for msg in request.events:
            try:
                items.append(event_from_pb(msg, now_ms, self.app.limits))
            except InvalidField as exc:
                items.append(exc)
        results = await self.app.ingestor.record(items)
        # A rejected event keeps the id the caller sent, even an invalid one.
        for i, (msg, r) in enumerate(zip(request.events, results, strict=True)):
            if not r.event_id:
                results[i] = EventResult(msg.event_id, r.outcome, reason=r.reason, field=r.field)
        self._count(results)
        return pb.RecordActivitiesResponse(results=[result_to_pb(r) for r in results])

    async def StreamActivities(
        self, request_iterator: AsyncIterator[pb.ActivityEvent], context: Ctx
    ) -> AsyncIterator[pb.ActivityResult]:
        # Events are processed concurrently (and coalesced with other callers)
        # while results are written in arrival order. The queue bounds how far
        # the reader runs ahead of the writer.
        pending: asyncio.Queue[asyncio.Task[pb.ActivityResult] | None] = asyncio.Queue(
            maxsize=self.app.settings.stream_inflight_max
        )

        async def one(msg: pb.ActivityEvent) -> pb.ActivityResult:
            try:
                item: Any = event_from_pb(msg, self._now_ms(), self.app.limits)
            except InvalidField as exc:
                item = exc
            result = (await self.app.ingestor.record([item]))[0]
            EVENTS.labels(result.outcome.name).inc()
            out = result_to_pb(result)
            if not out.event_id:
                out.event_id = msg.event_id
            return out

        async def reader() -> None:
            try:
                async for msg in request_iterator:
                    await pending.put(asyncio.create_task(one(msg)))
            finally:
                await pending.put(None)

        read_task = asyncio.create_task(reader())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await read_task  # re-raise a failure of the request stream
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _abort(context, "StreamActivities", exc)
        finally:
            read_task.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    @unary
    async def GetBalance(self, request: pb.GetBalanceRequest, context: Ctx) -> pb.Balance:
        self._tenant(request.tenant_id)
        user_id = check_id("user_id", request.user_id)
        tenant = self.app.engine.tenant(request.tenant_id)
        assert tenant is not None
        today = self.app.engine.period(tenant, Period.DAY, self._now_ms())
        view = await self.app.stores.balances.get(tenant.tenant_id, user_id, today, EARNED)
        return pb.Balance(
            tenant_id=tenant.tenant_id,
            user_id=user_id,
            available=view.available,
            lifetime_earned=view.earned,
            spent=view.spent,
            earned_today=view.earned_in_period,
            day=today.key,
        )

    @unary
    async def ListLedger(
        self, request: pb.ListLedgerRequest, context: Ctx
    ) -> pb.ListLedgerResponse:
        self._tenant(request.tenant_id)
        user_id = check_id("user_id", request.user_id)
        size_max = self.app.settings.ledger_page_size_max
        size = request.page_size or 50
        if not 1 <= size <= size_max:
            raise InvalidField("page_size", f"must be between 1 and {size_max}, got {size}")
        cursor = (
            decode_page_token(request.page_token, request.tenant_id, user_id)
            if request.page_token
            else None
        )
        page = await self.app.stores.ledger.page(request.tenant_id, user_id, size, cursor)
        return pb.ListLedgerResponse(
            entries=[entry_to_pb(r) for r in page.rows],
            next_page_token=(
                encode_page_token(request.tenant_id, user_id, page.next_cursor)
                if page.next_cursor
                else ""
            ),
        )
