"""points.v1.PointsService handlers: validate, call, map errors. Nothing else.

Every error goes through `service.errors.status_of`; an unexpected one is
logged with its traceback and answered INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from pointsd.service import queries
from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.app import App
from pointsd.service.auth import current_caller
from pointsd.service.boards import resolve_board
from pointsd.service.convert import (
    add_results,
    board_entry_to_pb,
    entry_to_pb,
    item_to_pb,
    progress_to_pb,
    redemption_to_pb,
    result_to_pb,
    reward_to_pb,
    thanks_to_pb,
    winners_to_pb,
)
from pointsd.service.domain import Outcome, Period
from pointsd.service.errors import AlreadyExists, InvalidArgument, NotFound
from pointsd.service.ingest import EventResult
from pointsd.service.metrics import EventMeter
from pointsd.service.progress import progress
from pointsd.service.rpc import Ctx, abort, stream, unary
from pointsd.service.validation import (
    InvalidField,
    check_id,
    check_tenant,
    event_from_pb,
    page_size,
    quantity_of,
)

__all__ = ["PointsServicer"]

log = logging.getLogger("pointsd.rpc")

BOARD_OFFSET_MAX = 10_000
BOARD_LIMIT_MAX = 1000
NEIGHBOURS_MAX = 50
WINNER_PAGE_MAX = 100
_STREAM = "/points.v1.PointsService/StreamActivities"


class PointsServicer(pb_grpc.PointsServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app
        # Actions no rule knows (caller input) are counted as one label value.
        self._events = EventMeter(
            a.key for t in app.rules.tenants.values() for a in t.actions.values()
        )

    @unary
    async def ListRewards(
        self, request: pb.ListRewardsRequest, context: Ctx
    ) -> pb.ListRewardsResponse:
        check_tenant(self.app.engine, request.tenant_id)
        check_id("user_id", request.user_id, required=False)
        found = await queries.rewards(self.app, request.tenant_id, request.user_id)
        return pb.ListRewardsResponse(rewards=[reward_to_pb(i, left) for i, left in found])

    @unary
    async def Redeem(self, request: pb.RedeemRequest, context: Ctx) -> pb.RedeemResponse:
        check_tenant(self.app.engine, request.tenant_id)
        user_id = check_id("user_id", request.user_id)
        item_id = check_id("item_id", request.item_id)
        request_id = check_id("request_id", request.request_id)
        quantity = quantity_of(request.quantity)
        r = await self.app.redemptions.redeem(
            request.tenant_id, user_id, item_id, quantity, request_id
        )
        item = await queries.item(self.app, request.tenant_id, item_id)
        redemption = redemption_to_pb(r)
        return pb.RedeemResponse(
            redemption_id=r.redemption_id,
            status=redemption.status,
            points_spent=r.points,
            balance=r.balance_after or 0,
            item=item_to_pb(item) if item else None,
            redemption=redemption,
        )

    @unary
    async def ListRedemptions(
        self, request: pb.ListRedemptionsRequest, context: Ctx
    ) -> pb.ListRedemptionsResponse:
        check_tenant(self.app.engine, request.tenant_id)
        user_id = check_id("user_id", request.user_id)
        page = await queries.redemptions(
            self.app, request.tenant_id, user_id, "", page_size(request.page_size),
            request.page_token,
        )  # fmt: skip
        return pb.ListRedemptionsResponse(
            redemptions=[redemption_to_pb(r) for r in page.rows], next_page_token=page.next_token
        )

    @unary
    async def GetProgress(self, request: pb.GetProgressRequest, context: Ctx) -> pb.Progress:
        tenant = check_tenant(self.app.engine, request.tenant_id)
        user_id = check_id("user_id", request.user_id)
        return progress_to_pb(await progress(self.app, tenant, user_id))

    @unary
    async def ListThanks(
        self, request: pb.ListThanksRequest, context: Ctx
    ) -> pb.ListThanksResponse:
        check_tenant(self.app.engine, request.tenant_id)
        department_id = check_id("department_id", request.department_id, required=False)
        user_id = check_id("user_id", request.user_id, required=False)
        if department_id and user_id:
            raise InvalidField(
                "user_id", "cannot be combined with department_id: filter by one of them"
            )
        size_max = self.app.settings.ledger_page_size_max
        size = request.page_size or 50
        if not 1 <= size <= size_max:
            raise InvalidField("page_size", f"must be between 1 and {size_max}, got {size}")
        page = await queries.thanks(
            self.app, request.tenant_id, department_id, user_id, size, request.page_token
        )
        return pb.ListThanksResponse(
            cards=[thanks_to_pb(r) for r in page.rows], next_page_token=page.next_token
        )

    def _now_ms(self) -> int:
        return self.app.clock()

    def _count(self, actions: Sequence[str], results: list[EventResult]) -> None:
        self._events.count(actions, results)

    @unary
    async def RecordActivity(self, request: pb.ActivityEvent, context: Ctx) -> pb.ActivityResult:
        event = event_from_pb(request, self._now_ms(), self.app.limits)
        results = await self.app.ingestor.record([event])
        self._count([event.action], results)
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
        response = pb.RecordActivitiesResponse()
        add_results(response.results, await self._record_many(request.events), request.events)
        return response

    async def _record_many(self, messages: Sequence[pb.ActivityEvent]) -> list[EventResult]:
        """Validate and record events; an invalid one gets its REJECTED result."""
        now_ms = self._now_ms()
        items: list[Any] = []
        # Read off each event once: every read of a protobuf field makes a
        # new object.
        actions: list[str] = []
        limits = self.app.limits
        for msg in messages:
            try:
                event = event_from_pb(msg, now_ms, limits)
            except InvalidField as exc:
                items.append(exc)
                actions.append(msg.action)
            else:
                items.append(event)
                actions.append(event.action)
        results = await self.app.ingestor.record(items)
        self._count(actions, results)
        return results

    @stream
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
        gate, caller = self.app.gate, current_caller()
        read_task = asyncio.create_task(reader(request_iterator, inbox))
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
                # Before anything of the batch is applied: a foreign event or
                # a token revoked mid-stream ends the stream here.
                caller = gate.check_events(caller, context, _STREAM, batch)
                for i, result in enumerate(await self._record_many(batch)):
                    # The event's own id is read only for a result without one.
                    yield result_to_pb(result, "" if result.event_id else batch[i].event_id)
            await read_task  # re-raise a failure of the request stream
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort(context, "StreamActivities", exc)
        finally:
            read_task.cancel()

    @unary
    async def GetBalance(self, request: pb.GetBalanceRequest, context: Ctx) -> pb.Balance:
        tenant = check_tenant(self.app.engine, request.tenant_id)
        user_id = check_id("user_id", request.user_id)
        now = await queries.balance(self.app, tenant, user_id)
        return pb.Balance(
            tenant_id=tenant.tenant_id,
            user_id=user_id,
            available=now.view.available,
            lifetime_earned=now.view.earned,
            spent=now.view.spent,
            earned_today=now.view.earned_in_period,
            day=now.day,
            held=now.view.held,
        )

    @unary
    async def ListLedger(
        self, request: pb.ListLedgerRequest, context: Ctx
    ) -> pb.ListLedgerResponse:
        check_tenant(self.app.engine, request.tenant_id)
        user_id = check_id("user_id", request.user_id)
        size_max = self.app.settings.ledger_page_size_max
        size = request.page_size or 50
        if not 1 <= size <= size_max:
            raise InvalidField("page_size", f"must be between 1 and {size_max}, got {size}")
        page = await queries.ledger(self.app, request.tenant_id, user_id, size, request.page_token)
        return pb.ListLedgerResponse(
            entries=[entry_to_pb(r) for r in page.rows], next_page_token=page.next_token
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
        ranking = await queries.top(self.app, q, request.offset, limit)
        return pb.LeaderboardResponse(
            entries=[board_entry_to_pb(e) for e in ranking.entries],
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
        found = await queries.around(self.app, q, member, request.neighbours)
        if found is None:
            raise NotFound(
                f"member_id: {member!r} has no score on board {q.board.name!r} in "
                f"{q.ref.key} ({'tenant' if q.ref.scope == 't' else q.ref.scope})"
            )
        return pb.GetRankResponse(
            rank=found.entry.rank,
            score=found.entry.score,
            total_members=found.total,
            above=[board_entry_to_pb(e) for e in found.above],
            below=[board_entry_to_pb(e) for e in found.below],
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
        page = await queries.winners(self.app, q, request.period_key, size, request.page_token)
        return pb.ListWinnersResponse(
            periods=[winners_to_pb(r, request.period, q.scope_type, q.scope_id) for r in page.rows],
            next_page_token=page.next_token,
        )


# Named `reader`: tests/test_ingest_edges.py finds leftover reader tasks by
# their coroutine's name.
async def reader(
    request_iterator: AsyncIterator[pb.ActivityEvent],
    inbox: asyncio.Queue[pb.ActivityEvent | None],
) -> None:
    """StreamActivities' reader task: queue the request stream's events, then
    None as the end marker."""
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
