"""Open and close every store over one Redis client and one PostgreSQL engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from pointsd.storage.keys import Topology
from pointsd.storage.postgres import Ledger, create_engine
from pointsd.storage.postgres.audit import AuditStore
from pointsd.storage.postgres.catalog import CatalogStore
from pointsd.storage.postgres.farming import FarmingStore
from pointsd.storage.postgres.tokens import TokenStore
from pointsd.storage.postgres.winners import HallOfFame
from pointsd.storage.redis import AwardStore, BalanceStore, Outbox, RedisClient, connect_redis
from pointsd.storage.redis.boards import BoardStore
from pointsd.storage.redis.client import gate
from pointsd.storage.redis.holds import HoldStore

__all__ = ["Stores"]


@dataclass
class Stores:
    topology: Topology
    awards: AwardStore
    balances: BalanceStore
    holds: HoldStore
    outbox: Outbox
    ledger: Ledger
    boards: BoardStore
    catalog: CatalogStore
    hall_of_fame: HallOfFame
    tokens: TokenStore
    audit: AuditStore
    farming: FarmingStore
    redis: RedisClient
    db: AsyncEngine

    @classmethod
    async def open(
        cls,
        redis_url: str,
        database_url: str,
        topology: Topology,
        *,
        clock: Callable[[], int],
        outbox_entries_max: int,
        ops_per_call_max: int,
        ops_per_round_trip_max: int,
        inflight_max: int,
        coalesce_us: int = 0,
        coalesce_ops: int = 64,
        redis_cluster: bool = False,
        redis_pool_max: int = 64,
        redis_timeout_s: float = 5.0,
        db_pool_size: int = 5,
        db_timeout_s: float = 5.0,
    ) -> Stores:
        redis = connect_redis(
            redis_url, cluster=redis_cluster, pool_max=redis_pool_max, timeout_s=redis_timeout_s
        )
        db = create_engine(database_url, pool_size=db_pool_size, timeout_s=db_timeout_s)
        awards = AwardStore(
            redis,
            topology,
            clock=clock,
            outbox_entries_max=outbox_entries_max,
            ops_per_call_max=ops_per_call_max,
            ops_per_round_trip_max=ops_per_round_trip_max,
            inflight_max=inflight_max,
            coalesce_us=coalesce_us,
            coalesce_ops=coalesce_ops,
        )
        boards = BoardStore(redis, topology)
        balances = BalanceStore(redis, topology, clock, outbox_entries_max)
        holds = HoldStore(redis, topology, clock)
        try:
            await awards.start()
            await boards.start()
            await balances.start()
            await holds.start()
        except BaseException:
            await redis.aclose()
            await db.dispose()
            raise
        return cls(
            topology=topology,
            awards=awards,
            balances=balances,
            holds=holds,
            catalog=CatalogStore(db),
            outbox=Outbox(redis),
            ledger=Ledger(db),
            boards=boards,
            hall_of_fame=HallOfFame(db),
            tokens=TokenStore(db),
            audit=AuditStore(db),
            farming=FarmingStore(db),
            redis=redis,
            db=db,
        )

    async def ping_redis(self) -> bool:
        try:
            async with gate(self.redis):
                return bool(await self.redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.awards.drain()
        await self.redis.aclose()
        await self.db.dispose()
