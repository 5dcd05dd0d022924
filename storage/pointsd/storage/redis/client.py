"""The Redis client: one server (redis://, rediss://, unix://) or a Redis
Cluster (POINTS_REDIS_CLUSTER=true, the URL of any node)."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

__all__ = ["RedisClient", "connect_redis", "gate", "is_cluster"]

RedisClient: TypeAlias = Redis | RedisCluster

# redis-py's cluster client fails at once (MaxConnectionsError) when a node's
# pool is full, where a blocking pool would wait. Every operation here holds
# the client's gate, so at most `pool_max` are under way, each using at most
# one connection per node: callers wait, as they do on one server.
_GATES: weakref.WeakKeyDictionary[RedisCluster, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def gate(redis: RedisClient) -> AbstractAsyncContextManager[Any]:
    found = _GATES.get(redis) if isinstance(redis, RedisCluster) else None
    return found if found is not None else contextlib.nullcontext()


def is_cluster(redis: RedisClient) -> bool:
    return isinstance(redis, RedisCluster)


def connect_redis(
    url: str, *, cluster: bool = False, pool_max: int = 64, timeout_s: float = 5.0
) -> RedisClient:
    """A client for `url`. RESP2 is pinned so reply shapes (streams especially)
    do not depend on the redis-py default. Connection errors are retried by
    redis-py; every write of this service is idempotent, so a retried EVALSHA
    is safe.

    One server: a blocking pool, so past `pool_max` connections callers wait
    instead of failing. Cluster: `pool_max` connections per node; every key
    of one credit shares a hash tag, so each script runs on one node.
    """
    if cluster:
        client = RedisCluster.from_url(
            url,
            protocol=2,
            max_connections=pool_max,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        _GATES[client] = asyncio.Semaphore(pool_max)
        return client
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
