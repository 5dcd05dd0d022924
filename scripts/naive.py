"""The design a team would write first, kept as a benchmark baseline only
(the service never uses it): one PostgreSQL transaction per credit that
checks dedup and caps with SELECT ... FOR UPDATE, then updates counters, the
balance and the same leaderboards, and inserts the ledger row. Same rules, same events, same
outcomes as the service; only the storage design differs.

Tables live in the schema `bench_naive`, created and emptied by `prepare`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.domain import CreditOp, Metric
from pointsd.service.domain.steps import Board, Check
from pointsd.service.rules import Plan, RulesEngine
from pointsd.service.validation import InvalidField, Limits, event_from_pb

__all__ = ["NaiveStore", "run_naive"]

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS bench_naive;
CREATE TABLE IF NOT EXISTS bench_naive.events (
    tenant_id text, event_id text, role text, outcome text, points bigint,
    PRIMARY KEY (tenant_id, event_id, role));
CREATE TABLE IF NOT EXISTS bench_naive.counters (
    tenant_id text, user_id text, period text, counter text, value bigint NOT NULL,
    PRIMARY KEY (tenant_id, user_id, period, counter));
CREATE TABLE IF NOT EXISTS bench_naive.balances (
    tenant_id text, user_id text, available bigint NOT NULL, earned bigint NOT NULL,
    PRIMARY KEY (tenant_id, user_id));
CREATE TABLE IF NOT EXISTS bench_naive.boards (
    tenant_id text, board text, period text, scope text, member text, score bigint NOT NULL,
    PRIMARY KEY (tenant_id, board, period, scope, member));
CREATE TABLE IF NOT EXISTS bench_naive.ledger (
    id bigserial PRIMARY KEY, tenant_id text, entry_key text, user_id text, points bigint,
    balance_after bigint, action text, occurred_at timestamptz, recorded_at timestamptz,
    UNIQUE (tenant_id, entry_key));
TRUNCATE bench_naive.events, bench_naive.counters, bench_naive.balances, bench_naive.boards,
    bench_naive.ledger;
"""


class NaiveStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def apply(self, op: CreditOp, action: str) -> str:
        async with self.pool.connection() as conn, conn.transaction():
            seen = await conn.execute(
                "INSERT INTO bench_naive.events VALUES (%s, %s, %s, 'pending', 0) "
                "ON CONFLICT DO NOTHING",
                (op.tenant_id, op.event_id, op.role.letter),
            )
            if seen.rowcount == 0:
                return "DUPLICATE"
            points = op.points_per_unit * op.quantity
            for lim in op.steps_of(Check):
                key = (op.tenant_id, op.user_id, lim.period.key, lim.counter)
                await conn.execute(
                    "INSERT INTO bench_naive.counters VALUES (%s, %s, %s, %s, 0) "
                    "ON CONFLICT DO NOTHING",
                    key,
                )
                row = await (
                    await conn.execute(
                        "SELECT value FROM bench_naive.counters WHERE tenant_id = %s "
                        "AND user_id = %s AND period = %s AND counter = %s FOR UPDATE",
                        key,
                    )
                ).fetchone()
                used = int(row[0]) if row else 0
                room = lim.max - used
                if (lim.metric is Metric.COUNT and used + 1 > lim.max) or room <= 0:
                    await conn.execute(
                        "UPDATE bench_naive.events SET outcome = 'CAPPED' WHERE tenant_id = %s "
                        "AND event_id = %s AND role = %s",
                        (op.tenant_id, op.event_id, op.role.letter),
                    )
                    return "CAPPED"
                if lim.metric is Metric.POINTS:
                    points = min(points, room)
            for lim in op.steps_of(Check):
                await conn.execute(
                    "UPDATE bench_naive.counters SET value = value + %s WHERE tenant_id = %s "
                    "AND user_id = %s AND period = %s AND counter = %s",
                    (
                        1 if lim.metric is Metric.COUNT else points,
                        op.tenant_id,
                        op.user_id,
                        lim.period.key,
                        lim.counter,
                    ),
                )
            balance = await (
                await conn.execute(
                    "INSERT INTO bench_naive.balances VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (tenant_id, user_id) DO UPDATE SET "
                    "available = balances.available + EXCLUDED.available, "
                    "earned = balances.earned + EXCLUDED.earned RETURNING available",
                    (op.tenant_id, op.user_id, points, points),
                )
            ).fetchone()
            await conn.execute(
                "INSERT INTO bench_naive.ledger (tenant_id, entry_key, user_id, points, "
                "balance_after, action, occurred_at, recorded_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, to_timestamp(%s / 1000.0), now())",
                (
                    op.tenant_id,
                    op.entry_key,
                    op.user_id,
                    points,
                    balance[0] if balance else points,
                    action,
                    op.occurred_at_ms,
                ),
            )
            # The same leaderboards as the service keeps, one upsert per board
            # instance (the service's newcomer window is left out: cheaper).
            for slot in (s for board in op.steps_of(Board) for s in board.slots):
                scope_id = op.department if slot.scope == "d" else op.group
                if slot.scope != "t" and not scope_id:
                    continue
                member = op.group if slot.group_member else op.user_id
                if not member:
                    continue
                ref = slot.ref(scope_id if slot.scope != "t" else "")
                await conn.execute(
                    "INSERT INTO bench_naive.boards VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (tenant_id, board, period, scope, member) "
                    "DO UPDATE SET score = boards.score + EXCLUDED.score",
                    (
                        op.tenant_id,
                        ref.board,
                        f"{ref.kind.value}:{ref.key}",
                        ref.scope,
                        member,
                        1 if slot.metric is Metric.COUNT else points,
                    ),
                )
            await conn.execute(
                "UPDATE bench_naive.events SET outcome = 'AWARDED', points = %s "
                "WHERE tenant_id = %s AND event_id = %s AND role = %s",
                (points, op.tenant_id, op.event_id, op.role.letter),
            )
            return "AWARDED"


async def run_naive(
    conninfo: str,
    engine: RulesEngine,
    events: list[pb.ActivityEvent],
    limits: Limits,
    *,
    concurrency: int = 32,
    duration_s: float = 10.0,
) -> dict[str, Any]:
    """Apply `events` with `concurrency` workers for at most `duration_s`."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(_SCHEMA)
    pool = AsyncConnectionPool(conninfo, min_size=concurrency, max_size=concurrency, open=False)
    await pool.open(wait=True)
    store = NaiveStore(pool)
    outcomes: dict[str, int] = {}
    queue = list(reversed(events))
    deadline = time.monotonic() + duration_s
    done = 0
    deadlocks = 0

    async def worker() -> None:
        nonlocal done, deadlocks
        while queue and time.monotonic() < deadline:
            msg = queue.pop()
            now_ms = int(time.time() * 1000)
            try:
                event = event_from_pb(msg, now_ms, limits)
            except InvalidField:
                continue
            planned = engine.plan(event, recorded_at_ms=now_ms)
            if isinstance(planned, Plan):
                for op in planned.ops:
                    try:
                        outcome = await store.apply(op, planned.rule.key)
                    except psycopg.errors.DeadlockDetected:
                        deadlocks += 1
                        outcome = "DEADLOCK"
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    await pool.close()
    return {
        "events": done,
        "duration_s": round(elapsed, 3),
        "events_per_s": round(done / elapsed, 1) if elapsed else 0.0,
        "outcomes": outcomes,
        "deadlocks": deadlocks,
    }
