"""Balance reads, and the bulk state operations behind reconcile and rebuild."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from redis import exceptions as rexc

from pointsd.service.domain import PeriodRef, StoreCode
from pointsd.storage.entries import EARNED_KINDS
from pointsd.storage.keys import (
    AVAILABLE,
    EARNED,
    HELD,
    SPENT,
    Shard,
    Topology,
    balance_field,
    counter_field,
)
from pointsd.storage.redis.client import RedisClient, gate
from pointsd.storage.redis.scripts import LuaScript, redis_errors

__all__ = ["BalanceChange", "BalanceStore", "BalanceView", "ChangeResult", "ProgressView"]


@dataclass(frozen=True, slots=True)
class BalanceView:
    available: int = 0
    earned: int = 0
    spent: int = 0
    earned_in_period: int = 0
    # Awards of a flagged user on hold (not spendable, not in earned).
    held: int = 0


@dataclass(frozen=True, slots=True)
class BalanceChange:
    """One idempotent change of a user's balance, identified by `entry_key`
    (also the ledger entry's key). `floor`: refuse to go below zero.
    `final_refusal`: a refusal is remembered like an outcome, so every replay
    of the key is refused too (a failed redemption must never spend later);
    otherwise a refused change leaves nothing and may be retried."""

    tenant_id: str
    user_id: str
    entry_key: str
    kind: str
    delta: int
    floor: bool
    fingerprint: str
    dedup_expires_at_s: int
    data: str
    balance_after: int = 0  # restore mode only
    final_refusal: bool = False


@dataclass(frozen=True, slots=True)
class ChangeResult:
    # APPLIED, DUPLICATE, INSUFFICIENT, BACKPRESSURE, MAINTENANCE or KEY_REUSED.
    code: StoreCode
    balance: int
    available_before: int


@dataclass(frozen=True, slots=True)
class ProgressView:
    """A user's progress state: the balance, the counters asked for (in the
    order asked) and of the badges asked for those the user has (id ->
    occurred_at ms of the earning event)."""

    available: int
    earned: int
    counters: list[int]
    badges: dict[str, int]
    # The bytes asked for of each bitmap (streak days), in the order asked.
    bitmaps: list[bytes] = field(default_factory=list)


def _int(value: bytes | str | None) -> int:
    return int(value) if value is not None else 0


class BalanceStore:
    def __init__(
        self,
        redis: RedisClient,
        topology: Topology,
        clock: Callable[[], int],
        outbox_entries_max: int = 0,
    ) -> None:
        self.redis = redis
        self.topology = topology
        # The service clock (ms): dedup records expire on it (see balance.lua).
        self.clock = clock
        self.outbox_entries_max = outbox_entries_max
        self.script = LuaScript("pointsd.storage.redis", "balance.lua")
        self.freezes_script = LuaScript("pointsd.storage.redis", "freezes.lua")

    async def start(self) -> None:
        await self.script.load(self.redis)
        await self.freezes_script.load(self.redis)

    async def give_freezes(
        self,
        tenant_id: str,
        user_id: str,
        ever: PeriodRef,
        counter: str,
        quantity: int,
        most: int,
        key: str,
        data: str,
        milestone: str,
        keep_s: int,
    ) -> tuple[StoreCode, int]:
        """Streak freezes bought (a redemption), once per `key`, up to `most`
        held: (APPLIED or DUPLICATE or MAINTENANCE, freezes given)."""
        shard = self.topology.user_shard(tenant_id, user_id)
        code, given = await self.freezes_script.run(
            self.redis,
            [shard.maintenance, shard.balances, shard.outbox, shard.counters(ever),
             shard.change(key)],
            [user_id, counter, quantity, most, keep_s, data, milestone],
        )  # fmt: skip
        return StoreCode(int(code)), int(given)

    async def change(self, ch: BalanceChange, *, restore: bool = False) -> ChangeResult:
        """Apply (or, restoring, only remember) one change, atomically."""
        shard = self.topology.user_shard(ch.tenant_id, ch.user_id)
        lifetime = "e" if ch.kind in EARNED_KINDS else "s"
        code, balance, before = await self.script.run(
            self.redis,
            [shard.maintenance, shard.balances, shard.outbox, shard.change(ch.entry_key)],
            [
                "restore" if restore else "apply",
                ch.user_id,
                ch.delta,
                lifetime,
                ("2" if ch.final_refusal else "1") if ch.floor else "0",
                ch.dedup_expires_at_s,
                ch.fingerprint,
                ch.data,
                self.outbox_entries_max,
                ch.balance_after,
                self.clock() // 1000,
            ],
        )
        return ChangeResult(StoreCode(int(code)), int(balance), int(before))

    async def get(
        self, tenant_id: str, user_id: str, period: PeriodRef, earned_counter: str
    ) -> BalanceView:
        """One round trip: the balance hash fields and the period's earned counter."""
        shard = self.topology.user_shard(tenant_id, user_id)
        try:
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(
                    shard.balances,
                    [balance_field(user_id, p) for p in (AVAILABLE, EARNED, SPENT, HELD)],
                )
                pipe.hget(shard.counters(period), counter_field(user_id, earned_counter))
                (available, earned, spent, held), today = await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc
        return BalanceView(_int(available), _int(earned), _int(spent), _int(today), _int(held))

    async def progress(
        self,
        tenant_id: str,
        user_id: str,
        counters: Sequence[tuple[PeriodRef, str]],
        bitmaps: Sequence[tuple[str, int, int]] = (),
        badges: Sequence[str] = (),
    ) -> ProgressView:
        """One round trip: balance, the counters (period, name), the badges
        asked for (ids) and byte ranges of day bitmaps (name, first byte,
        last byte)."""
        shard = self.topology.user_shard(tenant_id, user_id)
        by_hash: dict[str, list[int]] = {}
        for i, (period, _) in enumerate(counters):
            by_hash.setdefault(shard.counters(period), []).append(i)
        try:
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(shard.balances, [balance_field(user_id, p) for p in (AVAILABLE, EARNED)])
                for key, indexes in by_hash.items():
                    pipe.hmget(key, [counter_field(user_id, counters[i][1]) for i in indexes])
                pipe.hmget(shard.badges, [counter_field(user_id, b) for b in badges] or ["-"])
                for name, first, last in bitmaps:
                    pipe.getrange(shard.days(user_id, name), first, last)
                replies = await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc
        got_bitmaps = replies[len(replies) - len(bitmaps) :] if bitmaps else []
        replies = replies[: len(replies) - len(bitmaps)]
        (available, earned), earned_at = replies[0], replies[-1]
        values = [0] * len(counters)
        for indexes, got in zip(by_hash.values(), replies[1:-1], strict=True):
            for i, value in zip(indexes, got, strict=True):
                values[i] = _int(value)
        return ProgressView(
            _int(available),
            _int(earned),
            values,
            {b: int(at) for b, at in zip(badges, earned_at, strict=False) if at is not None},
            [b if isinstance(b, bytes) else str(b).encode("latin-1") for b in got_bitmaps],
        )

    async def restore_progress(
        self,
        shard: Shard,
        badges: Mapping[str, Mapping[str, int]],
        floors: Sequence[tuple[PeriodRef, str, str, int]],
        now_s: int,
    ) -> None:
        """Rebuild: set users' badges (user -> badge -> ms) and raise counters
        (period, user, counter, at least) to a floor, e.g. a task the ledger
        shows done whose progress no award row restores. Only while the
        shard is in maintenance (read, then write)."""
        try:
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                for user, owned in badges.items():
                    fields = {counter_field(user, b): at for b, at in owned.items()}
                    pipe.hset(shard.badges, mapping=fields)  # type: ignore[arg-type]
                for period, user, counter, _ in floors:
                    pipe.hget(shard.counters(period), counter_field(user, counter))
                replies = await pipe.execute()
            current = replies[len(badges) :]
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                for (period, user, counter, floor), now in zip(floors, current, strict=True):
                    if _int(now) >= floor or (period.expires_at_s and period.expires_at_s <= now_s):
                        continue
                    key = shard.counters(period)
                    pipe.hset(key, counter_field(user, counter), floor)
                    if period.expires_at_s:
                        pipe.expire(key, period.expires_at_s - now_s)
                await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc

    async def restore_bits(
        self, shard: Shard, bits: Sequence[tuple[str, str, int]], keep_s: int
    ) -> None:
        """Rebuild: set bits of users' day bitmaps (user, bitmap, bit), each
        bitmap kept `keep_s` (as award.lua keeps them)."""
        try:
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                for user, name, bit in bits:
                    pipe.setbit(shard.days(user, name), bit, 1)
                for key in {shard.days(user, name) for user, name, _ in bits}:
                    pipe.expire(key, keep_s)
                await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc

    async def scan_balances(self, shard: Shard) -> AsyncIterator[tuple[str, BalanceView]]:
        """Every user's balance on a shard (HSCAN; consistent enough when quiet)."""
        partial: dict[str, dict[str, int]] = {}
        try:
            async with gate(self.redis):
                scan = [fv async for fv in self.redis.hscan_iter(shard.balances, count=1000)]
            for field, value in scan:
                name = field.decode() if isinstance(field, bytes) else field
                user, _, part = name.rpartition("|")
                partial.setdefault(user, {})[part] = int(value)
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc
        for user, parts in partial.items():
            yield (
                user,
                BalanceView(
                    parts.get(AVAILABLE, 0),
                    parts.get(EARNED, 0),
                    parts.get(SPENT, 0),
                    held=parts.get(HELD, 0),
                ),
            )

    async def in_maintenance(self, tenant_id: str) -> bool:
        try:
            # One EXISTS per shard: the flags live in different hash slots.
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                for shard in self.topology.tenant_shards(tenant_id):
                    pipe.exists(shard.maintenance)
                return any(await pipe.execute())
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc

    async def set_maintenance(self, shard: Shard, on: bool) -> None:
        try:
            async with gate(self.redis):
                if on:
                    await self.redis.set(shard.maintenance, "rebuild")
                else:
                    await self.redis.delete(shard.maintenance)
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc

    async def wipe_state(self, shard: Shard) -> int:
        """Delete every key of the shard except the outbox, the dead letters and
        the maintenance flag: the state a rebuild recreates from the ledger."""
        keep = {shard.outbox.encode(), shard.maintenance.encode(), shard.dead_letters.encode()}
        deleted = 0
        try:
            async with gate(self.redis):
                found = [k async for k in self.redis.scan_iter(match=shard.pattern(), count=1000)]
            batch: list[bytes] = []
            for key in found:
                raw = key if isinstance(key, bytes) else str(key).encode()
                if raw not in keep:
                    batch.append(raw)
                if len(batch) >= 500:
                    async with gate(self.redis):
                        deleted += await self.redis.delete(*batch)
                    batch.clear()
            if batch:
                async with gate(self.redis):
                    deleted += await self.redis.delete(*batch)
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc
        return deleted

    async def set_balances(self, shard: Shard, balances: Mapping[str, BalanceView]) -> None:
        """Overwrite the balance fields of the given users (rebuild)."""
        items = list(balances.items())
        try:
            for start in range(0, len(items), 1000):
                mapping: dict[str, int] = {}
                for user, view in items[start : start + 1000]:
                    mapping[balance_field(user, AVAILABLE)] = view.available
                    mapping[balance_field(user, EARNED)] = view.earned
                    mapping[balance_field(user, SPENT)] = view.spent
                    if view.held:
                        mapping[balance_field(user, HELD)] = view.held
                async with gate(self.redis):
                    await self.redis.hset(shard.balances, mapping=mapping)  # type: ignore[arg-type]
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc
