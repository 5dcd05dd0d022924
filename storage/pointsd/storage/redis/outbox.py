"""The ledger outbox: one Redis Stream per (tenant, shard), read by flushers
through the consumer group `ledger`.

At-least-once: an entry stays pending until acknowledged after its rows are
committed in PostgreSQL; entries left pending by a dead flusher are claimed
by another after `claim_idle_ms`. The ledger's unique key makes the second
delivery a no-op.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rexc

from pointsd.storage.keys import OUTBOX_GROUP, Shard
from pointsd.storage.redis.client import RedisClient, gate
from pointsd.storage.redis.scripts import LuaScript, redis_errors

__all__ = ["Outbox", "OutboxEntry", "consumer_name"]

# Consumers that own nothing and were idle this long are removed from the group.
_STALE_CONSUMER_IDLE_MS = 3_600_000


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    shard: Shard
    entry_id: bytes
    fields: dict[bytes, bytes]


def _is_nogroup(reply: object) -> bool:
    return isinstance(reply, rexc.ResponseError) and str(reply).startswith("NOGROUP")


class Outbox:
    def __init__(self, redis: RedisClient, consumer: str | None = None) -> None:
        self.redis = redis
        self.consumer = consumer or consumer_name()
        self._ack_script = LuaScript("pointsd.storage.redis", "ack.lua")
        self._forget_script = LuaScript("pointsd.storage.redis", "forget.lua")

    async def ensure_groups(self, shards: Sequence[Shard]) -> None:
        """Create the consumer group where missing, from the stream's start
        ("0", not "$": entries written before the group exists are not skipped)."""
        try:
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                for shard in shards:
                    pipe.xgroup_create(shard.outbox, OUTBOX_GROUP, id="0", mkstream=True)
                replies = await pipe.execute(raise_on_error=False)
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc
        for reply in replies:
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise redis_errors(reply) from reply

    async def read(self, shards: Sequence[Shard], count: int) -> list[OutboxEntry]:
        """New entries of every shard, up to `count` per shard, one round trip."""
        replies = await self._per_shard(
            shards,
            lambda pipe, shard: pipe.xreadgroup(
                OUTBOX_GROUP, self.consumer, {shard.outbox: ">"}, count=count
            ),
        )
        entries: list[OutboxEntry] = []
        for shard, reply in zip(shards, replies, strict=True):
            for _stream, items in reply or []:
                entries.extend(OutboxEntry(shard, eid, fields) for eid, fields in items)
        return entries

    async def claim(
        self, shards: Sequence[Shard], min_idle_ms: int, count: int
    ) -> list[OutboxEntry]:
        """Take over entries another consumer left pending for `min_idle_ms`."""
        replies = await self._per_shard(
            shards,
            lambda pipe, shard: pipe.xautoclaim(
                shard.outbox, OUTBOX_GROUP, self.consumer, min_idle_ms, "0-0", count=count
            ),
        )
        entries: list[OutboxEntry] = []
        for shard, reply in zip(shards, replies, strict=True):
            items = reply[1] if reply else []
            # Entries deleted meanwhile come back as (id, None): nothing to write.
            entries.extend(OutboxEntry(shard, eid, f) for eid, f in items if f)
        return entries

    async def pending_own(self, shards: Sequence[Shard], count: int) -> list[OutboxEntry]:
        """Entries delivered to this consumer but not acknowledged (after a
        failed write, on restart under the same name)."""
        replies = await self._per_shard(
            shards,
            lambda pipe, shard: pipe.xreadgroup(
                OUTBOX_GROUP, self.consumer, {shard.outbox: "0"}, count=count
            ),
        )
        entries: list[OutboxEntry] = []
        for shard, reply in zip(shards, replies, strict=True):
            for _stream, items in reply or []:
                entries.extend(OutboxEntry(shard, eid, f) for eid, f in items if f)
        return entries

    async def ack(self, entries: Sequence[OutboxEntry], dead: Sequence[OutboxEntry] = ()) -> None:
        """Acknowledge and delete flushed entries, parking `dead` ones first:
        one ack.lua call per shard (atomic there), pipelined over shards."""
        ids: dict[Shard, list[bytes]] = {}
        parked: dict[Shard, list[bytes | int]] = {}
        for entry in [*entries, *dead]:
            ids.setdefault(entry.shard, []).append(entry.entry_id)
        for entry in dead:
            fields = parked.setdefault(entry.shard, [])
            fields.append(len(entry.fields))
            for name, value in entry.fields.items():
                fields += [name, value]
        calls = [
            (
                [shard.outbox, shard.dead_letters],
                [OUTBOX_GROUP, len(shard_ids), *shard_ids, *parked.get(shard, [])],
            )
            for shard, shard_ids in ids.items()
        ]
        if calls:
            await self._ack_script.run_many(self.redis, calls)

    async def backlog(self, shards: Sequence[Shard]) -> int:
        """Entries in the streams: not yet flushed, or flushed and not yet deleted."""
        try:
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                for shard in shards:
                    pipe.xlen(shard.outbox)
                return sum(int(n) for n in await pipe.execute())
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc

    async def forget_stale_consumers(
        self, shards: Sequence[Shard], idle_ms: int = _STALE_CONSUMER_IDLE_MS
    ) -> int:
        """Drop consumers of dead processes (every process and CLI run joins
        the group under a new name) that own no pending entries; checked and
        removed atomically per shard (forget.lua)."""
        args: list[str | int | bytes] = [OUTBOX_GROUP, self.consumer, idle_ms]
        calls = [([shard.outbox], args) for shard in shards]
        if not calls:
            return 0
        return sum(int(n) for n in await self._forget_script.run_many(self.redis, calls))

    async def _per_shard(self, shards: Sequence[Shard], command: Any) -> list[Any]:
        """Run one command per shard in a pipeline; recreate lost groups (after
        a Redis data loss) and retry those shards once."""
        replies = await self._pipeline(shards, command)
        lost = [i for i, r in enumerate(replies) if _is_nogroup(r)]
        if lost:
            await self.ensure_groups([shards[i] for i in lost])
            again = await self._pipeline([shards[i] for i in lost], command)
            for i, reply in zip(lost, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise redis_errors(reply) from reply
        return replies

    async def _pipeline(self, shards: Sequence[Shard], command: Any) -> list[Any]:
        try:
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                for shard in shards:
                    command(pipe, shard)
                return list(await pipe.execute(raise_on_error=False))
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc
