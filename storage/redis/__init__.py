"""Redis side of storage: the hot path (award.lua), balances, the outbox."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from storage.redis.awards import AwardStore, RestoreOp
from storage.redis.balances import BalanceStore, BalanceView
from storage.redis.outbox import Outbox, OutboxEntry
from storage.redis.scripts import redis_errors

__all__ = [
    "AwardStore",
    "BalanceStore",
    "BalanceView",
    "Outbox",
    "OutboxEntry",
    "RestoreOp",
    "connect_redis",
    "redis_errors",
]


def connect_redis(url: str, *, pool_max: int = 64, timeout_s: float = 5.0) -> Redis:
    """A client for `url` (redis://, rediss://, unix://).

    A blocking pool: past `pool_max` connections callers wait instead of
    failing. RESP2 is pinned so reply shapes (streams especially) do not depend on the
    redis-py default. Connection errors are retried by redis-py; every write
    of this service is idempotent, so a retried EVALSHA is safe.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        protocol=2,
        max_connections=pool_max,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)
