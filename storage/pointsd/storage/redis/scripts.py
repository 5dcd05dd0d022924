"""Lua scripts: read once from package files, called by SHA, reloaded on NOSCRIPT.

redis-py's Script objects send SCRIPT EXISTS before every pipeline; on the hot
path that is a wasted round trip, so this module calls EVALSHA directly and
loads the script only when Redis answers NOSCRIPT (after a restart, a
failover or SCRIPT FLUSH). EVALSHA that fails with NOSCRIPT ran nothing, so
re-sending it is safe.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis import exceptions as rexc

from pointsd.storage.errors import StorageError, StorageUnavailable
from pointsd.storage.redis.client import RedisClient, gate, is_cluster

__all__ = ["LuaScript", "redis_errors"]

Call = tuple[Sequence[str], Sequence[str | int | bytes]]


def redis_errors(exc: BaseException) -> StorageError:
    """Translate a redis-py error into this package's errors."""
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | OSError):
        return StorageUnavailable(f"redis unavailable: {exc}", "redis")
    if isinstance(exc, rexc.BusyLoadingError):
        return StorageUnavailable(f"redis is loading its data set: {exc}", "redis")
    if isinstance(exc, rexc.ReadOnlyError):
        return StorageUnavailable(f"redis is a read-only replica: {exc}", "redis")
    return StorageError(f"redis error: {exc}", "redis")


class LuaScript:
    def __init__(self, package: str, name: str) -> None:
        self.name = name
        self.source = resources.files(package).joinpath(name).read_text("utf-8")
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def load(self, redis: RedisClient) -> None:
        try:
            async with gate(redis):
                sha = await redis.script_load(self.source)
        except rexc.RedisError as exc:
            raise redis_errors(exc) from exc
        if sha != self.sha:  # pragma: no cover - would mean a broken Redis
            raise StorageError(
                f"{self.name}: redis computed sha {sha}, expected {self.sha}", "redis"
            )

    async def run_many(self, redis: RedisClient, calls: Sequence[Call]) -> list[Any]:
        """EVALSHA every call in one pipelined round trip; replies in call order."""
        replies = await self._pipeline(redis, calls, range(len(calls)))
        missing = [i for i, r in enumerate(replies) if isinstance(r, rexc.NoScriptError)]
        if missing:
            await self.load(redis)
            for i, reply in zip(missing, await self._pipeline(redis, calls, missing), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise redis_errors(reply) from reply
        return replies

    async def run(
        self, redis: RedisClient, keys: Sequence[str], args: Sequence[str | int | bytes]
    ) -> Any:
        return (await self.run_many(redis, [(keys, args)]))[0]

    async def _pipeline(
        self, redis: RedisClient, calls: Sequence[Call], which: Sequence[int]
    ) -> list[Any]:
        if is_cluster(redis):
            # redis-py refuses EVALSHA in cluster pipelines: the calls go out
            # concurrently instead, each to the node owning its keys.
            return await self._concurrently(redis, calls, which)
        if len(which) == 1:
            # One call: skip the pipeline machinery (a large share of the CPU
            # of a small round trip in redis-py).
            keys, args = calls[which[0]]
            try:
                async with gate(redis):
                    return [await redis.evalsha(self.sha, len(keys), *keys, *args)]
            except rexc.NoScriptError as exc:
                return [exc]
            except rexc.ResponseError as exc:
                return [exc]
            except (rexc.RedisError, OSError) as exc:
                raise redis_errors(exc) from exc
        try:
            async with gate(redis), redis.pipeline(transaction=False) as pipe:
                for i in which:
                    keys, args = calls[i]
                    pipe.evalsha(self.sha, len(keys), *keys, *args)
                return list(await pipe.execute(raise_on_error=False))
        except rexc.RedisError as exc:
            raise redis_errors(exc) from exc
        except OSError as exc:
            raise redis_errors(exc) from exc

    async def _concurrently(
        self, redis: RedisClient, calls: Sequence[Call], which: Sequence[int]
    ) -> list[Any]:
        async def one(i: int) -> Any:
            keys, args = calls[i]
            try:
                async with gate(redis):
                    return await redis.evalsha(self.sha, len(keys), *keys, *args)
            except (rexc.NoScriptError, rexc.ResponseError) as exc:
                return exc
            except (rexc.RedisError, OSError) as exc:
                raise redis_errors(exc) from exc

        return list(await asyncio.gather(*(one(i) for i in which)))
