"""Typed clients of `points.v1.PointsService`: `PointsClient` (asyncio) and
`SyncPointsClient` (blocking threads).

Both apply a per-attempt deadline to every unary call and retry, with
exponential backoff and full jitter, only what is safe to send again
(docs/api.md, "Retrying is always safe"): RecordActivity and RecordActivities
(the event id makes a replay come back DUPLICATE, so every attempt resends
the same ids), the reads, and Redeem with its `request_id`. Only UNAVAILABLE,
DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are retried; INVALID_ARGUMENT,
ALREADY_EXISTS, FAILED_PRECONDITION and the rest are answers, raised at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, Unpack, cast

import grpc
import grpc.aio
from google.protobuf.message import Message

from pointsd_client.events import (
    BATCH_EVENTS_MAX,
    REQUEST_BYTES_MAX,
    EventDetails,
    EventFields,
    chunk_events,
    ensure_event_id,
    make_event,
)
from pointsd_client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from pointsd_client.stream import ActivityStream
from pointsd_client.v1 import points_pb2 as pb

__all__ = ["DEFAULT_TIMEOUT_S", "PointsClient", "SyncPointsClient"]

SERVICE = "points.v1.PointsService"
DEFAULT_TIMEOUT_S = 2.0


# --------------------------------------------------------------------------
# The RPCs

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


def _always(_: Message) -> bool:
    return True


@dataclass(frozen=True)
class _Method(Generic[Req, Resp]):
    name: str
    request: type[Req]
    response: type[Resp]
    # Whether sending this request again cannot do anything twice.
    idempotent: Callable[[Req], bool] = _always

    @property
    def path(self) -> str:
        return f"/{SERVICE}/{self.name}"


def _has_request_id(request: pb.RedeemRequest) -> bool:
    return bool(request.request_id)


_RECORD = _Method("RecordActivity", pb.ActivityEvent, pb.ActivityResult)
_RECORD_MANY = _Method("RecordActivities", pb.RecordActivitiesRequest, pb.RecordActivitiesResponse)
_BALANCE = _Method("GetBalance", pb.GetBalanceRequest, pb.Balance)
_LEDGER = _Method("ListLedger", pb.ListLedgerRequest, pb.ListLedgerResponse)
_BOARD = _Method("Leaderboard", pb.LeaderboardRequest, pb.LeaderboardResponse)
_RANK = _Method("GetRank", pb.GetRankRequest, pb.GetRankResponse)
_WINNERS = _Method("ListWinners", pb.ListWinnersRequest, pb.ListWinnersResponse)
_REWARDS = _Method("ListRewards", pb.ListRewardsRequest, pb.ListRewardsResponse)
# Idempotent by (tenant_id, request_id); the server refuses an empty one.
_REDEEM = _Method("Redeem", pb.RedeemRequest, pb.RedeemResponse, _has_request_id)
_REDEMPTIONS = _Method("ListRedemptions", pb.ListRedemptionsRequest, pb.ListRedemptionsResponse)
_PROGRESS = _Method("GetProgress", pb.GetProgressRequest, pb.Progress)
_THANKS = _Method("ListThanks", pb.ListThanksRequest, pb.ListThanksResponse)
_STREAM_PATH = f"/{SERVICE}/StreamActivities"


class _Common:
    """What both clients share: defaults, event building, chunking, policies."""

    def __init__(
        self,
        *,
        tenant_id: str,
        timeout_s: float | None,
        retry: RetryPolicy,
        metadata: Sequence[tuple[str, str]],
        token: str,
        batch_events_max: int,
        request_bytes_max: int,
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        if not 1 <= batch_events_max <= BATCH_EVENTS_MAX:
            raise ValueError(f"batch_events_max must be 1..{BATCH_EVENTS_MAX}")
        self.tenant_id = tenant_id
        self.timeout_s = timeout_s
        self.retry = retry
        # The API token goes as `authorization: Bearer` with every call.
        self.metadata = tuple(metadata) + ((("authorization", f"Bearer {token}"),) if token else ())
        self.batch_events_max = batch_events_max
        self.request_bytes_max = request_bytes_max
        self._rpcs: dict[str, Any] = {}

    def event(
        self, *, user_id: str, action: str, **fields: Unpack[EventFields]
    ) -> pb.ActivityEvent:
        """An ActivityEvent from keyword arguments, in the client's tenant by default."""
        fields.setdefault("tenant_id", self.tenant_id)
        return make_event(user_id=user_id, action=action, **fields)

    def _tenant(self, tenant_id: str | None) -> str:
        tenant = tenant_id or self.tenant_id
        if not tenant:
            raise ValueError("tenant_id is required (or give the client a default tenant_id)")
        return tenant

    def _deadline(self, timeout_s: float | None) -> float | None:
        return self.timeout_s if timeout_s is None else timeout_s

    def _policy(
        self, method: _Method[Req, Resp], request: Req, retry: RetryPolicy | None
    ) -> RetryPolicy:
        return (retry or self.retry) if method.idempotent(request) else NO_RETRY

    def _chunks(
        self, events: Iterable[pb.ActivityEvent], batch_size: int | None
    ) -> list[pb.RecordActivitiesRequest]:
        size = batch_size or self.batch_events_max
        if not 1 <= size <= self.batch_events_max:
            raise ValueError(f"batch_size must be 1..{self.batch_events_max}, got {size}")
        # Ids are fixed here, once: every attempt of every chunk resends them.
        listed = [ensure_event_id(e) for e in events]
        return [
            pb.RecordActivitiesRequest(events=chunk)
            for chunk in chunk_events(listed, size, self.request_bytes_max)
        ]

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return self.metadata or None


