"""The hot path: apply credit operations with award.lua, coalesced.

Concurrent callers (unary RPCs, batches, streams) enqueue operations; a
dispatcher sends whatever is queued as one pipelined round trip of Lua calls,
one call per (tenant, shard) chunk. While `inflight_max` round trips are out,
new operations wait and join the next one (group commit). When fewer than
`coalesce_ops` operations are queued, the dispatcher waits up to
`coalesce_us` for more (unless requests are sparse: then it goes at once):
one RPC per event then shares a round trip with its neighbours instead of
paying one each.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pointsd.service.domain import CreditOp, CreditResult
from pointsd.storage.keys import Shard, Topology
from pointsd.storage.redis.client import RedisClient
from pointsd.storage.redis.codec import (
    APPLY,
    RESTORE,
    BoardNames,
    CallEncoder,
    RestoreOp,
    decode_results,
)
from pointsd.storage.redis.scripts import Call, LuaScript

__all__ = ["AwardObserver", "AwardStore", "RestoreOp"]

# Told of each successful round trip: its seconds and the operations of each
# of its award.lua calls (metrics; the service injects it: storage imports
# nothing of the service).
AwardObserver = Callable[[float, Sequence[int]], None]


@dataclass(slots=True)
class _Request:
    """One caller's operations; may be split over several round trips."""

    ops: Sequence[CreditOp]
    future: asyncio.Future[list[CreditResult]]
    results: list[CreditResult | None] = field(default_factory=list)
    missing: int = 0


class AwardStore:
    def __init__(
        self,
        redis: RedisClient,
        topology: Topology,
        *,
        clock: Callable[[], int],
        outbox_entries_max: int,
        ops_per_call_max: int = 500,
        ops_per_round_trip_max: int = 2000,
        inflight_max: int = 1,
        coalesce_us: int = 0,
        coalesce_ops: int = 64,
    ) -> None:
        self.redis = redis
        self.topology = topology
        # The service clock (ms): Redis state expires on it (see award.lua).
        self.clock = clock
        self.outbox_entries_max = outbox_entries_max
        self.ops_per_call_max = ops_per_call_max
        self.ops_per_round_trip_max = ops_per_round_trip_max
        self.inflight_max = inflight_max
        self.coalesce_s = coalesce_us / 1e6
        self.coalesce_ops = coalesce_ops
        self.script = LuaScript("pointsd.storage.redis", "award.lua")
        # (request, first op index) slices waiting for a round trip.
        self._queue: deque[tuple[_Request, int]] = deque()
        self._queued_ops = 0
        self._inflight = 0
        self._dispatch_at: asyncio.TimerHandle | asyncio.Handle | None = None
        self._dispatch_soon = False
        self._last_request = 0.0
        self._busy = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.observer: AwardObserver | None = None
        # What encoding the shards' board slots costs, once (codec.BoardNames).
        self._names = BoardNames()

    async def start(self) -> None:
        await self.script.load(self.redis)

    async def apply(self, ops: Sequence[CreditOp]) -> list[CreditResult]:
        """Apply ops (any tenants, any shards); results in op order.

        Raises StorageUnavailable/StorageError for the whole call when Redis
        fails; the ops may or may not have been applied, and re-applying them
        is safe (each is idempotent by event id and role).
        """
        if not ops:
            return []
        request = _Request(ops, asyncio.get_running_loop().create_future())
        request.results = [None] * len(ops)
        request.missing = len(ops)
        self._queue.append((request, 0))
        self._queued_ops += len(ops)
        now = time.monotonic()
        # Waiting for company only pays when company comes: after a quiet spell
        # (no request within the window) go at once.
        self._busy = now - self._last_request < self.coalesce_s
        self._last_request = now
        self._schedule()
        return await request.future

    async def restore(self, ops: Sequence[RestoreOp]) -> list[CreditResult]:
        """Replay ledger entries (rebuild): their programs' state and dedup
        records, no balance moves."""
        return await self._execute(ops, RESTORE)

    async def drain(self) -> None:
        """Wait until every queued operation has been sent and answered."""
        while self._queue or self._tasks:
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            else:
                await asyncio.sleep(0)

    def _schedule(self) -> None:
        if not self._queue or self._inflight >= self.inflight_max:
            return
        loop = asyncio.get_running_loop()
        if self._queued_ops >= self.coalesce_ops or not self.coalesce_s or not self._busy:
            if self._dispatch_soon:
                return
            if self._dispatch_at is not None:
                self._dispatch_at.cancel()
            # call_soon, not now: every handler runnable in this loop tick
            # gets to enqueue first, so they share one round trip.
            self._dispatch_soon = True
            self._dispatch_at = loop.call_soon(self._dispatch)
        elif self._dispatch_at is None:
            # Few operations queued: wait a moment for more (one RPC per event
            # would otherwise pay a Redis round trip each).
            self._dispatch_at = loop.call_later(self.coalesce_s, self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_at = None
        self._dispatch_soon = False
        while self._queue and self._inflight < self.inflight_max:
            room = self.ops_per_round_trip_max
            batch: list[tuple[_Request, int, int]] = []
            while self._queue and room > 0:
                request, start = self._queue.popleft()
                end = min(len(request.ops), start + room)
                batch.append((request, start, end))
                room -= end - start
                self._queued_ops -= end - start
                if end < len(request.ops):
                    self._queue.appendleft((request, end))
            self._inflight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[_Request, int, int]]) -> None:
        slots = [(req, i) for req, start, end in batch for i in range(start, end)]
        try:
            results = await self._execute([req.ops[i] for req, i in slots], APPLY)
        except BaseException as exc:
            # Callers must never wait forever: a cancelled dispatch (loop
            # shutdown) cancels them, any other failure is theirs to see.
            for request, _, _ in batch:
                if not request.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        request.future.cancel()
                    else:
                        request.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (request, i), result in zip(slots, results, strict=True):
                request.results[i] = result
                request.missing -= 1
                if request.missing == 0 and not request.future.done():
                    request.future.set_result(request.results)  # type: ignore[arg-type]
        finally:
            self._inflight -= 1
            self._schedule()

    async def _execute(
        self, items: Sequence[CreditOp | RestoreOp], mode: str
    ) -> list[CreditResult]:
        by_shard: dict[Shard, list[int]] = {}
        user_shard = self.topology.user_shard
        for i, item in enumerate(items):
            op = item.op if isinstance(item, RestoreOp) else item
            by_shard.setdefault(user_shard(op.tenant_id, op.user_id), []).append(i)
        now_s = self.clock() // 1000
        calls: list[Call] = []
        call_ops: list[list[int]] = []
        for shard, indexes in by_shard.items():
            for start in range(0, len(indexes), self.ops_per_call_max):
                chunk = indexes[start : start + self.ops_per_call_max]
                encoder = CallEncoder(shard, mode, now_s, self.outbox_entries_max, self._names)
                for i in chunk:
                    encoder.add(items[i])
                calls.append(encoder.call())
                call_ops.append(chunk)
        started = time.perf_counter()
        replies = await self.script.run_many(self.redis, calls)
        if self.observer is not None:
            self.observer(time.perf_counter() - started, [len(c) for c in call_ops])
        results: list[CreditResult] = [None] * len(items)  # type: ignore[list-item]
        for chunk, reply in zip(call_ops, replies, strict=True):
            for i, result in zip(chunk, decode_results(reply), strict=True):
                results[i] = result
        return results
