"""Farming holds in Redis: who is held under which flag, and the settlement
that pays (release) or cancels (void) what was held, exactly once.

PostgreSQL's farming_flags decides (storage/pointsd/storage/postgres/farming.py);
this is the hot copy award.lua reads on every credit, and the one place held
points move (hold.lua), atomically with their ledger rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from redis import exceptions as rexc

from pointsd.service.domain import StoreCode
from pointsd.storage.entries import KIND_RELEASE, KIND_VOID, entry_data, settle_key
from pointsd.storage.keys import SEP, Shard, Topology
from pointsd.storage.redis.client import RedisClient, gate
from pointsd.storage.redis.scripts import LuaScript, redis_errors

__all__ = ["HoldStore", "Settlement"]

# How long a settlement is remembered in Redis. Far longer than any retry;
# past it PostgreSQL's settled_at (set right after) is the record.
_SETTLED_KEEP_S = 90 * 86400


@dataclass(frozen=True, slots=True)
class Settlement:
    # APPLIED (the first settlement), DUPLICATE (settled before: points as
    # then) or MAINTENANCE (a rebuild owns the shard: nothing moved).
    code: StoreCode
    points: int


class HoldStore:
    def __init__(self, redis: RedisClient, topology: Topology, clock: Callable[[], int]) -> None:
        self.redis = redis
        self.topology = topology
        self.clock = clock
        self.script = LuaScript("pointsd.storage.redis", "hold.lua")

    async def start(self) -> None:
        await self.script.load(self.redis)

    def _keys(self, shard: Shard, flag_id: int) -> list[str]:
        return [shard.maintenance, shard.balances, shard.outbox, shard.holds,
                shard.change(settle_key(flag_id))]  # fmt: skip

    async def hold(self, tenant_id: str, user_id: str, flag_id: int) -> Settlement:
        """Hold the user's further awards under `flag_id` (kept if another
        flag holds the user already). APPLIED with the flag holding the
        user; DUPLICATE when this flag was settled (it holds nothing)."""
        shard = self.topology.user_shard(tenant_id, user_id)
        code, held_under = await self.script.run(
            self.redis, self._keys(shard, flag_id), ["hold", user_id, flag_id, 0, "", ""]
        )
        return Settlement(StoreCode(int(code)), int(held_under))

    async def settle(
        self, tenant_id: str, user_id: str, flag_id: int, *, release: bool, reason: str
    ) -> Settlement:
        """Release (pay to available) or void (cancel) the points held under
        `flag_id`, once: a second call answers DUPLICATE with the same points."""
        shard = self.topology.user_shard(tenant_id, user_id)
        now = self.clock()
        kind = KIND_RELEASE if release else KIND_VOID
        held_side = entry_data(kind, settle_key(flag_id, kind, held=True), user_id,
                               str(flag_id), "", reason, now, now)  # fmt: skip
        paid_side = entry_data(kind, settle_key(flag_id, kind), user_id, str(flag_id), "",
                               reason, now, now)  # fmt: skip
        code, points = await self.script.run(
            self.redis,
            self._keys(shard, flag_id),
            ["release" if release else "void", user_id, flag_id, _SETTLED_KEEP_S, held_side,
             paid_side],
        )  # fmt: skip
        return Settlement(StoreCode(int(code)), int(points))

    async def held_users(self, shard: Shard) -> dict[str, int]:
        """Every user held on a shard: user -> flag id."""
        return {u: f for u, f in (await self._read(shard)).items() if SEP not in u}

    async def held_under(self, shard: Shard) -> dict[tuple[str, int], int]:
        """(user, flag id) -> the points held under that flag, not settled yet."""
        out: dict[tuple[str, int], int] = {}
        for field, value in (await self._read(shard)).items():
            user, sep, flag = field.rpartition(SEP)
            if sep:
                out[(user, int(flag))] = value
        return out

    async def shares(
        self, tenant_id: str, flags: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """(user, flag id) -> the points held under that flag now, for each
        pair asked (0: none), in one round trip."""
        if not flags:
            return {}
        keys = [self.topology.user_shard(tenant_id, user).holds for user, _ in flags]
        try:
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                for key, (user, flag) in zip(keys, flags, strict=True):
                    pipe.hget(key, f"{user}{SEP}{flag}")
                got = await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc
        return {pair: int(v or 0) for pair, v in zip(flags, got, strict=True)}

    async def _read(self, shard: Shard) -> dict[str, int]:
        try:
            async with gate(self.redis):
                raw = await self.redis.hgetall(shard.holds)
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc
        return {_text(k): int(v) for k, v in raw.items()}

    async def restore(
        self,
        shard: Shard,
        holds: Mapping[str, int],
        shares: Mapping[tuple[str, int], int],
        settled: Mapping[tuple[str, int], int],
    ) -> None:
        """Rebuild (the shard in maintenance): who is held under which open
        flag, what each flag holds of each user (the ledger's held rows by
        flag), and the settlement records of the flags the ledger shows
        settled ((user, flag) -> points moved), so that a settlement is
        never run twice and a settled flag never holds again."""
        mapping: dict[str, int] = dict(holds)
        mapping.update({f"{user}{SEP}{flag}": points for (user, flag), points in shares.items()})
        try:
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                if mapping:
                    pipe.hset(shard.holds, mapping=mapping)  # type: ignore[arg-type]
                for (_, flag), points in settled.items():
                    pipe.set(shard.change(settle_key(flag)), points, ex=_SETTLED_KEEP_S)
                await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
