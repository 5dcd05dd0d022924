"""Farming flags and findings (PostgreSQL tables `farming_flags` and
`farming_findings`, migration 0010), and the ledger aggregates the farming
pass judges (service/pointsd/service/farming.py).

The aggregates read award rows of any state (a held award is still
evidence) through ix_ledger_entries_farming: received credits are rows with
role 't' (user_id the receiver, counterpart_id the sender); a user's rate is
the rows with role 'a' (user_id the sender of the event).

A finding is stored once ever per (tenant, user, signal, period): `record`
skips what was seen before, so a finding already judged is never raised
again. New findings go to the user's open flag, or open one. At most one
flag per user is open (the partial unique index ix_farming_flags_open_user);
`record` locks that flag FOR SHARE while it adds findings, and `decide`
locks it FOR UPDATE, so a finding lands either on a flag still open or on a
new one, never on a flag decided meanwhile without the decision seeing it.
Two passes recording the same findings at once create one flag and one row
per finding.

A decision moves a flag open -> released or voided once (`decide`, with its
audit row in the transaction); `settled` records that Redis paid or
cancelled the held points (storage/pointsd/storage/redis/holds.py).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from pointsd.service.domain import PairCount
from pointsd.storage.errors import RecordChanged, RecordMissing
from pointsd.storage.postgres.audit import AuditRow, record
from pointsd.storage.postgres.db import EngineStore

__all__ = [
    "DECIDED",
    "NOTE_CHARS_MAX",
    "OPEN",
    "RELEASED",
    "TIMES_PER_USER_MAX",
    "VOIDED",
    "FarmingStore",
    "FindingRecord",
    "FlagDecided",
    "FlagRecord",
    "NewFinding",
]

OPEN = "open"
RELEASED = "released"
VOIDED = "voided"
DECIDED = (RELEASED, VOIDED)
# ck_farming_flags_note.
NOTE_CHARS_MAX = 1000
# Event times read per user and window: spacing needs a few dozen; a user
# past this sends more than one event a second, which the count flags.
TIMES_PER_USER_MAX = 4000
# Rounds of "find the open flag, else open one" before giving up: each lost
# round means another transaction opened or decided the flag just then.
_OPEN_TRIES = 5


class NewFinding(Protocol):
    """What `record` stores of a finding (rules.farming.Finding has it)."""

    @property
    def user_id(self) -> str: ...
    @property
    def signal(self) -> str: ...
    @property
    def period_key(self) -> str: ...
    @property
    def counterparts(self) -> Sequence[str]: ...
    @property
    def evidence(self) -> str: ...


@dataclass(frozen=True, slots=True)
class FindingRecord:
    signal: str
    period_key: str
    counterparts: tuple[str, ...]
    evidence: str
    found_at_ms: int


@dataclass(frozen=True, slots=True)
class FlagRecord:
    flag_id: int
    tenant_id: str
    user_id: str
    state: str  # OPEN, RELEASED or VOIDED
    opened_at_ms: int
    decided_at_ms: int | None
    decided_by: str
    note: str
    # When Redis settled the decision, and the points it moved (None before).
    settled_at_ms: int | None
    settled_points: int | None
    # Oldest first.
    findings: tuple[FindingRecord, ...] = ()


class FlagDecided(RecordChanged):
    """The flag was decided the other way already; `flag` is as decided."""

    def __init__(self, flag: FlagRecord) -> None:
        super().__init__(f"flag {flag.flag_id} is {flag.state} already", "postgresql")
        self.flag = flag


_FLAG_COLUMNS = (
    "flag_id, tenant_id, user_id, state, opened_at, decided_at, decided_by, note, settled_at, "
    "settled_points"
)

# The receivers' counted credits by sender, with each receiver's total, in
# one scan of the window; pairs under the floor are left out of the result,
# not of the totals.
_PAIRS = text(
    "WITH got AS (SELECT user_id, counterpart_id, count(*) AS n FROM ledger_entries "
    "WHERE tenant_id = :t AND kind = 'award' AND occurred_at >= :start AND occurred_at < :end "
    "AND role = 't' AND counterpart_id <> '' AND action = ANY(CAST(:actions AS text[])) "
    "GROUP BY user_id, counterpart_id), "
    "totals AS (SELECT user_id, sum(n) AS total FROM got GROUP BY user_id) "
    "SELECT got.user_id, got.counterpart_id, got.n, totals.total FROM got "
    "JOIN totals USING (user_id) WHERE got.n >= :floor ORDER BY 1, 2"
)
_SENT = (
    "FROM ledger_entries WHERE tenant_id = :t AND kind = 'award' AND occurred_at >= :start "
    "AND occurred_at < :end AND role = 'a' AND NOT (action = ANY(CAST(:ignore AS text[])))"
)
_RATES = text(f"SELECT user_id, count(*) {_SENT} GROUP BY user_id")
_TIMES = text(
    "SELECT user_id, occurred_at FROM (SELECT user_id, occurred_at, row_number() OVER "
    f"(PARTITION BY user_id ORDER BY occurred_at) AS k {_SENT} "
    "AND user_id = ANY(CAST(:users AS text[]))) AS s WHERE k <= :cap ORDER BY 1, 2"
)
_SEEN = text(
    "SELECT f.user_id, f.signal, f.period_key FROM farming_findings f JOIN unnest("
    "CAST(:users AS text[]), CAST(:signals AS text[]), CAST(:periods AS text[])) "
    "AS k(user_id, signal, period_key) USING (user_id, signal, period_key) "
    "WHERE f.tenant_id = :t"
)
_OPEN_FLAG = text(
    "SELECT flag_id FROM farming_flags WHERE tenant_id = :t AND user_id = :u AND state = 'open' "
    "FOR SHARE"
)
_NEW_FLAG = text(
    "INSERT INTO farming_flags (tenant_id, user_id, state, opened_at) "
    "VALUES (:t, :u, 'open', :now) "
    "ON CONFLICT (tenant_id, user_id) WHERE state = 'open' DO NOTHING RETURNING flag_id"
)
_ADD_FINDINGS = text(
    "INSERT INTO farming_findings (tenant_id, user_id, signal, period_key, flag_id, "
    "counterparts, evidence, found_at) "
    "SELECT :t, :u, k.signal, k.period_key, :flag, "
    "ARRAY(SELECT json_array_elements_text(CAST(k.counterparts AS json))), k.evidence, :now "
    "FROM unnest(CAST(:signals AS text[]), CAST(:periods AS text[]), "
    "CAST(:counterparts AS text[]), CAST(:evidence AS text[])) "
    "WITH ORDINALITY AS k(signal, period_key, counterparts, evidence, i) ORDER BY k.i "
    "ON CONFLICT (tenant_id, user_id, signal, period_key) DO NOTHING RETURNING 1"
)
_DROP_FLAG = text("DELETE FROM farming_flags WHERE flag_id = :flag")
_HOLDING = text(
    "SELECT flag_id, user_id FROM farming_flags WHERE tenant_id = :t AND state = 'open' "
    "ORDER BY flag_id"
)
_UNSETTLED = text(
    f"SELECT {_FLAG_COLUMNS} FROM farming_flags WHERE settled_at IS NULL AND tenant_id = :t "
    "AND state <> 'open' ORDER BY flag_id"
)
_SETTLED_FLAGS = text(
    "SELECT flag_id, user_id, settled_points FROM farming_flags WHERE tenant_id = :t "
    "AND settled_at IS NOT NULL"
)
_GET = text(f"SELECT {_FLAG_COLUMNS} FROM farming_flags WHERE tenant_id = :t AND flag_id = :flag")
_LOCK = text(
    f"SELECT {_FLAG_COLUMNS} FROM farming_flags WHERE tenant_id = :t AND flag_id = :flag FOR UPDATE"
)
_DECIDE = text(
    "UPDATE farming_flags SET state = :state, decided_at = :now, decided_by = :by, note = :note "
    f"WHERE flag_id = :flag AND state = 'open' RETURNING {_FLAG_COLUMNS}"
)
_SETTLED = text(
    "UPDATE farming_flags SET settled_at = :now, settled_points = :points "
    "WHERE flag_id = :flag AND settled_at IS NULL AND state <> 'open'"
)
_FINDINGS_OF = text(
    "SELECT flag_id, signal, period_key, counterparts, evidence, found_at FROM farming_findings "
    "WHERE flag_id = ANY(CAST(:flags AS bigint[])) ORDER BY flag_id, found_at, signal, period_key"
)
# Constant clauses joined as a page needs them (each reaches the index).
_PAGE_CLAUSES = {
    "state": "state = :state",
    "user_id": "user_id = :user_id",
    "after": "flag_id < :after",
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _dt(ms: int) -> datetime:
    return _EPOCH + ms * _MS


def _ms(at: datetime) -> int:
    # Exact (a float timestamp * 1000 can land a millisecond short).
    return (at - _EPOCH) // _MS


def _ms_or_none(at: datetime | None) -> int | None:
    return None if at is None else _ms(at)


def _flag(row: Any, findings: Sequence[FindingRecord] = ()) -> FlagRecord:
    return FlagRecord(
        flag_id=int(row[0]), tenant_id=row[1], user_id=row[2], state=row[3],
        opened_at_ms=_ms(row[4]), decided_at_ms=_ms_or_none(row[5]),
        decided_by=row[6], note=row[7], settled_at_ms=_ms_or_none(row[8]),
        settled_points=None if row[9] is None else int(row[9]), findings=tuple(findings),
    )  # fmt: skip


async def _with_findings(conn: AsyncConnection, rows: Iterable[Any]) -> list[FlagRecord]:
    """Flags of `rows` with their findings, in one more query."""
    rows = list(rows)
    if not rows:
        return []
    found: dict[int, list[FindingRecord]] = defaultdict(list)
    for r in await conn.execute(_FINDINGS_OF, {"flags": [int(r[0]) for r in rows]}):
        found[int(r[0])].append(FindingRecord(r[1], r[2], tuple(r[3]), r[4], _ms(r[5])))
    return [_flag(r, found[int(r[0])]) for r in rows]


def _json_list(values: Sequence[str]) -> str:
    # An array of arrays of different lengths is not a thing in PostgreSQL:
    # each finding's counterparts travel as one JSON array.
    return json.dumps(list(values), ensure_ascii=False)


class FarmingStore(EngineStore):
    # -- the ledger's aggregates --------------------------------------------------

    async def pair_counts(
        self, tenant_id: str, start_ms: int, end_ms: int, actions: Sequence[str], floor: int
    ) -> list[PairCount]:
        """Credits of `actions` each receiver got from each sender in
        [start_ms, end_ms), for pairs of at least `floor`, with each
        receiver's total of those actions then. Sorted by receiver, sender."""
        if not actions:
            return []
        params = {"t": tenant_id, "start": _dt(start_ms), "end": _dt(end_ms),
                  "actions": list(actions), "floor": floor}  # fmt: skip

        async def work(conn: AsyncConnection) -> list[PairCount]:
            return [
                PairCount(r[0], r[1], int(r[2]), int(r[3]))
                for r in await conn.execute(_PAIRS, params)
            ]

        rows: list[PairCount] = await self._run(work, write=False)
        return rows

    async def rate_counts(
        self, tenant_id: str, start_ms: int, end_ms: int, ignore_actions: Sequence[str]
    ) -> dict[str, int]:
        """Credited events each user sent in [start_ms, end_ms), but
        `ignore_actions`: user -> count, active users only."""
        params = {"t": tenant_id, "start": _dt(start_ms), "end": _dt(end_ms),
                  "ignore": list(ignore_actions)}  # fmt: skip

        async def work(conn: AsyncConnection) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in await conn.execute(_RATES, params)}

        counts: dict[str, int] = await self._run(work, write=False)
        return counts

    async def times(
        self,
        tenant_id: str,
        users: Sequence[str],
        start_ms: int,
        end_ms: int,
        ignore_actions: Sequence[str],
    ) -> dict[str, list[int]]:
        """The times (ms, sorted) of the events `users` sent in [start_ms,
        end_ms), as `rate_counts` counts them: the first TIMES_PER_USER_MAX
        of each user at most."""
        if not users:
            return {}
        params = {"t": tenant_id, "start": _dt(start_ms), "end": _dt(end_ms),
                  "ignore": list(ignore_actions), "users": sorted(set(users)),
                  "cap": TIMES_PER_USER_MAX}  # fmt: skip

        async def work(conn: AsyncConnection) -> dict[str, list[int]]:
            out: dict[str, list[int]] = defaultdict(list)
            for r in await conn.execute(_TIMES, params):
                out[r[0]].append(_ms(r[1]))
            return dict(out)

        found: dict[str, list[int]] = await self._run(work, write=False)
        return found

    # -- findings and flags ---------------------------------------------------------

    async def record(
        self, tenant_id: str, findings: Sequence[NewFinding], now_ms: int
    ) -> list[tuple[int, str]]:
        """Store the findings never seen before, each on its user's open flag
        or a new one. Returns (flag id, user id) of the flags that gained
        findings, by user. One transaction per user."""
        fresh = await self._unseen(tenant_id, findings)
        gained: list[tuple[int, str]] = []
        for user_id in sorted(fresh):
            # A stable order of a user's findings: two passes inserting the
            # same ones wait on each other, never deadlock.
            mine = sorted(fresh[user_id], key=lambda f: (str(f.signal), f.period_key))

            async def work(conn: AsyncConnection, user_id: str = user_id,
                           mine: list[NewFinding] = mine) -> int | None:  # fmt: skip
                return await _record_user(conn, tenant_id, user_id, mine, _dt(now_ms))

            flag_id: int | None = await self._run(work)
            if flag_id is not None:
                gained.append((flag_id, user_id))
        return gained

    async def _unseen(
        self, tenant_id: str, findings: Sequence[NewFinding]
    ) -> dict[str, list[NewFinding]]:
        """The findings whose key has no row yet, by user (one of each key)."""
        by_key = {(f.user_id, str(f.signal), f.period_key): f for f in findings}
        if not by_key:
            return {}
        users, signals, periods = (list(x) for x in zip(*by_key, strict=True))

        async def work(conn: AsyncConnection) -> set[tuple[str, str, str]]:
            rows = await conn.execute(
                _SEEN, {"t": tenant_id, "users": users, "signals": signals, "periods": periods}
            )
            return {(r[0], r[1], r[2]) for r in rows}

        seen: set[tuple[str, str, str]] = await self._run(work, write=False)
        out: dict[str, list[NewFinding]] = defaultdict(list)
        for key, f in by_key.items():
            if key not in seen:
                out[key[0]].append(f)
        return dict(out)

    async def holding(self, tenant_id: str) -> list[tuple[int, str]]:
        """(flag id, user id) of every open flag of the tenant, oldest first."""

        async def work(conn: AsyncConnection) -> list[tuple[int, str]]:
            return [(int(r[0]), r[1]) for r in await conn.execute(_HOLDING, {"t": tenant_id})]

        rows: list[tuple[int, str]] = await self._run(work, write=False)
        return rows

    async def settled_flags(self, tenant_id: str) -> list[tuple[int, str, int]]:
        """(flag id, user id, points its settlement moved) of every flag
        whose settlement is recorded (rebuild restores their records)."""

        async def work(conn: AsyncConnection) -> list[tuple[int, str, int]]:
            rows = await conn.execute(_SETTLED_FLAGS, {"t": tenant_id})
            return [(int(r[0]), str(r[1]), int(r[2] or 0)) for r in rows]

        rows: list[tuple[int, str, int]] = await self._run(work, write=False)
        return rows

    async def unsettled(self, tenant_id: str) -> list[FlagRecord]:
        """Decided flags whose settlement in Redis is not recorded yet."""

        async def work(conn: AsyncConnection) -> list[FlagRecord]:
            return await _with_findings(conn, await conn.execute(_UNSETTLED, {"t": tenant_id}))

        rows: list[FlagRecord] = await self._run(work, write=False)
        return rows

    async def get(self, tenant_id: str, flag_id: int) -> FlagRecord | None:
        """The flag with its findings; None when the tenant has no such flag."""

        async def work(conn: AsyncConnection) -> FlagRecord | None:
            rows = await _with_findings(
                conn, await conn.execute(_GET, {"t": tenant_id, "flag": flag_id})
            )
            return rows[0] if rows else None

        found: FlagRecord | None = await self._run(work, write=False)
        return found

    async def page(
        self,
        tenant_id: str,
        *,
        state: str | None,
        user_id: str | None,
        limit: int,
        after_flag_id: int | None,
    ) -> tuple[list[FlagRecord], int | None]:
        """Flags newest first (flag id descending) with their findings, and
        the cursor of the next page (the last flag's id) when more follow.
        `state`, `user_id`: only those (None: any)."""
        clauses = ["tenant_id = :t"]
        params: dict[str, Any] = {"t": tenant_id, "limit": limit + 1}
        for name, value in (("state", state), ("user_id", user_id), ("after", after_flag_id)):
            if value is not None:
                clauses.append(_PAGE_CLAUSES[name])
                params[name] = value
        query = text(
            f"SELECT {_FLAG_COLUMNS} FROM farming_flags WHERE {' AND '.join(clauses)} "
            "ORDER BY flag_id DESC LIMIT :limit"
        )

        async def work(conn: AsyncConnection) -> tuple[list[FlagRecord], bool]:
            rows = list(await conn.execute(query, params))
            return await _with_findings(conn, rows[:limit]), len(rows) > limit

        result: tuple[list[FlagRecord], bool] = await self._run(work, write=False)
        flags, more = result
        return flags, (flags[-1].flag_id if more and flags else None)

    async def decide(
        self,
        tenant_id: str,
        flag_id: int,
        *,
        state: str,
        decided_by: str,
        note: str,
        now_ms: int,
        audit: AuditRow | None = None,
    ) -> FlagRecord:
        """Decide an open flag (`state` RELEASED or VOIDED) at now_ms, with
        the call's audit row in the transaction. A flag decided so already
        is returned as it is (the audit row is written: the call did what
        it asked); decided the other way: FlagDecided; no such flag of the
        tenant: RecordMissing. The flag row is locked meanwhile."""
        if state not in DECIDED:
            raise ValueError(f"a flag is decided {' or '.join(DECIDED)}, not {state!r}")

        async def work(conn: AsyncConnection) -> FlagRecord:
            row = (await conn.execute(_LOCK, {"t": tenant_id, "flag": flag_id})).first()
            if row is None:
                raise RecordMissing(f"no flag {flag_id} in tenant {tenant_id}")
            if row[3] == OPEN:
                params = {"state": state, "now": _dt(now_ms), "by": decided_by, "note": note,
                          "flag": flag_id}  # fmt: skip
                row = (await conn.execute(_DECIDE, params)).one()
            elif row[3] != state:
                raise FlagDecided(_flag(row))
            if audit is not None:
                await record(conn, audit)
            return (await _with_findings(conn, [row]))[0]

        decided: FlagRecord = await self._run(work)
        return decided

    async def settled(self, flag_id: int, points: int, now_ms: int) -> bool:
        """Record the settlement of a decided flag (the points Redis moved),
        once: False when it was recorded before (or the flag is open)."""

        async def work(conn: AsyncConnection) -> bool:
            result = await conn.execute(
                _SETTLED, {"flag": flag_id, "points": points, "now": _dt(now_ms)}
            )
            return bool(result.rowcount)

        done: bool = await self._run(work)
        return done


