"""Leaderboard reads: per-shard sorted sets merged into one ranking.

Ranking: standard competition ranking (equal scores share a rank: 1, 2, 2,
4). Order: score descending, then member id ascending (byte order), the same
for 1 shard or 16. Scores are stored negated, so each shard's ascending order
is already the ranking order.

User boards: a user's credits all land on the user's shard, so a member is in
one shard's set: top-K merges the shards' top lists; a rank is the sum over
shards of members with a better score. Group boards: a group's members live on
many shards, so its score is the sum of its per-shard scores; those boards
are read whole and summed (they hold groups, not users: thousands, not
millions).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from redis import exceptions as rexc

from pointsd.service.domain import BoardRef, Period
from pointsd.storage.keys import Shard, Topology
from pointsd.storage.redis.client import RedisClient, gate
from pointsd.storage.redis.scripts import LuaScript, redis_errors

__all__ = ["Around", "BoardEntry", "BoardStore", "Ranking"]


@dataclass(frozen=True, slots=True)
class BoardEntry:
    rank: int
    member: str
    score: int


@dataclass(frozen=True, slots=True)
class Ranking:
    entries: list[BoardEntry]
    total: int


@dataclass(frozen=True, slots=True)
class Around:
    entry: BoardEntry
    above: list[BoardEntry]
    below: list[BoardEntry]
    total: int


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _scored(pairs: Iterator[tuple[Any, Any]]) -> Iterator[tuple[int, Any]]:
    """(member, score) pairs of a flat reply as (score, member), lazily."""
    return ((int(float(score)), member) for member, score in pairs)


def _pairs(flat: Sequence[Any]) -> list[tuple[int, str]]:
    """A flat [member, score, ...] reply as (stored score, member) tuples."""
    return [(int(float(flat[i + 1])), _text(flat[i])) for i in range(0, len(flat), 2)]


def _ranked(
    ordered: Sequence[tuple[int, str]], first_rank: int, first_better: int
) -> list[BoardEntry]:
    """Competition ranks for a run of entries in ranking order, given the rank
    of the first one and how many entries precede it."""
    out: list[BoardEntry] = []
    rank = first_rank
    for i, (stored, member) in enumerate(ordered):
        if i and stored != ordered[i - 1][0]:
            rank = first_better + i + 1
        out.append(BoardEntry(rank, member, -stored))
    return out


class BoardStore:
    def __init__(self, redis: RedisClient, topology: Topology) -> None:
        self.redis = redis
        self.topology = topology
        self.around_script = LuaScript("pointsd.storage.redis", "around.lua")

    async def start(self) -> None:
        await self.around_script.load(self.redis)

    def _keys(self, tenant_id: str, ref: BoardRef) -> list[str]:
        return [shard.board(ref) for shard in self.topology.tenant_shards(tenant_id)]

    async def _pipeline(self, build: Any) -> list[Any]:
        try:
            async with gate(self.redis), self.redis.pipeline(transaction=False) as pipe:
                build(pipe)
                return list(await pipe.execute())
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc

    async def _summed(self, tenant_id: str, ref: BoardRef) -> list[tuple[int, str]]:
        """All members of a group board, scores summed over shards, in order."""
        keys = self._keys(tenant_id, ref)
        replies = await self._pipeline(
            lambda p: [p.zrange(k, 0, -1, withscores=True) for k in keys]
        )
        totals: dict[str, int] = {}
        for reply in replies:
            for member, score in reply:
                name = _text(member)
                totals[name] = totals.get(name, 0) + int(score)
        return sorted((score, member) for member, score in totals.items())

    async def top(
        self, tenant_id: str, ref: BoardRef, offset: int, limit: int, summed: bool
    ) -> Ranking:
        if summed:
            ordered = await self._summed(tenant_id, ref)
            entries = _ranked(ordered[: offset + limit], 1, 0)[offset:]
            return Ranking(entries, len(ordered))
        keys = self._keys(tenant_id, ref)
        want = offset + limit

        def build(p: Any) -> None:
            for k in keys:
                # Flat [member, score, ...] replies (no per-pair callback):
                # only the merged prefix is ever paired and converted.
                p.execute_command("ZRANGE", k, 0, want - 1, "WITHSCORES")
            for k in keys:
                p.zcard(k)

        replies = await self._pipeline(build)
        total = sum(int(n) for n in replies[len(keys) :])
        # Every shard's prefix of length offset+limit is known, so the merged
        # prefix is exact, and so are ranks and ties inside it. The merge is
        # lazy and stops there: with 8 shards it reads an eighth of the
        # replies, and converts only what it returns. Raw members order the
        # same as decoded ones (UTF-8 byte order is code point order).
        shards = [zip(it, it, strict=True) for it in map(iter, replies[: len(keys)])]
        merged = [
            (score, _text(member))
            for score, member in islice(heapq.merge(*map(_scored, shards)), want)
        ]
        return Ranking(_ranked(merged, 1, 0)[offset:], total)

    async def around(
        self, tenant_id: str, ref: BoardRef, member: str, n: int, summed: bool
    ) -> Around | None:
        if summed:
            ordered = await self._summed(tenant_id, ref)
            pos = next((i for i, (_, m) in enumerate(ordered) if m == member), None)
            if pos is None:
                return None
            ranked = _ranked(ordered, 1, 0)
            return Around(
                ranked[pos],
                ranked[max(0, pos - n) : pos],
                ranked[pos + 1 : pos + 1 + n],
                len(ordered),
            )
        home = self.topology.user_shard(tenant_id, member)
        try:
            async with gate(self.redis):
                score = await self.redis.zscore(home.board(ref), member)
        except (rexc.RedisError, OSError) as exc:
            raise redis_errors(exc) from exc
        if score is None:
            return None
        stored = int(score)
        keys = self._keys(tenant_id, ref)
        replies = await self.around_script.run_many(
            self.redis, [([k], [stored, member, n]) for k in keys]
        )
        better = sum(int(r[0]) for r in replies)
        total = sum(int(r[2]) for r in replies)
        above = list(heapq.merge(*(_pairs(r[3]) for r in replies)))[-n:] if n else []
        below = list(heapq.merge(*(_pairs(r[4]) for r in replies)))[:n] if n else []
        # Ranks of the neighbours: members better than each distinct score.
        scores = sorted({s for s, _ in above + below})
        counts = await self._pipeline(
            lambda p: [p.zcount(k, "-inf", f"({s}") for s in scores for k in keys]
        )
        better_than = {
            s: sum(int(c) for c in counts[i * len(keys) : (i + 1) * len(keys)])
            for i, s in enumerate(scores)
        }

        def entry(stored_score: int, name: str) -> BoardEntry:
            return BoardEntry(better_than[stored_score] + 1, name, -stored_score)

        return Around(
            BoardEntry(better + 1, member, -stored),
            [entry(s, m) for s, m in above],
            [entry(s, m) for s, m in below],
            total,
        )

    async def scopes(self, tenant_id: str, board: str, kind: Period, key: str) -> set[str]:
        """The department/group scopes a board holds data for in a period."""
        shards: list[Shard] = self.topology.tenant_shards(tenant_id)
        replies = await self._pipeline(
            lambda p: [p.smembers(s.board_scopes(board, kind, key)) for s in shards]
        )
        return {_text(v) for reply in replies for v in reply}
