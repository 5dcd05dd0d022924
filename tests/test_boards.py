"""Leaderboards through the gRPC API on real Redis and PostgreSQL: ranking and
ties against a pure-Python reference for 1 and 8 shards, around-me, periods,
scopes, newcomers, and what must not move a board."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory, new_tenant
from tests.helpers import ev, now_ms

TZ = ZoneInfo("Asia/Shanghai")
MESSAGE_ACTIONS = {"message.text", "message.voice", "message.video", "file", "image", "reply"}
HELPER_FEEDS = {("reply", pb.ACTOR), ("thanks_card", pb.TARGET), ("like", pb.TARGET)}


def reference_ranking(scores: dict[str, int]) -> list[tuple[int, str, int]]:
    """Competition ranking: score desc, member asc; equal scores share a rank."""
    ordered = sorted(((-s, m) for m, s in scores.items() if s), key=lambda x: (x[0], x[1]))
    out: list[tuple[int, str, int]] = []
    for i, (neg, member) in enumerate(ordered):
        rank = out[-1][0] if out and -neg == out[-1][2] else i + 1
        out.append((rank, member, -neg))
    return out


async def board(api: Api, name: str, period=pb.WEEK, limit=1000, offset=0, **kw):
    return await api.stub.Leaderboard(
        pb.LeaderboardRequest(
            tenant_id=api.tenant, board=name, period=period, limit=limit, offset=offset, **kw
        )
    )


async def rank(api: Api, name: str, member: str, n: int = 0, period=pb.WEEK, **kw):
    return await api.stub.GetRank(
        pb.GetRankRequest(
            tenant_id=api.tenant, board=name, period=period, member_id=member, neighbours=n, **kw
        )
    )


def stream_of_events(tenant: str, seed: int, count: int, users: int) -> list[pb.ActivityEvent]:
    rng = random.Random(seed)
    actions = ["message.text", "reply", "like", "thanks_card", "file", "login", "vote"]
    out = []
    for i in range(count):
        action = rng.choice(actions)
        user = f"u{int(rng.paretovariate(1.2)) % users:04d}"
        extra: dict[str, Any] = {
            "group_id": f"g{rng.randrange(40)}",
            "department_id": f"d{rng.randrange(5)}",
        }
        if action in ("like", "thanks_card"):
            target = f"u{rng.randrange(users):04d}"
            if target == user:
                continue
            extra["target_user_id"] = target
        out.append(ev(tenant, user, action, event_id=f"s{seed}-{i}", **extra))
    return out


# One event's answer: its outcome and (user, role, outcome, points) per credit.
Answer = tuple[int, list[tuple[str, int, int, int]]]


async def _record_stream(api: Api, tenant: str, events: list[pb.ActivityEvent]) -> list[Answer]:
    """Record `events` as `tenant`'s, in batches of 1000."""
    results = []
    for i in range(0, len(events), 1000):
        chunk = [pb.ActivityEvent() for _ in events[i : i + 1000]]
        for c, e in zip(chunk, events[i : i + 1000], strict=True):
            c.CopyFrom(e)
            c.tenant_id = tenant
        resp = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=chunk))
        results.extend(resp.results)
    return [
        (r.outcome, [(c.user_id, c.role, c.outcome, c.points) for c in r.credits]) for r in results
    ]


def _reference_scores(
    events: list[pb.ActivityEvent], answers: list[Answer]
) -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, dict[str, int]]]:
    """What the points, helpers and groups boards (and points per department)
    must show after `events` were answered with `answers`."""
    points: dict[str, int] = defaultdict(int)
    helpers: dict[str, int] = defaultdict(int)
    groups: dict[str, int] = defaultdict(int)
    dept_points: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e, (_outcome, credits) in zip(events, answers, strict=True):
        for user, role, outcome, pts in credits:
            if outcome != pb.AWARDED or pts <= 0:
                continue
            points[user] += pts
            if role == pb.ACTOR:
                dept_points[e.department_id][user] += pts
            if (e.action, role) in HELPER_FEEDS:
                helpers[user] += 1
            if e.action in MESSAGE_ACTIONS:
                groups[e.group_id] += 1
    return points, helpers, groups, dept_points


