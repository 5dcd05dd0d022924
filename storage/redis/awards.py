"""The hot path: apply credit operations with award.lua, coalesced.

Concurrent callers (unary RPCs, batches, streams) enqueue operations; a
dispatcher sends whatever is queued as one pipelined round trip of Lua calls,
one call per (tenant, shard) chunk. While `inflight_max` round trips are out,
new operations wait and join the next one (group commit), so batches grow with
load and a lone call still goes out at once.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.domain import CreditOp, CreditResult, PeriodRef, StoreCode
from storage.entries import encode_award_meta
from storage.keys import Shard, Topology, counter_field
from storage.redis.scripts import Call, LuaScript

__all__ = ["AwardStore", "RestoreOp"]

# Throttle keys outlive the interval by this much, so events that arrive a bit
# late (occurred_at is compared, not arrival time) are still throttled.
_INTERVAL_TTL_MARGIN_MS = 600_000


@dataclass(frozen=True, slots=True)
class RestoreOp:
    """A ledger entry replayed into Redis state by `pointsd rebuild`."""

    op: CreditOp
    points: int
    balance_after: int


@dataclass(slots=True)
class _Queued:
    op: CreditOp
    future: asyncio.Future[CreditResult]


class AwardStore:
    def __init__(
        self,
        redis: Redis,
        topology: Topology,
        *,
        outbox_entries_max: int,
        ops_per_call_max: int = 100,
        ops_per_round_trip_max: int = 2000,
        inflight_max: int = 2,
    ) -> None:
        self.redis = redis
        self.topology = topology
        self.outbox_entries_max = outbox_entries_max
        self.ops_per_call_max = ops_per_call_max
        self.ops_per_round_trip_max = ops_per_round_trip_max
        self.inflight_max = inflight_max
        self.script = LuaScript("storage.redis", "award.lua")
        self._queue: deque[_Queued] = deque()
        self._inflight = 0
        self._dispatch_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

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
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[CreditResult]] = []
        for op in ops:
            future: asyncio.Future[CreditResult] = loop.create_future()
            self._queue.append(_Queued(op, future))
            futures.append(future)
        self._schedule()
        return list(await asyncio.gather(*futures))

    async def restore(self, ops: Sequence[RestoreOp]) -> list[CreditResult]:
        """Replay ledger entries (rebuild): dedup records and counters only."""
        return await self._execute([r.op for r in ops], "restore", list(ops))

    async def drain(self) -> None:
        """Wait until every queued operation has been sent and answered."""
        while self._queue or self._tasks:
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            else:
                await asyncio.sleep(0)

    def _schedule(self) -> None:
        if self._dispatch_scheduled or not self._queue or self._inflight >= self.inflight_max:
            return
        self._dispatch_scheduled = True
        # call_soon, not now: every handler runnable in this loop tick gets to
        # enqueue first, so they share one round trip.
        asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        while self._queue and self._inflight < self.inflight_max:
            n = min(len(self._queue), self.ops_per_round_trip_max)
            batch = [self._queue.popleft() for _ in range(n)]
            self._inflight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Queued]) -> None:
        try:
            results = await self._execute([q.op for q in batch], "apply", None)
        except Exception as exc:
            for q in batch:
                if not q.future.done():
                    q.future.set_exception(exc)
        else:
            for q, result in zip(batch, results, strict=True):
                if not q.future.done():
                    q.future.set_result(result)
        finally:
            self._inflight -= 1
            self._schedule()

    async def _execute(
        self, ops: Sequence[CreditOp], mode: str, restore: list[RestoreOp] | None
    ) -> list[CreditResult]:
        by_shard: dict[Shard, list[int]] = {}
        for i, op in enumerate(ops):
            by_shard.setdefault(self.topology.user_shard(op.tenant_id, op.user_id), []).append(i)
        calls: list[Call] = []
        call_ops: list[list[int]] = []
        for shard, indexes in by_shard.items():
            for start in range(0, len(indexes), self.ops_per_call_max):
                chunk = indexes[start : start + self.ops_per_call_max]
                calls.append(self._encode(shard, ops, chunk, mode, restore))
                call_ops.append(chunk)
        replies = await self.script.run_many(self.redis, calls)
        results: list[CreditResult | None] = [None] * len(ops)
        for chunk, reply in zip(call_ops, replies, strict=True):
            for j, i in enumerate(chunk):
                code, points, balance, limit, original = reply[5 * j : 5 * j + 5]
                results[i] = CreditResult(
                    code=StoreCode(int(code)),
                    points=int(points),
                    balance=int(balance),
                    limit_index=int(limit),
                    original=StoreCode(int(original)) if int(original) else None,
                )
        return [r for r in results if r is not None]

    def _encode(
        self,
        shard: Shard,
        ops: Sequence[CreditOp],
        chunk: list[int],
        mode: str,
        restore: list[RestoreOp] | None,
    ) -> Call:
        keys = _KeyTable([shard.maintenance, shard.balances, shard.outbox])
        encoded: list[dict[str, Any]] = []
        for i in chunk:
            op = ops[i]
            expiry: dict[int, int] = {}

            def counters(period: PeriodRef, expiry: dict[int, int] = expiry) -> int:
                idx = keys.index(shard.counters(period))
                if period.expires_at_s:
                    expiry[idx] = period.expires_at_s
                return idx

            user = op.user_id
            item: dict[str, Any] = {
                "d": keys.index(shard.dedup(op.event_id, op.role.letter)),
                "dx": op.dedup_expires_at_s,
                "f": op.fingerprint,
                "u": user,
                "pp": op.points_per_unit,
                "q": op.quantity,
                "lim": [
                    [counters(lim.period), counter_field(user, lim.counter), lim.max, lim.metric[0]]
                    for lim in op.limits
                ],
                "ctr": [
                    [counters(c.period), counter_field(user, c.counter), c.metric[0]]
                    for c in op.counters
                ],
                "o": op.occurred_at_ms,
                "k": op.entry_key,
            }
            if op.accumulator is not None:
                acc = op.accumulator
                item["acc"] = [counters(acc.period), counter_field(user, acc.counter), acc.unit]
            if op.interval_ms:
                item["iv"] = [
                    keys.index(shard.interval(user, op.interval_key)),
                    op.interval_ms,
                    op.interval_ms + _INTERVAL_TTL_MARGIN_MS,
                ]
            if restore is not None:
                item["fp"] = restore[i].points
                item["fb"] = restore[i].balance_after
            else:
                item["m"] = encode_award_meta(op)
            item["hx"] = [[idx, at] for idx, at in expiry.items()]
            encoded.append(item)
        args: list[str | int] = [
            mode,
            self.outbox_entries_max,
            json.dumps(encoded, separators=(",", ":"), ensure_ascii=False),
        ]
        return keys.keys, args


class _KeyTable:
    """KEYS of one script call; ops refer to keys by 1-based index."""

    def __init__(self, fixed: list[str]) -> None:
        self.keys = list(fixed)
        self._index = {k: i + 1 for i, k in enumerate(fixed)}

    def index(self, key: str) -> int:
        found = self._index.get(key)
        if found is None:
            self.keys.append(key)
            found = self._index[key] = len(self.keys)
        return found