# --------------------------------------------------------------------------
# asyncio


class PointsClient(_Common):
    """The asyncio client. `target` is an address ("host:port", "dns:///...",
    "unix:...") or an open `grpc.aio.Channel`, which `close()` leaves open.

        async with PointsClient("127.0.0.1:50051", tenant_id="acme") as points:
            result = await points.record(event_id=msg.id, user_id=msg.sender,
                                         action="message.text", group_id=msg.group)

    `timeout_s` is each attempt's gRPC deadline, which the server sees too
    (None: none); a call's own `timeout_s=` overrides it. `retry` is the
    policy of the calls that are safe to repeat (a call's `retry=` overrides
    it). `token` (an API token, docs/security.md) and `metadata` go with
    every call."""

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        tenant_id: str = "",
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        metadata: Sequence[tuple[str, str]] = (),
        token: str = "",
        batch_events_max: int = BATCH_EVENTS_MAX,
        request_bytes_max: int = REQUEST_BYTES_MAX,
    ) -> None:
        super().__init__(
            tenant_id=tenant_id, timeout_s=timeout_s, retry=retry, metadata=metadata, token=token,
            batch_events_max=batch_events_max, request_bytes_max=request_bytes_max,
        )  # fmt: skip
        self._owns_channel = isinstance(target, str)
        if isinstance(target, str):
            self.channel = (
                grpc.aio.secure_channel(target, credentials, options, interceptors=interceptors)
                if credentials is not None
                else grpc.aio.insecure_channel(target, options, interceptors=interceptors)
            )
        elif credentials is not None or options or interceptors:
            raise ValueError("credentials, options and interceptors belong to the channel given")
        else:
            self.channel = target

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close()

    def _rpc(self, method: _Method[Req, Resp]) -> grpc.aio.UnaryUnaryMultiCallable[Req, Resp]:
        rpc = self._rpcs.get(method.name)
        if rpc is None:
            rpc = self._rpcs[method.name] = self.channel.unary_unary(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
        return cast("grpc.aio.UnaryUnaryMultiCallable[Req, Resp]", rpc)

    async def _call(
        self,
        method: _Method[Req, Resp],
        request: Req,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Resp:
        policy = self._policy(method, request, retry)
        rpc, deadline, metadata = self._rpc(method), self._deadline(timeout_s), self._metadata()
        attempt, started = 1, time.monotonic()
        while True:
            try:
                return await rpc(request, timeout=deadline, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if not policy.retries(code, attempt, time.monotonic() - started):
                    raise
            await asyncio.sleep(policy.backoff_s(attempt, code=code))
            attempt += 1

    # Ingest ----------------------------------------------------------------

    async def record_activity(
        self,
        event: pb.ActivityEvent,
        *,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> pb.ActivityResult:
        """RecordActivity. An event without an id gets one first (in place)."""
        return await self._call(_RECORD, ensure_event_id(event), timeout_s, retry)

    async def record(
        self,
        *,
        event_id: str,
        user_id: str,
        action: str,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[EventDetails],
    ) -> pb.ActivityResult:
        """Record one event given as keyword arguments. `event_id` is required
        here: after a failure the caller resends with that same id, which is
        what makes a resend safe (`record_activity` takes an event into which
        a generated id is written, for the caller to keep)."""
        event = self.event(event_id=event_id, user_id=user_id, action=action, **fields)
        return await self._call(_RECORD, event, timeout_s, retry)

    async def record_many(
        self,
        events: Iterable[pb.ActivityEvent],
        *,
        batch_size: int | None = None,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> list[pb.ActivityResult]:
        """RecordActivities in consecutive calls of at most `batch_size` events
        (default and maximum: `batch_events_max`) and `request_bytes_max`
        bytes; the results in the order of `events`. A call that fails for
        good raises: sending all of `events` again is safe (what was recorded
        comes back DUPLICATE)."""
        results: list[pb.ActivityResult] = []
        for request in self._chunks(events, batch_size):
            response = await self._call(_RECORD_MANY, request, timeout_s, retry)
            results.extend(response.results)
        return results

    def stream(
        self,
        events: Iterable[pb.ActivityEvent] | AsyncIterable[pb.ActivityEvent] | None = None,
        *,
        max_inflight: int = 1000,
        retry: RetryPolicy | None = None,
    ) -> ActivityStream:
        """StreamActivities as an async context manager that sends events and
        yields one result per event, in the order sent (see ActivityStream).
        With `events`, those are sent and the stream ends after them."""
        return ActivityStream(
            self._open_stream, retry=retry or self.retry, max_inflight=max_inflight, events=events
        )

    def _open_stream(
        self, requests: AsyncIterator[pb.ActivityEvent]
    ) -> grpc.aio.StreamStreamCall[pb.ActivityEvent, pb.ActivityResult]:
        rpc = self._rpcs.get(_STREAM_PATH)
        if rpc is None:
            rpc = self._rpcs[_STREAM_PATH] = self.channel.stream_stream(
                _STREAM_PATH,
                request_serializer=pb.ActivityEvent.SerializeToString,
                response_deserializer=pb.ActivityResult.FromString,
            )
        # A stream is long-lived: no deadline.
        typed = cast("grpc.aio.StreamStreamMultiCallable[pb.ActivityEvent, pb.ActivityResult]", rpc)
        return typed(requests, metadata=self._metadata())

    # Reads and redemption --------------------------------------------------

    async def get_balance(
        self, user_id: str, *, tenant_id: str | None = None, timeout_s: float | None = None
    ) -> pb.Balance:
        request = pb.GetBalanceRequest(tenant_id=self._tenant(tenant_id), user_id=user_id)
        return await self._call(_BALANCE, request, timeout_s)

    async def list_ledger(
        self, request: pb.ListLedgerRequest, *, timeout_s: float | None = None
    ) -> pb.ListLedgerResponse:
        return await self._call(_LEDGER, request, timeout_s)

    async def leaderboard(
        self, request: pb.LeaderboardRequest, *, timeout_s: float | None = None
    ) -> pb.LeaderboardResponse:
        return await self._call(_BOARD, request, timeout_s)

    async def get_rank(
        self, request: pb.GetRankRequest, *, timeout_s: float | None = None
    ) -> pb.GetRankResponse:
        return await self._call(_RANK, request, timeout_s)

    async def list_winners(
        self, request: pb.ListWinnersRequest, *, timeout_s: float | None = None
    ) -> pb.ListWinnersResponse:
        return await self._call(_WINNERS, request, timeout_s)

    async def list_rewards(
        self, request: pb.ListRewardsRequest, *, timeout_s: float | None = None
    ) -> pb.ListRewardsResponse:
        return await self._call(_REWARDS, request, timeout_s)

    async def redeem(
        self,
        request: pb.RedeemRequest,
        *,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> pb.RedeemResponse:
        """Redeem; retried with the same `request_id`, never with a new one
        (a new one would be a second redemption)."""
        return await self._call(_REDEEM, request, timeout_s, retry)

    async def list_redemptions(
        self, request: pb.ListRedemptionsRequest, *, timeout_s: float | None = None
    ) -> pb.ListRedemptionsResponse:
        return await self._call(_REDEMPTIONS, request, timeout_s)

    async def get_progress(
        self, user_id: str, *, tenant_id: str | None = None, timeout_s: float | None = None
    ) -> pb.Progress:
        """Level, tasks, streak and badges of a user."""
        request = pb.GetProgressRequest(tenant_id=self._tenant(tenant_id), user_id=user_id)
        return await self._call(_PROGRESS, request, timeout_s)

    async def list_thanks(
        self, request: pb.ListThanksRequest, *, timeout_s: float | None = None
    ) -> pb.ListThanksResponse:
        return await self._call(_THANKS, request, timeout_s)


# --------------------------------------------------------------------------
# Blocking


class SyncPointsClient(_Common):
    """The blocking client, for threaded servers: the same calls, defaults and
    retries as PointsClient, without streams and the batcher (which need an
    event loop; `record_many` is the blocking way to batch). Thread-safe:
    share one per process. `target`: an address or an open `grpc.Channel`."""

    def __init__(
        self,
        target: str | grpc.Channel,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        tenant_id: str = "",
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        metadata: Sequence[tuple[str, str]] = (),
        token: str = "",
        batch_events_max: int = BATCH_EVENTS_MAX,
        request_bytes_max: int = REQUEST_BYTES_MAX,
    ) -> None:
        super().__init__(
            tenant_id=tenant_id, timeout_s=timeout_s, retry=retry, metadata=metadata, token=token,
            batch_events_max=batch_events_max, request_bytes_max=request_bytes_max,
        )  # fmt: skip
        self._owns_channel = isinstance(target, str)
        if isinstance(target, str):
            self.channel = (
                grpc.secure_channel(target, credentials, options)
                if credentials is not None
                else grpc.insecure_channel(target, options)
            )
        elif credentials is not None or options:
            raise ValueError("credentials and options belong to the channel given")
        else:
            self.channel = target

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def _rpc(self, method: _Method[Req, Resp]) -> grpc.UnaryUnaryMultiCallable[Req, Resp]:
        rpc = self._rpcs.get(method.name)
        if rpc is None:
            rpc = self._rpcs[method.name] = self.channel.unary_unary(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
        return cast("grpc.UnaryUnaryMultiCallable[Req, Resp]", rpc)

    def _call(
        self,
        method: _Method[Req, Resp],
        request: Req,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Resp:
        policy = self._policy(method, request, retry)
        rpc, deadline, metadata = self._rpc(method), self._deadline(timeout_s), self._metadata()
        attempt, started = 1, time.monotonic()
        while True:
            try:
                return rpc(request, timeout=deadline, metadata=metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                if not policy.retries(code, attempt, time.monotonic() - started):
                    raise
            time.sleep(policy.backoff_s(attempt, code=code))
            attempt += 1

    def record_activity(
        self,
        event: pb.ActivityEvent,
        *,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> pb.ActivityResult:
        return self._call(_RECORD, ensure_event_id(event), timeout_s, retry)

    def record(
        self,
        *,
        event_id: str,
        user_id: str,
        action: str,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[EventDetails],
    ) -> pb.ActivityResult:
        """As PointsClient.record: `event_id` required, so a resend is safe."""
        event = self.event(event_id=event_id, user_id=user_id, action=action, **fields)
        return self._call(_RECORD, event, timeout_s, retry)

    def record_many(
        self,
        events: Iterable[pb.ActivityEvent],
        *,
        batch_size: int | None = None,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> list[pb.ActivityResult]:
        results: list[pb.ActivityResult] = []
        for request in self._chunks(events, batch_size):
            results.extend(self._call(_RECORD_MANY, request, timeout_s, retry).results)
        return results

    def get_balance(
        self, user_id: str, *, tenant_id: str | None = None, timeout_s: float | None = None
    ) -> pb.Balance:
        request = pb.GetBalanceRequest(tenant_id=self._tenant(tenant_id), user_id=user_id)
        return self._call(_BALANCE, request, timeout_s)

    def list_ledger(
        self, request: pb.ListLedgerRequest, *, timeout_s: float | None = None
    ) -> pb.ListLedgerResponse:
        return self._call(_LEDGER, request, timeout_s)

    def leaderboard(
        self, request: pb.LeaderboardRequest, *, timeout_s: float | None = None
    ) -> pb.LeaderboardResponse:
        return self._call(_BOARD, request, timeout_s)

    def get_rank(
        self, request: pb.GetRankRequest, *, timeout_s: float | None = None
    ) -> pb.GetRankResponse:
        return self._call(_RANK, request, timeout_s)

    def list_winners(
        self, request: pb.ListWinnersRequest, *, timeout_s: float | None = None
    ) -> pb.ListWinnersResponse:
        return self._call(_WINNERS, request, timeout_s)

    def list_rewards(
        self, request: pb.ListRewardsRequest, *, timeout_s: float | None = None
    ) -> pb.ListRewardsResponse:
        return self._call(_REWARDS, request, timeout_s)

    def redeem(
        self,
        request: pb.RedeemRequest,
        *,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> pb.RedeemResponse:
        return self._call(_REDEEM, request, timeout_s, retry)

    def list_redemptions(
        self, request: pb.ListRedemptionsRequest, *, timeout_s: float | None = None
    ) -> pb.ListRedemptionsResponse:
        return self._call(_REDEMPTIONS, request, timeout_s)

    def get_progress(
        self, user_id: str, *, tenant_id: str | None = None, timeout_s: float | None = None
    ) -> pb.Progress:
        request = pb.GetProgressRequest(tenant_id=self._tenant(tenant_id), user_id=user_id)
        return self._call(_PROGRESS, request, timeout_s)

    def list_thanks(
        self, request: pb.ListThanksRequest, *, timeout_s: float | None = None
    ) -> pb.ListThanksResponse:
        return self._call(_THANKS, request, timeout_s)