async def _check_boards(
    api: Api, tenants: tuple[str, ...], cases: list[tuple[str, dict[str, int], dict[str, Any]]]
) -> None:
    for name, scores, extra in cases:
        expected = reference_ranking(scores)
        assert len({s for _, _, s in expected}) < len(expected), "the stream must produce ties"
        for tenant in tenants:
            api.tenant = tenant
            got = await board(api, name, limit=1000, **extra)
            assert [(e.rank, e.member_id, e.score) for e in got.entries] == expected[:1000]
            assert got.total_members == len(expected)
            page = await board(api, name, limit=7, offset=93, **extra)
            assert [(e.rank, e.member_id, e.score) for e in page.entries] == expected[93:100]


async def _check_ranks(
    api: Api, tenants: tuple[str, ...], points: dict[str, int], groups: dict[str, int]
) -> None:
    expected = reference_ranking(points)
    for tenant in tenants:
        api.tenant = tenant
        for i in (0, 1, 17, len(expected) // 2, len(expected) - 2, len(expected) - 1):
            r_rank, member, score = expected[i]
            got = await rank(api, "points", member, n=5)
            assert (got.rank, got.score, got.total_members) == (r_rank, score, len(expected))
            assert [(e.rank, e.member_id, e.score) for e in got.above] == expected[
                max(0, i - 5) : i
            ]
            assert [(e.rank, e.member_id, e.score) for e in got.below] == expected[i + 1 : i + 6]
        g_rank, group, g_score = reference_ranking(groups)[3]
        got = await rank(api, "groups", group, n=2)
        assert (got.rank, got.score) == (g_rank, g_score)


@pytest.mark.slow
async def test_ranks_and_ties_match_a_reference_for_1_and_8_shards(make_api: ApiFactory) -> None:
    one, eight = new_tenant("one"), new_tenant("eight")
    api = await make_api({one: {"shards": 1}, eight: {"shards": 8}})
    events = stream_of_events("x", 7, 12_000, 5000)
    answers = {}
    for tenant in (one, eight):
        answers[tenant] = await _record_stream(api, tenant, events)
    assert answers[one] == answers[eight]  # same rules, same caps, same outcomes
    points, helpers, groups, dept_points = _reference_scores(events, answers[one])

    await _check_boards(
        api,
        (one, eight),
        [
            ("points", points, {}),
            ("helpers", helpers, {}),
            ("groups", groups, {}),
            ("points", dept_points["d3"], {"scope_id": "d3"}),
        ],
    )
    # GetRank agrees with the reference everywhere, neighbours included.
    await _check_ranks(api, (one, eight), points, groups)


async def test_around_me_at_the_top_the_bottom_and_in_the_middle(make_api: ApiFactory) -> None:
    api = await make_api({new_tenant(): {"shards": 4}})
    # file: 10 points each, at most 50 a day -> scores 10..50 with ties.
    plan = {"ann": 5, "bob": 3, "cat": 3, "dan": 3, "eve": 1, "fay": 4}
    for user, n in plan.items():
        for _ in range(n):
            await api.stub.RecordActivity(ev(api.tenant, user, "file"))
    top = await board(api, "points")
    assert [(e.rank, e.member_id, e.score) for e in top.entries] == [
        (1, "ann", 50),
        (2, "fay", 40),
        (3, "bob", 30),
        (3, "cat", 30),
        (3, "dan", 30),
        (6, "eve", 10),
    ]
    first = await rank(api, "points", "ann", n=2)
    assert (first.rank, list(first.above), [e.member_id for e in first.below]) == (
        1,
        [],
        ["fay", "bob"],
    )
    last = await rank(api, "points", "eve", n=3)
    assert (last.rank, [e.member_id for e in last.above], list(last.below)) == (
        6,
        ["bob", "cat", "dan"],
        [],
    )
    mid = await rank(api, "points", "cat", n=1)
    assert mid.rank == 3 and mid.total_members == 6
    assert [(e.rank, e.member_id) for e in mid.above] == [(3, "bob")]
    assert [(e.rank, e.member_id) for e in mid.below] == [(3, "dan")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rank(api, "points", "nobody")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.calendar
async def test_previous_week_stays_readable_after_rollover(
    make_api: ApiFactory, clock: TestClock
) -> None:
    """Around Monday 00:00 in Shanghai (Sunday 16:00 UTC) the board turns over."""
    api = await make_api({new_tenant(): {"timezone": "Asia/Shanghai"}}, event_max_age_s=10 * 86_400)
    today = clock.datetime(TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    monday = today - timedelta(days=today.weekday())
    boundary_ms = int(monday.timestamp() * 1000)
    clock.set(boundary_ms - 1_800_000)  # Sunday 23:30
    await api.stub.RecordActivity(ev(api.tenant, "old", "file", at_ms=boundary_ms - 1_800_000))
    before = await board(api, "points")
    old_week = before.period_key
    assert [(e.member_id, e.score) for e in before.entries] == [("old", 10)]
    clock.set(boundary_ms + 1_800_000)  # Monday 00:30
    await api.stub.RecordActivity(ev(api.tenant, "new", "reply", at_ms=boundary_ms + 1_800_000))
    now_board = await board(api, "points")
    assert now_board.period_key != old_week
    assert [(e.member_id, e.score) for e in now_board.entries] == [("new", 3)]
    previous = await board(api, "points", period_offset=1)
    assert (previous.period_key, [e.member_id for e in previous.entries]) == (old_week, ["old"])
    explicit = await board(api, "points", period_key=old_week)
    assert [e.member_id for e in explicit.entries] == ["old"]
    # In UTC both events are on the same Sunday: the zone, not UTC, decides.
    assert (monday - timedelta(minutes=30)).astimezone(ZoneInfo("UTC")).date() == (
        monday + timedelta(minutes=30)
    ).astimezone(ZoneInfo("UTC")).date()


async def test_department_and_group_scopes(api: Api) -> None:
    t = api.tenant
    await api.stub.RecordActivity(ev(t, "ann", "file", department_id="rd", group_id="g1"))
    await api.stub.RecordActivity(ev(t, "bob", "file", department_id="ops", group_id="g1"))
    await api.stub.RecordActivity(ev(t, "bob", "reply", department_id="ops", group_id="g2"))
    # Likes received count for the receiver's department when the event says it.
    await api.stub.RecordActivity(
        ev(
            t,
            "cat",
            "like",
            target_user_id="ann",
            department_id="ops",
            attributes={"target_department_id": "rd"},
        )
    )
    rd = await board(api, "points", scope_id="rd")
    assert [(e.member_id, e.score) for e in rd.entries] == [("ann", 11)]
    ops = await board(api, "points", scope_id="ops", scope_type=pb.DEPARTMENT)
    assert [(e.member_id, e.score) for e in ops.entries] == [("bob", 13), ("cat", 1)]
    groups = await board(api, "groups")
    assert [(e.member_id, e.score) for e in groups.entries] == [("g1", 2), ("g2", 1)]
    cases: list[tuple[dict[str, Any], grpc.StatusCode]] = [
        ({"name": "nope"}, grpc.StatusCode.NOT_FOUND),
        ({"name": "helpers", "scope_id": "rd"}, grpc.StatusCode.NOT_FOUND),
        ({"name": "points", "scope_id": "g1", "scope_type": pb.GROUP}, grpc.StatusCode.NOT_FOUND),
        ({"name": "newcomers", "period": pb.DAY}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"name": "points", "period": pb.PERIOD_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"name": "points", "limit": 1001}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"name": "points", "offset": -1}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"name": "points", "period_offset": 9}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"name": "points", "period_key": "2026-W60"}, grpc.StatusCode.INVALID_ARGUMENT),
        (
            {"name": "points", "period": pb.MONTH, "period_key": "2026-13"},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for kwargs, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await board(api, **kwargs)
        assert err.value.code() == code, kwargs


@pytest.mark.calendar
async def test_newcomer_eligibility_ends_at_day_n(
    make_api: ApiFactory, tenant: str, clock: TestClock, zone: ZoneInfo
) -> None:
    api = await make_api(
        [tenant],
        event_max_age_s=40 * 86_400,
        boards={"fresh": {"score": "points", "periods": ["all"], "newcomer_days": 30}},
    )
    day = 86_400_000
    now = now_ms()
    # By first activity: the first award opens the 30-day window.
    await api.stub.RecordActivity(ev(tenant, "amy", "file", at_ms=now - 35 * day))
    await api.stub.RecordActivity(ev(tenant, "amy", "reply", at_ms=now - 6 * day))  # day 29
    await api.stub.RecordActivity(ev(tenant, "amy", "image", at_ms=now - 4 * day))  # day 31
    # By the join date the event carries (YYYY-MM-DD, tenant's zone).
    today = clock.datetime(zone).date()
    for user, joined in [("ben", today - timedelta(days=29)), ("cyd", today - timedelta(days=30))]:
        await api.stub.RecordActivity(
            ev(tenant, user, "file", attributes={"join_date": joined.isoformat()})
        )
    got = await board(api, "fresh", period=pb.ALL_TIME)
    assert [(e.member_id, e.score) for e in got.entries] == [("amy", 13), ("ben", 10)]
    everyone = await board(api, "points", period=pb.ALL_TIME)
    assert {e.member_id for e in everyone.entries} == {"amy", "ben", "cyd"}


async def test_duplicates_and_capped_events_do_not_move_boards(api: Api) -> None:
    t = api.tenant
    first = ev(t, "ann", "login", group_id="g")
    await api.stub.RecordActivity(first)
    for _ in range(3):
        assert (await api.stub.RecordActivity(first)).outcome == pb.DUPLICATE
    assert (await api.stub.RecordActivity(ev(t, "ann", "login"))).outcome == pb.CAPPED
    for _ in range(7):
        await api.stub.RecordActivity(ev(t, "bob", "file", group_id="g"))  # 5 awarded, 2 capped
    got = await board(api, "points", period=pb.DAY)
    assert [(e.member_id, e.score) for e in got.entries] == [("bob", 50), ("ann", 5)]
    groups = await board(api, "groups")
    assert [(e.member_id, e.score) for e in groups.entries] == [("g", 5)]


async def test_concurrent_awards_and_reads_agree(api: Api) -> None:
    t = api.tenant
    users = [f"u{i:02d}" for i in range(40)]
    await asyncio.gather(
        *(
            api.stub.RecordActivity(ev(t, u, "reply"))
            for u in users
            for _ in range(users.index(u) % 4 + 1)
        )
    )
    expected = reference_ranking({u: 3 * (users.index(u) % 4 + 1) for u in users})
    got = await board(api, "points")
    assert [(e.rank, e.member_id, e.score) for e in got.entries] == expected


async def test_users_ranked_within_their_group(make_api: ApiFactory, tenant: str) -> None:
    api = await make_api(
        {tenant: {"shards": 4}},
        boards={"team": {"score": "points", "periods": ["week"], "scopes": ["tenant", "group"]}},
    )
    for user, group, action in [
        ("ann", "g1", "file"),
        ("bob", "g1", "reply"),
        ("cat", "g2", "file"),
        ("ann", "g2", "reply"),
    ]:
        await api.stub.RecordActivity(ev(tenant, user, action, group_id=group))
    g1 = await board(api, "team", scope_id="g1")
    assert [(e.rank, e.member_id, e.score) for e in g1.entries] == [(1, "ann", 10), (2, "bob", 3)]
    g2 = await board(api, "team", scope_id="g2", scope_type=pb.GROUP)
    assert [(e.member_id, e.score) for e in g2.entries] == [("cat", 10), ("ann", 3)]
    whole = await board(api, "team")
    assert [(e.member_id, e.score) for e in whole.entries] == [("ann", 13), ("cat", 10), ("bob", 3)]
    r = await rank(api, "team", "bob", n=1, scope_id="g1")
    assert (r.rank, [e.member_id for e in r.above]) == (2, ["ann"])


@pytest.mark.calendar
async def test_a_target_is_judged_by_its_own_join_date(
    make_api: ApiFactory, tenant: str, clock: TestClock, zone: ZoneInfo
) -> None:
    """join_date describes the event's actor; a target's credit uses
    target_join_date (or its own first award), never the actor's."""
    api = await make_api([tenant], event_max_age_s=40 * 86_400)
    today = clock.datetime(zone).date()
    await api.stub.RecordActivity(ev(tenant, "vic", "file", at_ms=now_ms() - 35 * 86_400_000))
    await api.stub.RecordActivity(ev(tenant, "nia", "file"))
    # A new hire thanks the veteran; a veteran likes the newcomer.
    await api.stub.RecordActivity(
        ev(tenant, "amy", "thanks_card", target_user_id="vic",
           attributes={"join_date": (today - timedelta(days=1)).isoformat()})
    )  # fmt: skip
    await api.stub.RecordActivity(
        ev(tenant, "old", "like", target_user_id="nia", attributes={"join_date": "2015-01-01"})
    )
    # The target's own join date counts.
    await api.stub.RecordActivity(
        ev(tenant, "bo", "thanks_card", target_user_id="kit",
           attributes={"target_join_date": "2015-01-01"})
    )  # fmt: skip
    got = {e.member_id: e.score for e in (await board(api, "newcomers")).entries}
    assert "vic" not in got and "kit" not in got and "old" not in got
    assert got["nia"] == 11  # her file (10) and the like she received (1)


async def test_first_award_is_kept_for_credits_that_feed_no_board(
    make_api: ApiFactory, tenant: str
) -> None:
    """A newcomers board added later still knows who has been earning."""
    from pointsd.service.rules import load_rule_file, parse_rule_book

    doc = load_rule_file(None)
    # Before: one board, fed by replies only; vic earns from files.
    doc["rule_sets"]["default"]["boards"] = {
        "helpers": {"score": "count", "periods": ["week"],
                    "feeds": [{"action": "reply", "role": "actor"}]},
    }  # fmt: skip
    doc["tenants"] = [{"id": tenant, "timezone": "Asia/Shanghai", "shards": 1}]
    before = await make_api(book=parse_rule_book(doc), event_max_age_s=60 * 86_400)
    await before.stub.RecordActivity(ev(tenant, "vic", "file", at_ms=now_ms() - 40 * 86_400_000))
    after = await make_api(
        [tenant], event_max_age_s=60 * 86_400,
        boards={"fresh": {"periods": ["all"], "newcomer_days": 30}},
    )  # fmt: skip
    await after.stub.RecordActivity(ev(tenant, "vic", "file"))
    await after.stub.RecordActivity(ev(tenant, "nia", "file"))
    got = await board(after, "fresh", period=pb.ALL_TIME)
    assert [e.member_id for e in got.entries] == ["nia"]


@pytest.mark.parametrize(
    "period,key",
    [
        (pb.ALL_TIME, "all\n"),
        (pb.WEEK, "2026-W48\n"),
        (pb.MONTH, "2026-11\n"),
        (pb.MONTH, "\uff12\uff10\uff12\uff16-\uff11\uff11"),  # full-width digits
        (pb.DAY, "2026-11-23 "),
    ],
)
async def test_period_keys_are_matched_whole_and_ascii(api: Api, period: Any, key: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await board(api, "points", period=period, period_key=key)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("period_key")


async def test_a_target_department_must_be_a_valid_scope_id(api: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(
            ev(api.tenant, "cat", "like", target_user_id="ann",
               attributes={"target_department_id": "rd "})
        )  # fmt: skip
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("attributes[target_department_id]")


async def test_an_unknown_scope_type_is_invalid(api: Api) -> None:
    for call in (
        board(api, "points", scope_type=99),
        rank(api, "points", "ann", scope_type=99),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("scope_type: unknown value 99")
