"""The award store's contract, primitive by primitive: hand-built operations
applied (and restored) straight through AwardStore on a real Redis, no rules
engine in between. Beside the API tests, this is the behaviour suite a new
mechanic compiles onto (service/pointsd/service/domain/steps.py): dedup
(G1), checks in one atomic call (G5), bonus rows (G7), bounds (G10) and
expiry on the service clock (G11)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
import redis as sync_redis

from pointsd.service.domain import (
    SEP,
    BoardRef,
    CreditOp,
    LedgerFacts,
    Metric,
    Period,
    PeriodRef,
    Role,
    StoreCode,
)
from pointsd.service.domain.steps import (
    Accumulate,
    Amount,
    Board,
    BoardSlot,
    Bonus,
    Bump,
    Check,
    Credit,
    Cross,
    Day,
    Distinct,
    Entry,
    First,
    Member,
    Step,
    Threshold,
    Throttle,
)
from pointsd.service.ops import reconcile
from pointsd.storage.entries import KIND_BONUS
from pointsd.storage.keys import counter_field
from pointsd.storage.redis import RestoreOp
from pointsd.storage.redis.awards import AwardStore
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory

A, DUP, CAP, THR = StoreCode.AWARDED, StoreCode.DUPLICATE, StoreCode.CAPPED, StoreCode.THROTTLED
CREDIT = Credit()
DAY_MS = 86_400_000


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    # Store tests need no flusher racing them, except where they drain it.
    return await make_api(flusher="off")


class Ops:
    """Builds operations for one tenant at the test clock's time."""

    def __init__(self, api: Api, clock: TestClock) -> None:
        self.api = api
        self.clock = clock
        now_s = clock() // 1000
        self.day = PeriodRef(Period.DAY, "d-1", now_s + 86_400)
        self.ever = PeriodRef(Period.EVER, "all", 0)

    @property
    def store(self) -> AwardStore:
        return self.api.app.stores.awards

    def op(
        self,
        user: str,
        steps: Sequence[Step],
        *,
        points: int = 5,
        quantity: int = 1,
        event_id: str | None = None,
        at_ms: int | None = None,
        **fields: Any,
    ) -> CreditOp:
        at = self.clock() if at_ms is None else at_ms
        event_id = event_id or uuid.uuid4().hex
        return CreditOp(
            tenant_id=self.api.tenant,
            user_id=user,
            role=Role.ACTOR,
            event_id=event_id,
            fingerprint=fields.pop("fingerprint", "f" * 16),
            points_per_unit=points,
            quantity=quantity,
            occurred_at_ms=at,
            recorded_at_ms=self.clock(),
            dedup_expires_at_s=at // 1000 + 86_400,
            steps=tuple(steps),
            facts=LedgerFacts("act", "", "", "", quantity, {}, "Act"),
            **fields,
        )

    async def apply(self, *ops: CreditOp) -> list[Any]:
        return await self.store.apply(list(ops))

    async def one(self, op: CreditOp) -> Any:
        (result,) = await self.store.apply([op])
        return result

    def shard(self, user: str) -> Any:
        return self.api.app.stores.topology.user_shard(self.api.tenant, user)

    def counter(self, rds: sync_redis.Redis, user: str, period: PeriodRef, name: str) -> int:
        raw = rds.hget(self.shard(user).counters(period), counter_field(user, name))
        return int(raw) if raw is not None else 0

    def balance(self, rds: sync_redis.Redis, user: str) -> tuple[int, int]:
        key = self.shard(user).balances
        available, earned = rds.hmget(key, [f"{user}|a", f"{user}|e"])
        return int(available or 0), int(earned or 0)

    def outbox(self, rds: sync_redis.Redis, user: str) -> list[dict[bytes, bytes]]:
        """The user's entries in their shard's outbox (the user is the
        entry data's fourth part)."""
        raw: Any = rds.xrange(self.shard(user).outbox)
        entries: list[dict[bytes, bytes]] = [fields for _, fields in raw]
        return [e for e in entries if e[b"d"].split(SEP.encode())[3] == user.encode()]


