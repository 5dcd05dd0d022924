"""points.v1.PointsService handlers: validate, call, map errors. Nothing else.

Every error goes through `service.errors.status_of`; an unexpected one is
logged with its traceback and answered INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from service import rewards
from service.api.points.v1 import points_pb2 as pb
from service.api.points.v1 import points_pb2_grpc as pb_grpc
from service.app import App
from service.boards import resolve_board
from service.domain import TIME_MS_MAX, Outcome, Period
from service.errors import AlreadyExists, InvalidArgument, NotFound
from service.ingest import EventResult
from service.metrics import EVENTS
from service.rpc import Ctx, abort, unary
from service.rules import EARNED
from service.validation import InvalidField, check_id, event_from_pb
from storage.entries import KIND_ADJUST, KIND_AWARD, KIND_REFUND, KIND_SPEND, LedgerRow
from storage.redis.boards import BoardEntry

__all__ = ["PointsServicer"]

log = logging.getLogger("pointsd.rpc")

_ROLES = {"a": pb.ACTOR, "t": pb.TARGET}
BOARD_OFFSET_MAX = 10_000
BOARD_LIMIT_MAX = 1000
NEIGHBOURS_MAX = 50
WINNER_PAGE_MAX = 100
# Resolved once: a labels() lookup per event costs more than the increment.
_EVENTS_BY_OUTCOME = {o: EVENTS.labels(o.name) for o in Outcome}
_KINDS = {KIND_AWARD: pb.AWARD, KIND_SPEND: pb.SPEND, KIND_REFUND: pb.REFUND,
          KIND_ADJUST: pb.ADJUSTMENT}  # fmt: skip


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


async def decode_ledger_token(
    app: App, token: str, tenant_id: str, user_id: str
) -> tuple[int, int]:
    cursor = await app.tokens.decode("ListLedger", (tenant_id, user_id), token)
    try:
        at, row = int(cursor["o"]), int(cursor["i"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise InvalidField("page_token", "is not a token ListLedger returned") from None
    if not (0 <= at <= TIME_MS_MAX and 0 <= row < 2**63):
        raise InvalidField("page_token", "is not a token ListLedger returned")
    return at, row


class PointsServicer(pb_grpc.PointsServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    @unary
    async def ListRewards(
        self, request: pb.ListRewardsRequest, context: Ctx
    ) -> pb.ListRewardsResponse:
        rewards.check_tenant(self.app, request.tenant_id)
        check_id("user_id", request.user_id, required=False)
        now = datetime.fromtimestamp(self._now_ms() / 1000, tz=UTC)
        items = [
            i for i in await self.app.stores.catalog.list_items(
                request.tenant_id, include_disabled=False)
            if not i.inactive_reason(now) and (i.stock is None or i.stock > 0)
        ]  # fmt: skip
        used: dict[str, int] = {}
        if request.user_id:
            keys = {
                i.item_id: key
                for i in items
                if (key := self.app.redemptions.limit_period_key(request.tenant_id, i))
            }
            used = await self.app.stores.catalog.used_quantities(
                request.tenant_id, request.user_id, keys
            )
        return pb.ListRewardsResponse(
            rewards=[
                pb.Reward(
                    item=rewards.item_to_pb(i),
                    **(rewards.reward_remaining(i, used) if request.user_id else {}),
                )
                for i in items
            ]
        )

    @unary
    async def Redeem(self, request: pb.RedeemRequest, context: Ctx) -> pb.RedeemResponse:
        rewards.check_tenant(self.app, request.tenant_id)
        user_id = check_id("user_id", request.user_id)
        item_id = check_id("item_id", request.item_id)
        request_id = check_id("request_id", request.request_id)
        quantity = rewards.quantity_of(request.quantity)
        r = await self.app.redemptions.redeem(
            request.tenant_id, user_id, item_id, quantity, request_id
        )
        item = await self.app.stores.catalog.get_item(request.tenant_id, item_id)
        return pb.RedeemResponse(
            redemption_id=r.redemption_id,
            status=rewards.redemption_to_pb(r).status,
            points_spent=r.points,
            balance=r.balance_after or 0,
            item=rewards.item_to_pb(item) if item else None,
            redemption=rewards.redemption_to_pb(r),
        )

    @unary
    async def ListRedemptions(
        self, request: pb.ListRedemptionsRequest, context: Ctx
    ) -> pb.ListRedemptionsResponse:
        rewards.check_tenant(self.app, request.tenant_id)
        user_id = check_id("user_id", request.user_id)
        return await rewards.list_redemptions(
            self.app, request.tenant_id, user_id, "", rewards.page_size(request.page_size),
            request.page_token,
        )  # fmt: skip

    def _now_ms(self) -> int:
        return self.app.clock()

    def _tenant(self, tenant_id: str) -> None:
        check_id("tenant_id", tenant_id)
        if self.app.engine.tenant(tenant_id) is None:
            raise InvalidField("tenant_id", f"unknown tenant {tenant_id!r}")

    @staticmethod
    def _count(results: list[EventResult]) -> None:
        for r in results:
            _EVENTS_BY_OUTCOME[r.outcome].inc()

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
        size, size_max = request.ByteSize(), self.app.settings.request_bytes_max
        if size > size_max:
            raise InvalidField("events", f"request is {size} bytes; at most {size_max} per call")
        limit = self.app.settings.batch_events_max
        if len(request.events) > limit:
            raise InvalidField(
                "events", f"has {len(request.events)} events; at most {limit} per call"
            )
        return pb.RecordActivitiesResponse(results=await self._record_many(request.events))

    async def _record_many(self, messages: Sequence[pb.ActivityEvent]) -> list[pb.ActivityResult]:
        """Validate and record events; an invalid one gets its REJECTED result."""
        now_ms = self._now_ms()
        items: list[Any] = []
        for msg in messages:
            try:
                items.append(event_from_pb(msg, now_ms, self.app.limits))
            except InvalidField as exc:
                items.append(exc)
        results = await self.app.ingestor.record(items)
        self._count(results)
        out = [result_to_pb(r) for r in results]
        for msg, r in zip(messages, out, strict=True):
            if not r.event_id:  # a rejected event keeps the id it was sent with
                r.event_id = msg.event_id
        return out

    async def StreamActivities(
        self, request_iterator: AsyncIterator[pb.ActivityEvent], context: Ctx
    ) -> AsyncIterator[pb.ActivityResult]:
        # A reader task queues incoming events; this loop records whatever has
        # queued up as one batch (coalesced with other callers), writes its
        # results in order, and repeats. At low rates a batch is one event; at
        # peaks batches grow. The queue bounds how far reading runs ahead.
        inbox: asyncio.Queue[pb.ActivityEvent | None] = asyncio.Queue(
            maxsize=self.app.settings.stream_inflight_max
        )
        batch_max = self.app.settings.batch_events_max

        async def reader() -> None:
            # The end marker only after the request stream ended or failed: a
            # cancelled reader must not block on a full queue nobody reads.
            count = 0
            try:
                async for msg in request_iterator:
                    count += 1
                    await inbox.put(msg)
            except asyncio.CancelledError:
                raise
            except DecodeError:
                await inbox.put(None)
                raise InvalidField(
                    "events", f"stream message #{count + 1} is not a valid ActivityEvent"
                ) from None
            except BaseException:
                await inbox.put(None)
                raise
            await inbox.put(None)

        read_task = asyncio.create_task(reader())
        try:
            ended = False
            while not ended:
                first = await inbox.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < batch_max and not inbox.empty():
                    msg = inbox.get_nowait()
                    if msg is None:
                        ended = True
                        break
                    batch.append(msg)
                for result in await self._record_many(batch):
                    yield result
            await read_task  # re-raise a failure of the request stream
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort(context, "StreamActivities", exc)
        finally:
            read_task.cancel()

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
            await decode_ledger_token(self.app, request.page_token, request.tenant_id, user_id)
            if request.page_token
            else None
        )
        page = await self.app.stores.ledger.page(request.tenant_id, user_id, size, cursor)
        return pb.ListLedgerResponse(
            entries=[entry_to_pb(r) for r in page.rows],
            next_page_token=(
                self.app.tokens.encode(
                    "ListLedger",
                    (request.tenant_id, user_id),
                    {"o": page.next_cursor[0], "i": page.next_cursor[1]},
                )
                if page.next_cursor
                else ""
            ),
        )

    @unary
    async def Leaderboard(
        self, request: pb.LeaderboardRequest, context: Ctx
    ) -> pb.LeaderboardResponse:
        q = resolve_board(
            self.app.engine, request.tenant_id, request.board, request.period,
            request.period_offset, request.period_key, request.scope_id, request.scope_type,
            self._now_ms(),
        )  # fmt: skip
        if not 0 <= request.offset <= BOARD_OFFSET_MAX:
            raise InvalidField("offset", f"must be between 0 and {BOARD_OFFSET_MAX}")
        limit = request.limit or 10
        if not 1 <= limit <= BOARD_LIMIT_MAX:
            raise InvalidField("limit", f"must be between 1 and {BOARD_LIMIT_MAX}, got {limit}")
        ranking = await self.app.stores.boards.top(
            q.tenant.tenant_id, q.ref, request.offset, limit, q.summed
        )
        return pb.LeaderboardResponse(
            entries=[_board_entry(e) for e in ranking.entries],
            total_members=ranking.total,
            period_key=q.ref.key,
        )

    @unary
    async def GetRank(self, request: pb.GetRankRequest, context: Ctx) -> pb.GetRankResponse:
        q = resolve_board(
            self.app.engine, request.tenant_id, request.board, request.period,
            request.period_offset, request.period_key, request.scope_id, request.scope_type,
            self._now_ms(),
        )  # fmt: skip
        member = check_id("member_id", request.member_id)
        if not 0 <= request.neighbours <= NEIGHBOURS_MAX:
            raise InvalidField("neighbours", f"must be between 0 and {NEIGHBOURS_MAX}")
        around = await self.app.stores.boards.around(
            q.tenant.tenant_id, q.ref, member, request.neighbours, q.summed
        )
        if around is None:
            raise NotFound(
                f"member_id: {member!r} has no score on board {q.board.name!r} in "
                f"{q.ref.key} ({'tenant' if q.ref.scope == 't' else q.ref.scope})"
            )
        return pb.GetRankResponse(
            rank=around.entry.rank,
            score=around.entry.score,
            total_members=around.total,
            above=[_board_entry(e) for e in around.above],
            below=[_board_entry(e) for e in around.below],
            period_key=q.ref.key,
        )

    @unary
    async def ListWinners(
        self, request: pb.ListWinnersRequest, context: Ctx
    ) -> pb.ListWinnersResponse:
        q = resolve_board(
            self.app.engine, request.tenant_id, request.board, request.period, 0,
            request.period_key, request.scope_id, request.scope_type, self._now_ms(),
            periods=(Period.WEEK, Period.MONTH),
        )  # fmt: skip
        size = request.page_size or 10
        if not 1 <= size <= WINNER_PAGE_MAX:
            raise InvalidField("page_size", f"must be between 1 and {WINNER_PAGE_MAX}, got {size}")
        query = (q.tenant.tenant_id, q.board.name, q.ref.kind.value, q.ref.scope)
        before = ""
        if request.page_token:
            cursor = await self.app.tokens.decode("ListWinners", query, request.page_token)
            key = cursor.get("k")
            if not isinstance(key, str):
                raise InvalidField("page_token", "is not a token ListWinners returned")
            before = key
        records = await self.app.stores.hall_of_fame.list(
            q.tenant.tenant_id, q.board.name, q.ref.kind.value, q.ref.scope,
            only_key=request.period_key, before_key=before, limit=size + 1,
        )  # fmt: skip
        more = len(records) > size
        records = records[:size]
        return pb.ListWinnersResponse(
            periods=[
                pb.WinnersPeriod(
                    board=r.board,
                    period=request.period,
                    period_key=r.period_key,
                    scope_type=q.scope_type,  # type: ignore[arg-type]
                    scope_id=q.scope_id,
                    winners=[
                        pb.LeaderboardEntry(rank=w.rank, member_id=w.member_id, score=w.score)
                        for w in r.winners
                    ],
                    recorded_at=_timestamp(int(r.recorded_at.timestamp() * 1000)),
                )
                for r in records
            ],
            next_page_token=(
                self.app.tokens.encode("ListWinners", query, {"k": records[-1].period_key})
                if more
                else ""
            ),
        )


def _board_entry(e: BoardEntry) -> pb.LeaderboardEntry:
    return pb.LeaderboardEntry(rank=e.rank, member_id=e.member, score=e.score)
