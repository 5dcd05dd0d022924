"""Redis side of storage: the hot path (award.lua), balances, the outbox."""

from __future__ import annotations

from pointsd.storage.redis.awards import AwardStore
from pointsd.storage.redis.balances import BalanceStore, BalanceView
from pointsd.storage.redis.client import RedisClient, connect_redis, is_cluster
from pointsd.storage.redis.codec import RestoreOp
from pointsd.storage.redis.outbox import Outbox, OutboxEntry
from pointsd.storage.redis.scripts import redis_errors

__all__ = [
    "AwardStore",
    "BalanceStore",
    "BalanceView",
    "Outbox",
    "OutboxEntry",
    "RedisClient",
    "RestoreOp",
    "connect_redis",
    "is_cluster",
    "redis_errors",
]