@pytest.fixture
def ops(api: Api, clock: TestClock) -> Ops:
    return Ops(api, clock)


# --------------------------------------------------------------------------
# The dedup record and the balance


async def test_an_operation_applies_once_and_replays_say_what_it_did(
    ops: Ops, rds: sync_redis.Redis
) -> None:
    first = ops.op("ann", [CREDIT], event_id="e1")
    assert (await ops.one(first)).code is A
    again = await ops.one(first)
    assert (again.code, again.points, again.balance, again.original) == (DUP, 5, 5, A)
    other = replace(first, fingerprint="0" * 16, points_per_unit=50)
    reused = await ops.one(other)
    assert (reused.code, reused.points, reused.original) == (StoreCode.ID_REUSED, 5, A)
    assert ops.balance(rds, "ann") == (5, 5)
    assert len(ops.outbox(rds, "ann")) == 1


async def test_credit_moves_the_balance_and_writes_the_entry(
    ops: Ops, rds: sync_redis.Redis
) -> None:
    done = await ops.apply(ops.op("ann", [CREDIT], points=3), ops.op("ann", [CREDIT], points=4))
    assert [(r.code, r.points, r.balance) for r in done] == [(A, 3, 3), (A, 4, 7)]
    entries = ops.outbox(rds, "ann")
    assert [(e[b"p"], e[b"b"]) for e in entries] == [(b"3", b"3"), (b"4", b"7")]
    # Without a Credit step nothing moves and nothing is written.
    quiet = await ops.one(ops.op("bob", [Bump(ops.day, "n", Amount.COUNT)]))
    assert (quiet.code, quiet.points, quiet.balance) == (A, 5, 0)
    assert ops.balance(rds, "bob") == (0, 0) and ops.outbox(rds, "bob") == []


async def test_a_request_split_over_calls_and_round_trips_answers_in_op_order(
    ops: Ops, rds: sync_redis.Redis
) -> None:
    # The hot path cuts a request into award.lua calls of at most
    # ops_per_call_max credits and round trips of ops_per_round_trip_max:
    # every credit is applied once and its result lands at its own index.
    store = ops.store
    calls: list[int] = []
    saved = (store.ops_per_call_max, store.ops_per_round_trip_max, store.observer)
    store.ops_per_call_max, store.ops_per_round_trip_max = 3, 5
    store.observer = lambda _s, sizes: calls.extend(sizes)
    try:
        users = ["ann", "bob", "cid"]
        batch = [ops.op(users[i % 3], [CREDIT], points=i + 1) for i in range(13)]
        done = await ops.apply(*batch)
    finally:
        store.ops_per_call_max, store.ops_per_round_trip_max, store.observer = saved
    assert [(r.code, r.points) for r in done] == [(A, i + 1) for i in range(13)]
    running: dict[str, int] = {}
    for op, r in zip(batch, done, strict=True):
        running[op.user_id] = running.get(op.user_id, 0) + op.points_per_unit
        assert r.balance == running[op.user_id], op.user_id
    for user in users:
        assert ops.balance(rds, user) == (running[user], running[user])
    assert sum(calls) == 13 and max(calls) <= 3 and len(calls) >= 5


# --------------------------------------------------------------------------
# Checks


async def test_a_count_check_refuses_at_its_max_and_names_itself(
    ops: Ops, rds: sync_redis.Redis
) -> None:
    cap = Check(ops.day, "c", Metric.COUNT, 2, "twice a day", number=2)
    program = [cap, CREDIT, Bump(ops.day, "c", Amount.COUNT)]
    results = await ops.apply(*(ops.op("ann", program) for _ in range(3)))
    assert [(r.code, r.limit_index) for r in results] == [(A, 0), (A, 0), (CAP, 2)]
    assert ops.counter(rds, "ann", ops.day, "c") == 2
    assert ops.balance(rds, "ann") == (10, 10)