async def _open_flag(
    conn: AsyncConnection, tenant_id: str, user_id: str, now: datetime
) -> tuple[int, bool]:
    """The user's open flag, locked FOR SHARE (a decision waits for this
    transaction), or a new one: (flag id, whether this transaction made it)."""
    params = {"t": tenant_id, "u": user_id, "now": now}
    for _ in range(_OPEN_TRIES):
        found = (await conn.execute(_OPEN_FLAG, params)).scalar()
        if found is not None:
            return int(found), False
        # Waits for a racing insert of the same user's open flag; nothing
        # when it committed (found by the next round), else ours.
        made = (await conn.execute(_NEW_FLAG, params)).scalar()
        if made is not None:
            return int(made), True
    raise RecordChanged(f"the open flag of user {user_id} kept changing; retry", "postgresql")


async def _record_user(
    conn: AsyncConnection,
    tenant_id: str,
    user_id: str,
    findings: Sequence[NewFinding],
    now: datetime,
) -> int | None:
    """Add `findings` to the user's open flag (or a new one): the flag id,
    or None when every one of them was stored meanwhile by someone else."""
    flag_id, made = await _open_flag(conn, tenant_id, user_id, now)
    added = await conn.execute(
        _ADD_FINDINGS,
        {
            "t": tenant_id, "u": user_id, "flag": flag_id, "now": now,
            "signals": [str(f.signal) for f in findings],
            "periods": [f.period_key for f in findings],
            "counterparts": [_json_list(f.counterparts) for f in findings],
            "evidence": [f.evidence for f in findings],
        },
    )  # fmt: skip
    if added.first() is not None:
        return flag_id
    if made:  # a flag with nothing on it is no flag: take ours back
        await conn.execute(_DROP_FLAG, {"flag": flag_id})
    return None
