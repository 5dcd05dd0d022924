"""Every Redis key and hash field this service uses, in one place.

All keys of one (tenant, shard) carry the hash tag `{tenant:shard}`, so one Lua
script can touch them atomically, on one Redis or spread over a Redis Cluster.
`shard = crc32(user_id) % shards` puts all of a user's state on one shard.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pointsd.service.domain import SEP, BoardRef, Period, PeriodRef

__all__ = [
    "AVAILABLE",
    "EARNED",
    "HELD",
    "OUTBOX_GROUP",
    "SEP",
    "SPENT",
    "KeySchema",
    "Shard",
    "Topology",
    "balance_field",
    "counter_field",
    "shard_of",
]

# Balance hash field suffixes.
AVAILABLE = "a"
EARNED = "e"
SPENT = "s"
# Awards of a flagged user, on hold until the flag is released or voided.
HELD = "h"

# Consumer group of the ledger flushers on every outbox stream.
OUTBOX_GROUP = "ledger"


def shard_of(user_id: str, shards: int) -> int:
    """Stable across processes and versions (unlike hash())."""
    return zlib.crc32(user_id.encode()) % shards if shards > 1 else 0


@dataclass(frozen=True, slots=True)
class Shard:
    """The keys of one (tenant, shard)."""

    prefix: str
    tenant_id: str
    index: int
    # The hash tag every key of the shard starts with; made once, as every
    # key of every credit is built from it.
    tag: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", f"{self.prefix}:{{{self.tenant_id}:{self.index}}}")

    @property
    def maintenance(self) -> str:
        """Exists while a rebuild owns the shard; writes are refused."""
        return f"{self.tag}:maint"

    @property
    def balances(self) -> str:
        """Hash: "<user>|a" available, "<user>|e" lifetime earned, "<user>|s"
        spent, "<user>|h" held (awards of a flagged user, not spendable)."""
        return f"{self.tag}:bal"

    @property
    def holds(self) -> str:
        """Hash: user -> the farming flag id the user's awards are held
        under (award.lua holds them; hold.lua sets and settles)."""
        return f"{self.tag}:holds"

    @property
    def outbox(self) -> str:
        """Stream of ledger entries waiting for the flusher."""
        return f"{self.tag}:outbox"

    @property
    def dead_letters(self) -> str:
        """Stream of outbox entries the ledger refused (kept for an operator)."""
        return f"{self.tag}:outbox:dead"

    @property
    def first_seen(self) -> str:
        """Hash: user -> occurred_at (ms) of the user's first award (newcomer boards)."""
        return f"{self.tag}:first"

    def board(self, ref: BoardRef) -> str:
        """Sorted set of one board instance on this shard: member -> -score.

        Scores are stored negated so that ascending order is best first with
        ties in member order (ZRANGE's tie order), the documented ranking."""
        return f"{self.tag}:lb:{ref.board}:{ref.kind.value}:{ref.key}:{ref.scope}"

    def board_scopes(self, board: str, kind: Period, key: str) -> str:
        """Set of the department/group scopes a board has data for in a period."""
        return f"{self.tag}:lbs:{board}:{kind.value}:{key}"

    def dedup(self, event_id: str, anchor: bool) -> str:
        """String: the first outcome of one credit of one event. The anchor
        (first) credit's record is the event's identity: keyed by the event id
        alone; a second credit's record by event id and "t"."""
        return f"{self.tag}:ev:{'e' if anchor else 't'}:{event_id}"

    def change(self, entry_key: str) -> str:
        """String: the outcome of one balance change (spend, refund, adjustment)."""
        return f"{self.tag}:chg:{entry_key}"

    def counters(self, period: PeriodRef) -> str:
        """Hash of per-user counters for one period: "<user>SEP<counter>" -> int."""
        return f"{self.tag}:c:{period.kind.value}:{period.key}"

    def interval(self, user_id: str, name: str) -> str:
        """Sorted set: occurred_at (ms) of the user's awards for `name` within
        the accepted event age (a throttle compares each event with all)."""
        return f"{self.tag}:ivz:{name}{SEP}{user_id}"

    def days(self, user_id: str, name: str) -> str:
        """Bitmap: bit n set = the user was active on business day n of the
        tenant's calendar (streaks read runs of set bits)."""
        return f"{self.tag}:day:{name}{SEP}{user_id}"

    @property
    def badges(self) -> str:
        """Hash of the shard's badges: "<user>SEP<badge id>" -> occurred_at
        (ms) of the event that earned it. Never expires. One hash per shard,
        not per user: a credit that may grant a badge then names no key of
        its own (GetProgress asks for the badges the rules declare)."""
        return f"{self.tag}:badges"

    def pattern(self) -> str:
        """SCAN pattern for every key of this shard (glob-escaped tag)."""
        escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.tag)
        return f"{escaped}:*"


# award.lua builds the same fields from an operation's user and a step's
# counter name (so one step serves every user); tests/test_award_store.py
# reads what the script wrote through these helpers, and fails if they part.
def balance_field(user_id: str, part: str) -> str:
    return f"{user_id}|{part}"


def counter_field(user_id: str, counter: str) -> str:
    return f"{user_id}{SEP}{counter}"


class KeySchema:
    def __init__(self, prefix: str = "pts") -> None:
        self.prefix = prefix

    def shard(self, tenant_id: str, index: int) -> Shard:
        return Shard(self.prefix, tenant_id, index)

    @property
    def page_token_secret(self) -> str:
        """String: the key every process signs page tokens with."""
        return f"{self.prefix}:secret:page-tokens"


class Topology:
    """How many shards each tenant has. Changing a tenant's shard count moves
    users between shards: drain the outbox, change it, then `pointsd rebuild`."""

    def __init__(self, schema: KeySchema, shards_by_tenant: Mapping[str, int]) -> None:
        self.schema = schema
        self.shards_by_tenant = dict(shards_by_tenant)
        # Each tenant's shards, made once: the hot path asks for one per credit.
        self._shards: dict[str, list[Shard]] = {}

    def shards(self, tenant_id: str) -> int:
        return self.shards_by_tenant[tenant_id]

    def user_shard(self, tenant_id: str, user_id: str) -> Shard:
        shards = self._shards.get(tenant_id)
        if shards is None:
            shards = self._shards[tenant_id] = self.tenant_shards(tenant_id)
        return shards[shard_of(user_id, len(shards))]

    def tenant_shards(self, tenant_id: str) -> list[Shard]:
        return [self.schema.shard(tenant_id, i) for i in range(self.shards(tenant_id))]

    def all_shards(self) -> Iterator[Shard]:
        for tenant_id in sorted(self.shards_by_tenant):
            yield from self.tenant_shards(tenant_id)
