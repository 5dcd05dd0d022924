"""Secrets every service process must share, kept in Redis."""

from __future__ import annotations

import secrets

from redis import exceptions as rexc

from pointsd.storage.redis.client import RedisClient, gate
from pointsd.storage.redis.scripts import redis_errors

__all__ = ["shared_secret"]


async def shared_secret(redis: RedisClient, key: str, held: bytes = b"") -> bytes:
    """The secret at `key`, so every process of a deployment reads the same
    one. Where it is missing (first start, Redis lost it) the first asker
    stores `held` (the secret it already signs with) or a random one (SET NX)."""
    try:
        async with gate(redis):
            await redis.set(key, held or secrets.token_hex(32), nx=True)
            value = await redis.get(key)
    except (rexc.RedisError, OSError) as exc:
        raise redis_errors(exc) from exc
    if value is None:  # pragma: no cover - deleted between the two calls
        return await shared_secret(redis, key, held)
    return value if isinstance(value, bytes) else value.encode()