async def test_a_points_check_clips_then_refuses(ops: Ops, rds: sync_redis.Redis) -> None:
    cap = Check(ops.day, "p", Metric.POINTS, 8, "8 points a day", number=1)
    program = [cap, CREDIT, Bump(ops.day, "p", Amount.POINTS)]
    results = await ops.apply(*(ops.op("ann", program, points=3) for _ in range(4)))
    assert [(r.code, r.points, r.limit_index) for r in results] == [
        (A, 3, 0), (A, 3, 0), (A, 2, 1), (CAP, 0, 1),
    ]  # fmt: skip
    assert ops.counter(rds, "ann", ops.day, "p") == 8


async def test_a_refusal_is_recorded_and_replayed(ops: Ops) -> None:
    cap = Check(ops.day, "c", Metric.COUNT, 1, "once", number=1)
    await ops.one(ops.op("ann", [cap, CREDIT, Bump(ops.day, "c", Amount.COUNT)]))
    refused = ops.op("ann", [cap, CREDIT, Bump(ops.day, "c", Amount.COUNT)], event_id="late")
    assert (await ops.one(refused)).code is CAP
    replay = await ops.one(refused)
    assert (replay.code, replay.original, replay.limit_index) == (DUP, CAP, 1)


async def test_a_throttle_compares_with_every_awarded_time(ops: Ops, clock: TestClock) -> None:
    t = clock()
    throttle = Throttle("poke", 60_000, 3_600_000)
    at = [t, t + 30_000, t + 61_000, t - 30_000, t - 70_000]
    results = await ops.apply(*(ops.op("ann", [throttle, CREDIT], at_ms=x) for x in at))
    assert [r.code for r in results] == [A, THR, A, THR, A]
    # Another user, another name: not throttled.
    others = await ops.apply(
        ops.op("bob", [throttle, CREDIT], at_ms=t),
        ops.op("ann", [Throttle("wave", 60_000, 3_600_000), CREDIT], at_ms=t),
    )
    assert [r.code for r in others] == [A, A]


async def test_accumulate_pays_per_whole_unit_crossed(ops: Ops, rds: sync_redis.Redis) -> None:
    acc = Accumulate(ops.day, "q", 30)
    program = [acc, CREDIT]
    results = await ops.apply(
        *(ops.op("ann", program, points=2, quantity=q) for q in (20, 20, 25, 5))
    )
    assert [r.points for r in results] == [0, 2, 2, 0]
    assert ops.counter(rds, "ann", ops.day, "q") == 70


async def test_nothing_is_written_when_a_check_refuses(ops: Ops, rds: sync_redis.Redis) -> None:
    program = [
        Accumulate(ops.day, "q", 10),
        Check(ops.day, "c", Metric.COUNT, 1, "once", number=1),
        CREDIT,
        Bump(ops.day, "c", Amount.COUNT),
        Bump(ops.day, "n", Amount.QUANTITY),
    ]
    await ops.one(ops.op("ann", program, quantity=15))
    assert (await ops.one(ops.op("ann", program, quantity=15))).code is CAP
    assert ops.counter(rds, "ann", ops.day, "q") == 15  # the refused quantity is not collected
    assert ops.counter(rds, "ann", ops.day, "n") == 15
    assert ops.balance(rds, "ann") == (5, 5)


# --------------------------------------------------------------------------
# Effects


