"""The farming detector on real PostgreSQL and Redis (issue 12, "Farming
held for review"): ledger rows of a scripted ring, a pair, a bot and honest
noise; the pass (service/pointsd/service/farming.py) flags exactly the
farmers with their evidence and holds them in Redis; two passes racing make
one open flag per user and one row per finding; a judged finding is never
raised again; a decision is idempotent, refuses the opposite one, writes its
audit row in its transaction and is settled by the next pass when the
process that made it did not; a hold lost in Redis is put back; and, end to
end through gRPC, a flagged pair's further awards are held, a release pays
them once and a void cancels them."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis as sync_redis

from pointsd.service import farming
from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.app import App
from pointsd.service.clock import parse_instant
from pointsd.service.errors import FailedPrecondition, InvalidArgument, NotFound
from pointsd.service.farming import FarmingPass, PassReport
from pointsd.service.rules import RuleBook, load_rule_file, parse_rule_book
from pointsd.service.rules.loader import without_progression
from pointsd.storage.entries import LedgerRow
from pointsd.storage.postgres.audit import AuditRow
from pointsd.storage.postgres.farming import OPEN, RELEASED, VOIDED, FlagRecord
from tests.clock import TestClock
from tests.conftest import ApiFactory, Servers, new_tenant, settings_for, wait_for
from tests.helpers import ev

Sql = Callable[..., list[Any]]
TZ = ZoneInfo("Asia/Shanghai")
# Thursday afternoon of ISO week 2026-W49 (Monday 30 Nov - Sunday 6 Dec) in Shanghai.
NOW = "2026-12-03T14:30:00+08:00"
NOW_MS = parse_instant(NOW)
WEEK = "2026-W49"
HOUR = "2026-12-03T14"
MONDAY_MS = parse_instant("2026-11-30T09:00:00+08:00")
HOUR_START_MS = parse_instant("2026-12-03T14:00:00+08:00")
RING = ["r1", "r2", "r3", "r4"]
PAIR = ["p1", "p2"]
FARMERS = {**{u: "ring" for u in RING}, **{u: "reciprocity" for u in PAIR}, "bot": "rate"}

# The thresholds these scenarios are built for, spelled out (the defaults are
# tuned on simulated traffic and may move).
THRESHOLDS: dict[str, Any] = {
    "reciprocity": {"min_each_way": 15, "min_share_percent": 30},
    "ring": {"max_counterparts": 3, "min_each_way": 2, "min_share_percent": 60,
             "min_received": 20},
    "rate": {"min_events_per_hour": 60, "median_multiple": 10, "spacing_min_events": 20,
             "spacing_max_cv_percent": 15},
}  # fmt: skip

OpenApp = Callable[..., Awaitable[App]]


def farming_book(tenant: str, **block: Any) -> RuleBook:
    """The default rule set (no progression) with THRESHOLDS and `block`."""
    doc = load_rule_file(None)
    without_progression(doc)
    doc["rule_sets"]["default"]["farming"] = {**THRESHOLDS, **block}
    doc["tenants"] = [{"id": tenant, "timezone": TZ.key, "shards": 1}]
    return parse_rule_book(doc)


class StoppedClock:
    """A service clock that reads NOW until a test moves it: flags and
    decisions carry exact times."""

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def __call__(self) -> int:
        return self.at_ms


@pytest.fixture
async def open_app(
    servers: Servers, tmp_path: Path, rds: sync_redis.Redis
) -> AsyncIterator[OpenApp]:
    """Apps on the real servers with the service clock at NOW, and no gRPC
    server (so no background pass runs beside the test's)."""
    opened: list[tuple[App, str]] = []

    async def factory(tenant: str, **block: Any) -> App:
        app = await App.open(
            settings_for(servers, tmp_path),
            rules=farming_book(tenant, **block),
            clock=StoppedClock(NOW_MS),
        )
        opened.append((app, tenant))
        return app

    yield factory
    for app, tenant in opened:
        await app.close()
        for key in rds.scan_iter(match=f"pts:{{{tenant}:*", count=1000):
            rds.delete(key)


class Rows:
    """Award rows as the flusher writes them: a like credits its giver
    (role a) and its receiver (role t, counterpart the giver)."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.rows: list[LedgerRow] = []

    def _row(self, user: str, role: str, action: str, other: str, eid: str, at: int) -> LedgerRow:
        return LedgerRow(
            tenant_id=self.tenant, entry_key=f"e:{eid}:{role}", user_id=user, points=1,
            balance_after=1, kind="award", action=action, event_id=eid, role=role,
            counterpart_id=other, group_id="", department_id="", quantity=1, reason=action,
            occurred_at_ms=at, recorded_at_ms=at,
        )  # fmt: skip

    def like(self, giver: str, receiver: str, at: int, times: int = 1) -> None:
        for k in range(times):
            eid = uuid.uuid4().hex
            self.rows.append(self._row(giver, "a", "like", receiver, eid, at + k * 60_000))
            self.rows.append(self._row(receiver, "t", "like", giver, eid, at + k * 60_000))

    def reply(self, user: str, at: int) -> None:
        self.rows.append(self._row(user, "a", "reply", "", uuid.uuid4().hex, at))


def farmed_week(tenant: str) -> Rows:
    """A ring of four (7 likes each way), a pair (20 each way), a bot
    replying every 30 s since 14:00, and 40 honest colleagues around them:
    likes drawn Zipf-skewed (scripts/loadgen.py's shape), a popular one
    among them, and a few replies each this hour at human moments."""
    rng = random.Random(12)
    rows = Rows(tenant)
    for i, a in enumerate(RING):
        for j, b in enumerate(RING):
            if a != b:
                rows.like(a, b, MONDAY_MS + (i * 4 + j) * 3_600_000, 7)
    rows.like("p1", "p2", MONDAY_MS + 86_400_000, 20)
    rows.like("p2", "p1", MONDAY_MS + 86_400_000 + 30_000, 20)
    honest_colleagues(rows, rng)
    for k in range(60):
        rows.reply("bot", HOUR_START_MS + k * 30_000)
    return rows


def honest_colleagues(rows: Rows, rng: random.Random) -> None:
    honest = [f"h{i:02d}" for i in range(40)]
    weights = [1 / (rank + 1) for rank in range(len(honest))]
    for giver in honest:
        for receiver in rng.choices(honest, weights, k=10):
            if receiver != giver:
                rows.like(giver, receiver, MONDAY_MS + rng.randrange(3 * 86_400_000))
    # A popular colleague: 30 like pop twice, pop likes 10 of them back twice.
    for giver in honest[:30]:
        rows.like(giver, "pop", MONDAY_MS + rng.randrange(3 * 86_400_000), 2)
    for receiver in honest[:10]:
        rows.like("pop", receiver, MONDAY_MS + rng.randrange(3 * 86_400_000), 2)
    for user in honest:
        for _ in range(rng.randint(1, 5)):
            rows.reply(user, HOUR_START_MS + rng.randrange(30 * 60_000))


async def seeded(open_app: OpenApp) -> tuple[App, str]:
    tenant = new_tenant("farm")
    app = await open_app(tenant)
    result = await app.stores.ledger.write(farmed_week(tenant).rows)
    assert result.conflicts == []
    return app, tenant


async def flags_by_user(app: App, tenant: str) -> dict[str, FlagRecord]:
    flags, more = await app.stores.farming.page(
        tenant, state=None, user_id=None, limit=100, after_flag_id=None
    )
    assert more is None
    return {f.user_id: f for f in flags}


async def held(app: App, tenant: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for shard in app.stores.topology.tenant_shards(tenant):
        out.update(await app.stores.holds.held_users(shard))
    return out


def audit_row(tenant: str, rpc: str = "ReleaseFlag") -> AuditRow:
    return AuditRow(
        call_id=str(uuid.uuid4()), occurred_at=datetime.fromtimestamp(NOW_MS / 1000, UTC),
        caller="reviewer", credential="token test", rpc=rpc, tenant_id=tenant,
        request_json="{}", outcome="OK",
    )  # fmt: skip


# -- the pass --------------------------------------------------------------------


async def test_the_pass_flags_the_farmers_with_evidence_and_holds_them(
    open_app: OpenApp, caplog: pytest.LogCaptureFixture
) -> None:
    app, tenant = await seeded(open_app)
    caplog.set_level("INFO", logger="pointsd.farming")
    report = await app.farming_pass().run_once()
    assert (report.tenants, report.findings, report.held, report.settled) == (1, 7, 7, 0)
    flags = await flags_by_user(app, tenant)
    assert {u: [f.signal for f in flag.findings] for u, flag in flags.items()} == {
        u: [s] for u, s in FARMERS.items()
    }
    assert sorted((u, f) for _, f, u in report.flagged) == sorted(
        (u, flag.flag_id) for u, flag in flags.items()
    )
    for flag in flags.values():
        assert flag.tenant_id == tenant
        assert (flag.state, flag.opened_at_ms, flag.decided_at_ms) == (OPEN, NOW_MS, None)
        assert flag.findings[0].found_at_ms == NOW_MS

    r1 = flags["r1"].findings[0]
    assert (r1.period_key, r1.counterparts) == (WEEK, ("r2", "r3", "r4"))
    assert r1.evidence.startswith(
        f"100% of the 21 credits r1 received in {WEEK} (like, thanks_card) came from 3 "
        "colleagues r1 also credited: r2 7, r3 7, r4 7"
    )
    p1 = flags["p1"].findings[0]
    assert (p1.period_key, p1.counterparts) == (WEEK, ("p2",))
    assert "p1 received 20 from p2 (100% of the 20 p1 received)" in p1.evidence
    bot = flags["bot"].findings[0]
    assert (bot.period_key, bot.counterparts) == (HOUR, ())
    assert f"60 events in hour {HOUR} (Asia/Shanghai)" in bot.evidence
    assert "about every 30.0 s with gaps varying by 0.0%" in bot.evidence

    assert await held(app, tenant) == {u: f.flag_id for u, f in flags.items()}
    # One line per new flag, naming the user and the signal.
    lines = [r.getMessage() for r in caplog.records if r.name == "pointsd.farming"]
    assert len(lines) == 7
    assert any(f"{tenant}/r1 for review: ring {WEEK}" in line for line in lines)

    # A pass later in the week finds the same, stores nothing new, logs nothing.
    caplog.clear()
    again = await FarmingPass(app).run_once(NOW_MS + 60_000)
    assert (again.findings, again.flagged, again.held) == (7, [], 7)
    assert [r for r in caplog.records if r.name == "pointsd.farming"] == []
    assert await flags_by_user(app, tenant) == flags


async def test_two_passes_racing_make_one_open_flag_per_user_and_one_row_per_finding(
    open_app: OpenApp, sql: Sql
) -> None:
    app, tenant = await seeded(open_app)
    other = await open_app(tenant)  # another process: its own pools
    passes = [FarmingPass(app), FarmingPass(other), FarmingPass(app), FarmingPass(other)]
    reports: list[PassReport] = await asyncio.gather(*(p.run_once() for p in passes))
    assert sorted(u for r in reports for _, _, u in r.flagged) == sorted(FARMERS)
    rows = sql(
        "SELECT user_id, count(*) FROM farming_flags WHERE tenant_id = :t GROUP BY user_id",
        t=tenant,
    )
    assert dict(rows) == dict.fromkeys(FARMERS, 1)
    found = sql(
        "SELECT f.user_id, f.signal, f.flag_id = g.flag_id FROM farming_findings f "
        "JOIN farming_flags g ON g.tenant_id = f.tenant_id AND g.user_id = f.user_id "
        "WHERE f.tenant_id = :t",
        t=tenant,
    )
    assert sorted((u, s, same) for u, s, same in found) == sorted(
        (u, s, True) for u, s in FARMERS.items()
    )
    assert set(await held(app, tenant)) == set(FARMERS)


async def test_the_hour_and_the_week_that_just_ended_are_judged_in_full(
    open_app: OpenApp,
) -> None:
    tenant = new_tenant("farm")
    app = await open_app(tenant)
    rows = Rows(tenant)
    # A bot from 13:10 to 13:50, every 30 s; a pair last week.
    for k in range(80):
        rows.reply("bot", HOUR_START_MS - 50 * 60_000 + k * 30_000)
    for u in ("h1", "h2", "h3"):
        rows.reply(u, HOUR_START_MS - 20 * 60_000)
    last_week = MONDAY_MS - 3 * 86_400_000
    rows.like("a", "b", last_week, 16)
    rows.like("b", "a", last_week, 16)
    await app.stores.ledger.write(rows.rows)
    report = await FarmingPass(app).run_once(HOUR_START_MS + 5 * 60_000)
    flags = await flags_by_user(app, tenant)
    assert {u: [(f.signal, f.period_key) for f in g.findings] for u, g in flags.items()} == {
        "bot": [("rate", "2026-12-03T13")],
        "a": [("reciprocity", "2026-W48")],
        "b": [("reciprocity", "2026-W48")],
    }
    assert report.held == 3


async def test_a_tenant_with_signals_off_is_not_judged(open_app: OpenApp) -> None:
    tenant = new_tenant("farm")
    app = await open_app(tenant, enabled=False)
    await app.stores.ledger.write(farmed_week(tenant).rows)
    report = await app.farming_pass().run_once()
    assert (report.tenants, report.findings, report.flagged) == (0, 0, [])
    assert await flags_by_user(app, tenant) == {}


# -- decisions ---------------------------------------------------------------------


async def test_a_released_finding_is_never_raised_again(open_app: OpenApp) -> None:
    app, tenant = await seeded(open_app)
    await app.farming_pass().run_once()
    p1 = (await flags_by_user(app, tenant))["p1"]
    done = await farming.decide(
        app, tenant, p1.flag_id, release=True, note="they sit together", decided_by="reviewer",
        audit_row=None,
    )  # fmt: skip
    assert (done.state, done.decided_by, done.note) == (RELEASED, "reviewer", "they sit together")
    assert done.decided_at_ms is not None and done.settled_at_ms is not None
    assert done.settled_points == 0  # nothing was held yet: the rows predate the hold
    assert "p1" not in await held(app, tenant)
    # The pair goes on being what it was this week: nothing new to review.
    report = await FarmingPass(app).run_once(NOW_MS + 3_600_000)
    assert "p1" not in {u for _, _, u in report.flagged}
    flags = await flags_by_user(app, tenant)
    assert flags["p1"] == done
    assert "p1" not in await held(app, tenant)
    assert "p2" in await held(app, tenant)


async def test_a_decision_is_idempotent_audited_and_refuses_the_opposite(
    open_app: OpenApp, sql: Sql
) -> None:
    app, tenant = await seeded(open_app)
    await app.farming_pass().run_once()
    flag = (await flags_by_user(app, tenant))["r1"]
    first_row = audit_row(tenant)
    first = await farming.decide(
        app, tenant, flag.flag_id, release=False, note="a ring", decided_by="reviewer",
        audit_row=first_row,
    )  # fmt: skip
    assert first.state == VOIDED
    assert [f.signal for f in first.findings] == ["ring"]
    again = await farming.decide(
        app, tenant, flag.flag_id, release=False, note="once more", decided_by="someone else",
        audit_row=audit_row(tenant),
    )  # fmt: skip
    assert again == first  # as decided the first time, settled once
    with pytest.raises(FailedPrecondition) as refused:
        await farming.decide(
            app, tenant, flag.flag_id, release=True, note="", decided_by="reviewer",
            audit_row=(opposite := audit_row(tenant)),
        )  # fmt: skip
    assert f"flag {flag.flag_id} was voided by 'reviewer'" in str(refused.value)
    assert "cannot be released" in str(refused.value)
    calls = {
        str(c): o for c, o in sql("SELECT call_id, outcome FROM audit_log WHERE tenant_id = :t",
                                  t=tenant)
    }  # fmt: skip
    assert calls[first_row.call_id] == "OK"
    assert opposite.call_id not in calls  # the refusal's transaction wrote nothing
    assert await app.stores.farming.get(tenant, flag.flag_id) == first


async def test_a_decision_names_what_is_wrong(open_app: OpenApp) -> None:
    app, tenant = await seeded(open_app)
    await app.farming_pass().run_once()
    flag = (await flags_by_user(app, tenant))["bot"]
    stranger = new_tenant("farm")

    async def decide(tenant_id: str, flag_id: int, note: str = "") -> FlagRecord:
        return await farming.decide(
            app, tenant_id, flag_id, release=True, note=note, decided_by="x", audit_row=None
        )

    with pytest.raises(NotFound, match=f"has no flag {flag.flag_id}"):
        await decide(stranger, flag.flag_id)  # another tenant's flag is no flag of its
    with pytest.raises(NotFound, match="flag_id"):
        await decide(tenant, 2**62)
    with pytest.raises(InvalidArgument, match="flag_id: a flag id is a positive integer"):
        await decide(tenant, 0)
    with pytest.raises(InvalidArgument, match="note: at most 1000 characters, got 1001"):
        await decide(tenant, flag.flag_id, "x" * 1001)
    assert (await app.stores.farming.get(tenant, flag.flag_id)) == flag


async def test_a_decision_left_unsettled_is_settled_by_the_next_pass(open_app: OpenApp) -> None:
    app, tenant = await seeded(open_app)
    await app.farming_pass().run_once()
    flag = (await flags_by_user(app, tenant))["r2"]
    # A process decided in PostgreSQL and died before Redis.
    decided = await app.stores.farming.decide(
        tenant, flag.flag_id, state=RELEASED, decided_by="reviewer", note="", now_ms=NOW_MS
    )
    assert decided.settled_at_ms is None
    assert [f.flag_id for f in await app.stores.farming.unsettled(tenant)] == [flag.flag_id]
    assert "r2" in await held(app, tenant)
    # (An odd millisecond: times come back exact.)
    report = await app.farming_pass().run_once(NOW_MS + 60_401)
    assert report.settled == 1
    assert await app.stores.farming.unsettled(tenant) == []
    settled = await app.stores.farming.get(tenant, flag.flag_id)
    assert settled is not None
    assert (settled.settled_at_ms, settled.settled_points) == (NOW_MS + 60_401, 0)
    assert "r2" not in await held(app, tenant)
    # Recorded once: a second record does nothing.
    assert not await app.stores.farming.settled(flag.flag_id, 5, NOW_MS + 120_000)


async def test_a_decision_whose_redis_does_not_answer_says_it_stands(
    open_app: OpenApp,
) -> None:
    """The decision commits, then Redis is unreachable (a client on a port
    nothing listens on): UNAVAILABLE saying the flag is decided and the
    retry is safe; the retry (Redis back) settles it, once."""
    from pointsd.service.errors import Unfinished
    from pointsd.storage.redis import connect_redis
    from pointsd.storage.redis.holds import HoldStore
    from scripts.procs import free_port

    app, tenant = await seeded(open_app)
    await app.farming_pass().run_once()
    flag = (await flags_by_user(app, tenant))["r2"]
    live = app.stores.holds
    dead = connect_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    app.stores.holds = HoldStore(dead, app.stores.topology, app.clock)
    try:
        with pytest.raises(Unfinished, match=f"flag {flag.flag_id} is released; settling"):
            await farming.decide(app, tenant, flag.flag_id, release=True, note="ok",
                                 decided_by="reviewer", audit_row=None)  # fmt: skip
    finally:
        app.stores.holds = live
        await dead.aclose()
    decided = await app.stores.farming.get(tenant, flag.flag_id)
    assert decided is not None and decided.state == RELEASED and decided.settled_at_ms is None
    again = await farming.decide(app, tenant, flag.flag_id, release=True, note="ok",
                                 decided_by="reviewer", audit_row=None)  # fmt: skip
    assert again.settled_at_ms is not None
    assert "r2" not in await held(app, tenant)


async def test_a_hold_lost_in_redis_is_put_back(open_app: OpenApp, rds: sync_redis.Redis) -> None:
    app, tenant = await seeded(open_app)
    await app.farming_pass().run_once()
    before = await held(app, tenant)
    for shard in app.stores.topology.tenant_shards(tenant):
        rds.delete(shard.holds)
    assert await held(app, tenant) == {}
    report = await app.farming_pass().run_once(NOW_MS + 60_000)
    assert report.held == 7
    assert await held(app, tenant) == before


async def test_pages_of_flags_newest_first_with_filters(open_app: OpenApp) -> None:
    app, tenant = await seeded(open_app)
    await app.farming_pass().run_once()
    store = app.stores.farming
    everything = await flags_by_user(app, tenant)
    ids = sorted((f.flag_id for f in everything.values()), reverse=True)
    seen: list[int] = []
    after = None
    while True:
        page, after = await store.page(
            tenant, state=None, user_id=None, limit=3, after_flag_id=after
        )
        seen += [f.flag_id for f in page]
        assert all(f.findings for f in page)
        if after is None:
            break
    assert seen == ids
    await farming.decide(
        app, tenant, everything["p2"].flag_id, release=True, note="", decided_by="r",
        audit_row=None,
    )  # fmt: skip
    released, _ = await store.page(
        tenant, state=RELEASED, user_id=None, limit=10, after_flag_id=None
    )
    assert [f.user_id for f in released] == ["p2"]
    mine, _ = await store.page(tenant, state=OPEN, user_id="bot", limit=10, after_flag_id=None)
    assert [f.flag_id for f in mine] == [everything["bot"].flag_id]
    assert sorted(u for _, u in await store.holding(tenant)) == sorted(set(FARMERS) - {"p2"})


# -- end to end -----------------------------------------------------------------------


async def test_a_flagged_pair_is_held_then_released_once_and_voided(
    make_api: ApiFactory, tenant: str, clock: TestClock, sql: Sql
) -> None:
    """Likes through gRPC, flushed to the ledger; the pass flags the pair
    and holds both; their next awards are held; a release pays them once,
    a void cancels them, and Redis agrees with the ledger throughout."""
    clock.set(NOW_MS)
    api = await make_api(
        book=farming_book(tenant), event_max_age_s=7 * 86_400, farming_interval_s=3600
    )
    # Five likes a day each way (the receiver's pair cap), Tuesday to Thursday.
    for day in (1, 2, 3):
        at = MONDAY_MS + day * 86_400_000 - 6 * 3_600_000
        for k in range(5):
            for giver, receiver in (("ann", "bob"), ("bob", "ann")):
                await api.stub.RecordActivity(
                    ev(tenant, giver, "like", at_ms=at + k * 60_000, target_user_id=receiver)
                )

    async def flushed() -> bool:
        rows = sql("SELECT count(*) FROM ledger_entries WHERE tenant_id = :t", t=tenant)
        return bool(rows[0][0] == 60)

    await wait_for(flushed)
    report = await api.app.farming_pass().run_once()
    assert sorted(u for _, _, u in report.flagged) == ["ann", "bob"]
    flags = await flags_by_user(api.app, tenant)
    before = {u: await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=tenant, user_id=u))
              for u in ("ann", "bob")}  # fmt: skip

    # Held from now on: ann likes bob once more (both credited, both held).
    await api.stub.RecordActivity(ev(tenant, "ann", "like", target_user_id="cat"))
    await api.stub.RecordActivity(ev(tenant, "cat", "like", target_user_id="bob"))
    ann = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=tenant, user_id="ann"))
    bob = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=tenant, user_id="bob"))
    assert (ann.available, ann.held) == (before["ann"].available, 1)
    assert (bob.available, bob.held) == (before["bob"].available, 1)

    released = await farming.decide(
        api.app, tenant, flags["ann"].flag_id, release=True, note="", decided_by="r",
        audit_row=None,
    )  # fmt: skip
    assert released.settled_points == 1
    again = await farming.decide(
        api.app, tenant, flags["ann"].flag_id, release=True, note="", decided_by="r",
        audit_row=None,
    )  # fmt: skip
    assert again.settled_points == 1
    voided = await farming.decide(
        api.app, tenant, flags["bob"].flag_id, release=False, note="", decided_by="r",
        audit_row=None,
    )  # fmt: skip
    assert voided.settled_points == 1
    ann = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=tenant, user_id="ann"))
    bob = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=tenant, user_id="bob"))
    assert (ann.available, ann.held) == (before["ann"].available + 1, 0)
    assert (bob.available, bob.held) == (before["bob"].available, 0)

    async def drained() -> bool:
        rows = sql(
            "SELECT user_id, state, sum(points) FROM ledger_entries WHERE tenant_id = :t "
            "AND user_id IN ('ann', 'bob') GROUP BY user_id, state",
            t=tenant,
        )
        sums = {(u, s): int(p) for u, s, p in rows}
        return sums.get(("ann", "held"), -1) == 0 and sums.get(("bob", "held"), -1) == 0

    await wait_for(drained)
    paid = sql(
        "SELECT user_id, sum(points) FROM ledger_entries WHERE tenant_id = :t AND state = 'paid' "
        "AND user_id IN ('ann', 'bob') GROUP BY user_id",
        t=tenant,
    )
    assert dict(paid) == {"ann": ann.available, "bob": bob.available}