async def test_bumps_count_points_and_quantities_in_their_period(
    ops: Ops, rds: sync_redis.Redis, clock: TestClock
) -> None:
    week = PeriodRef(Period.WEEK, "w-1", clock() // 1000 + 3600)
    program = [
        CREDIT,
        Bump(ops.day, "c", Amount.COUNT),
        Bump(week, "p", Amount.POINTS),
        Bump(ops.ever, "q", Amount.QUANTITY),
    ]
    # Points per unit x quantity: 12.
    await ops.apply(ops.op("ann", program, points=4, quantity=3))
    assert ops.counter(rds, "ann", ops.day, "c") == 1
    assert ops.counter(rds, "ann", week, "p") == 12
    assert ops.counter(rds, "ann", ops.ever, "q") == 3
    # State expires on the service clock: the week's hash lives about an hour.
    assert 3500 < rds.ttl(ops.shard("ann").counters(week)) <= 3600
    assert rds.ttl(ops.shard("ann").counters(ops.ever)) == -1


async def test_distinct_counts_each_member_once_up_to_its_bound(ops: Ops) -> None:
    thanked = Distinct(ops.day, "thanked", Member.COUNTERPART, 2)
    milestone = Cross((Threshold(2, Bonus("two-colleagues", 7, "Thanked two colleagues")),))
    program = [CREDIT, thanked, milestone]
    results = await ops.apply(
        *(ops.op("ann", program, points=1, counterpart=who) for who in ("bo", "bo", "cy", "di"))
    )
    assert [r.bonuses for r in results] == [(), (), (("two-colleagues", 7),), ()]
    assert [r.balance for r in results] == [1, 2, 10, 11]


async def test_day_runs_ignore_arrival_order_and_replays(ops: Ops) -> None:
    streak = Cross(
        (
            Threshold(3, Bonus("streak-3", 10, "3 days in a row")),
            Threshold(5, Bonus("streak-5", 20, "5 days in a row")),
        )
    )

    def active(user: str, day: int) -> CreditOp:
        return ops.op(user, [CREDIT, Day("login", day, 400, 86_400 * 30), streak], points=1)

    # Days 10, 11, 13 then 12 (late): the run 10-13 is 4 long when 12 arrives.
    got = [await ops.one(active("ann", d)) for d in (10, 11, 13, 12)]
    assert [r.bonuses for r in got] == [(), (), (), (("streak-3", 10),)]
    # Another event on a marked day changes nothing.
    assert (await ops.one(active("ann", 12))).bonuses == ()
    # Day 14 makes 5; filling no gap, a run crosses each threshold once.
    assert (await ops.one(active("ann", 14))).bonuses == (("streak-5", 20),)
    # The same days in reverse order for another user: the same bonuses.
    back = [await ops.one(active("bob", d)) for d in (14, 13, 12, 11, 10)]
    assert [b for r in back for b in r.bonuses] == [("streak-3", 10), ("streak-5", 20)]
    # Two runs of 3 and 1 (days 20-22, 24) joined by day 23: 5 now, but the
    # 3-milestone was paid in the first run and is not paid again.
    for d in (20, 21, 22, 24):
        await ops.one(active("cy", d))
    assert (await ops.one(active("cy", 23))).bonuses == (("streak-5", 20),)


async def test_a_cover_bitmap_bridges_a_missed_day(ops: Ops, rds: sync_redis.Redis) -> None:
    def day(d: int) -> Day:
        return Day("login", d, 400, 86_400, cover="frozen")

    cross = Cross((Threshold(3, Bonus("streak-3", 1, "3 days")),))
    await ops.one(ops.op("ann", [CREDIT, day(1), cross]))
    rds.setbit(ops.shard("ann").days("ann", "frozen"), 2, 1)  # day 2 covered
    assert (await ops.one(ops.op("ann", [CREDIT, day(3), cross]))).bonuses == (("streak-3", 1),)


async def test_crossing_lifetime_earned_writes_a_zero_point_milestone(
    api: Api, ops: Ops, sql: Any
) -> None:
    levels = Cross(
        (
            Threshold(10, Bonus("level-2", 0, "Level up: Communicator")),
            Threshold(20, Bonus("level-3", 0, "Level up: Team star")),
        )
    )
    program = [CREDIT, levels]
    results = await ops.apply(*(ops.op("ann", program, points=6) for _ in range(4)))
    assert [r.bonuses for r in results] == [(), (("level-2", 0),), (), (("level-3", 0),)]
    await api.app.flusher.drain(30)
    rows = sql(
        "SELECT entry_key, kind, points, reason FROM ledger_entries WHERE tenant_id = :t "
        "AND kind = :k ORDER BY id",
        t=api.tenant,
        k=KIND_BONUS,
    )
    assert [(k.rsplit(":", 1)[1], kind, p, r) for k, kind, p, r in rows] == [
        ("level-2", "bonus", 0, "Level up: Communicator"),
        ("level-3", "bonus", 0, "Level up: Team star"),
    ]
    assert (await reconcile(api.app)).clean


async def test_bonus_points_are_credited_written_and_replayed(
    api: Api, ops: Ops, sql: Any, rds: sync_redis.Redis
) -> None:
    welcome = Entry(Bonus("welcome", 50, "Welcome bonus"))
    first = ops.op("ann", [CREDIT, welcome], points=5, event_id="hello")
    done = await ops.one(first)
    assert (done.code, done.points, done.balance, done.bonuses) == (A, 5, 55, (("welcome", 50),))
    replay = await ops.one(first)
    assert (replay.code, replay.balance, replay.bonuses) == (DUP, 55, (("welcome", 50),))
    assert ops.balance(rds, "ann") == (55, 55)
    await api.app.flusher.drain(30)
    rows = sql(
        "SELECT entry_key, kind, points, balance_after FROM ledger_entries WHERE tenant_id = :t "
        "ORDER BY id",
        t=api.tenant,
    )
    assert [tuple(r) for r in rows] == [
        ("e:hello:a:ann", "award", 5, 5),
        ("e:hello:a:ann:welcome", "bonus", 50, 55),
    ]
    report = await reconcile(api.app)
    assert report.clean


async def test_boards_sum_paid_credits_per_member_within_newcomer_windows(
    ops: Ops, rds: sync_redis.Redis, clock: TestClock
) -> None:
    now = clock()
    slots = (
        BoardSlot("pts", Period.EVER, "all", "t", Metric.POINTS, 0),
        BoardSlot("new", Period.EVER, "all", "t", Metric.COUNT, 0, newcomer_window_ms=10 * DAY_MS),
        BoardSlot("grp", Period.EVER, "all", "t", Metric.COUNT, 0, group_member=True),
        BoardSlot("dep", Period.EVER, "all", "d", Metric.POINTS, 0),
    )
    program = [CREDIT, First(), Board(slots)]
    await ops.apply(
        ops.op("old", program, points=2, at_ms=now - 20 * DAY_MS, group="g1"),
        ops.op("old", program, points=2, group="g1", department="rd"),
        ops.op("new", program, points=3, group="g1", department="rd"),
        ops.op("new", [CREDIT, First(), Board(slots)], points=0),  # unpaid: no board moves
    )
    shard = ops.shard("old")

    def board(name: str, scope: str = "t") -> dict[str, float]:
        key = shard.board(BoardRef(name, scope, Period.EVER, "all"))
        raw: Any = rds.zrange(key, 0, -1, withscores=True)
        return {m.decode(): -s for m, s in raw}

    assert board("pts") == {"old": 4, "new": 3}
    # "old" was new 20 days ago; its credit today is past the 10-day window.
    assert board("new") == {"old": 1, "new": 1}
    assert board("grp") == {"g1": 3}
    assert board("dep", "d:rd") == {"old": 2, "new": 3}
    assert rds.smembers(shard.board_scopes("dep", Period.EVER, "all")) == {b"d:rd"}


# --------------------------------------------------------------------------
# Refusing everything


async def test_a_full_outbox_refuses_paying_credits_and_applies_nothing(
    make_api: ApiFactory, clock: TestClock, rds: sync_redis.Redis
) -> None:
    api = await make_api(flusher="off", outbox_entries_max=2)
    ops = Ops(api, clock)
    program = [CREDIT, Bump(ops.day, "c", Amount.COUNT)]
    results = await ops.apply(*(ops.op("ann", program) for _ in range(3)))
    assert [r.code for r in results] == [A, A, StoreCode.BACKPRESSURE]
    assert ops.counter(rds, "ann", ops.day, "c") == 2


async def test_maintenance_refuses_everything(ops: Ops, rds: sync_redis.Redis) -> None:
    shard = ops.shard("ann")
    rds.set(shard.maintenance, "rebuild")
    try:
        result = await ops.one(ops.op("ann", [CREDIT]))
        assert result.code is StoreCode.MAINTENANCE
        assert ops.balance(rds, "ann") == (0, 0)
        assert rds.get(shard.dedup("x", True)) is None
    finally:
        rds.delete(shard.maintenance)


# --------------------------------------------------------------------------
# Restore (rebuild) mode


async def test_restore_replays_state_without_moving_balances(
    ops: Ops, rds: sync_redis.Redis
) -> None:
    shard = ops.shard("ann")
    rds.set(shard.maintenance, "rebuild")  # a rebuild holds it: restore goes on
    try:
        program = [Bump(ops.day, "c", Amount.COUNT), Bump(ops.day, "p", Amount.POINTS), First()]
        first = ops.op("ann", program, event_id="r1")
        capped = ops.op("ann", (), event_id="r2")
        results = await ops.store.restore(
            [RestoreOp(first, 7, 40), RestoreOp(capped, 0, 40, code=StoreCode.CAPPED)]
        )
        assert [(r.code, r.points, r.balance) for r in results] == [(A, 7, 40), (A, 0, 40)]
    finally:
        rds.delete(shard.maintenance)
    assert ops.counter(rds, "ann", ops.day, "c") == 1
    assert ops.counter(rds, "ann", ops.day, "p") == 7
    assert ops.balance(rds, "ann") == (0, 0) and ops.outbox(rds, "ann") == []
    # The dedup records say what the ledger said: replays stay exactly-once.
    again = await ops.apply(first, capped)
    assert [(r.code, r.original, r.points, r.balance) for r in again] == [
        (DUP, A, 7, 40), (DUP, CAP, 0, 40),
    ]  # fmt: skip
    # A record already past its retention (expires 0) is not kept.
    gone = replace(ops.op("ann", (), event_id="r3"), dedup_expires_at_s=0)
    await ops.store.restore([RestoreOp(gone, 1, 1)])
    assert rds.get(shard.dedup("r3", True)) is None


# --------------------------------------------------------------------------
# The previous wire and record formats


async def test_dedup_records_of_the_previous_format_are_read(
    ops: Ops, rds: sync_redis.Redis
) -> None:
    """Records written by award.lua before wire format 2 (no bonuses) keep
    meaning the same: a replay after the upgrade is a duplicate of them."""
    shard = ops.shard("ann")
    fp = "0123456789abcdef"
    rds.set(shard.dedup("old-award", True), f"1:5:25:0:{fp}", ex=3600)
    rds.set(shard.dedup("old-cap", True), f"3:0:25:2:{fp}", ex=3600)
    results = await ops.apply(
        ops.op("ann", [CREDIT], event_id="old-award", fingerprint=fp),
        ops.op("ann", [CREDIT], event_id="old-cap", fingerprint=fp),
        ops.op("ann", [CREDIT], event_id="old-cap", fingerprint="f" * 16),
    )
    seen = [(r.code, r.original, r.points, r.balance, r.limit_index, r.bonuses) for r in results]
    assert seen == [
        (DUP, A, 5, 25, 0, ()),
        (DUP, CAP, 0, 25, 2, ()),
        (StoreCode.ID_REUSED, CAP, 0, 25, 2, ()),
    ]  # fmt: skip
    assert ops.balance(rds, "ann") == (0, 0)


async def test_a_call_in_another_wire_format_is_refused(ops: Ops) -> None:
    from pointsd.storage.errors import StorageError

    store = ops.store
    keys = [ops.shard("ann").maintenance, ops.shard("ann").balances, ops.shard("ann").outbox]
    with pytest.raises(StorageError, match="wire format 2"):
        await store.script.run(store.redis, keys, ["1", "apply", 0, 0, "[]", "[]", "[]"])
