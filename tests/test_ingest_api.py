"""The ingest API through a real in-process gRPC server, real Redis and PostgreSQL:
every shipped rule and cap, dedup (G1), batches, streams, bad input that
changes nothing (G6) and is bounded (G10), balances and the ledger."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory, wait_for
from tests.helpers import ev, ledger_count, ledger_sum, now_ms, tenant_keys

A = pb.AWARDED
DUP = pb.DUPLICATE
CAP = pb.CAPPED


async def record(api: Api, user: str, action: str, **kw) -> pb.ActivityResult:
    return await api.stub.RecordActivity(ev(api.tenant, user, action, **kw))


async def balance(api: Api, user: str) -> pb.Balance:
    return await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id=user))


async def outcomes(api: Api, n: int, user: str, action: str, **kw) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for _ in range(n):
        r = await record(api, user, action, **kw)
        out.append((r.outcome, r.points))
    return out


async def test_login_once_a_day(api: Api) -> None:
    first = await record(api, "u1", "login")
    assert (first.outcome, first.points, first.balance) == (A, 5, 5)
    second = await record(api, "u1", "login")
    assert second.outcome == CAP
    assert "once a day" in second.reason
    assert second.balance == 5


@pytest.mark.parametrize(
    ("action", "points", "cap"),
    [
        ("message.text", 2, 40),
        ("message.voice", 5, 50),
        ("message.video", 5, 50),
        ("file", 10, 50),
        ("image", 10, 50),
        ("reply", 3, 30),
    ],
)
async def test_points_cap_per_day_clips_then_caps(
    api: Api, action: str, points: int, cap: int
) -> None:
    total = 0
    results = []
    while total < cap:
        r = await record(api, "u1", action)
        assert r.outcome == A
        assert r.points == min(points, cap - total)
        total += r.points
        results.append(r)
    if cap % points:
        assert "clipped" in results[-1].reason
    r = await record(api, "u1", action)
    assert r.outcome == CAP and r.points == 0
    assert f"at most {cap} points a day" in r.reason
    assert (await balance(api, "u1")).available == cap


@pytest.mark.parametrize(
    ("action", "points", "count"), [("vote", 8, 3), ("survey", 8, 3), ("group.create", 15, 3)]
)
async def test_count_cap_per_day(api: Api, action: str, points: int, count: int) -> None:
    got = await outcomes(api, count + 2, "u1", action)
    assert got == [(A, points)] * count + [(CAP, 0)] * 2


async def test_invite_pair_and_daily_caps(api: Api) -> None:
    assert (await record(api, "u1", "invite", target_user_id="n1")).points == 15
    again = await record(api, "u1", "invite", target_user_id="n1")
    assert again.outcome == CAP and "same colleague" in again.reason
    for i in range(2, 6):
        assert (await record(api, "u1", "invite", target_user_id=f"n{i}")).outcome == A
    sixth = await record(api, "u1", "invite", target_user_id="n6")
    assert sixth.outcome == CAP and "at most 5 times a day" in sixth.reason


async def test_like_giver_cap_and_receiver_pair_cap(api: Api) -> None:
    # The same colleague's likes pay the receiver at most 5 a day.
    for i in range(7):
        r = await record(api, "giver", "like", target_user_id="star")
        actor, target = r.credits
        assert actor.role == pb.ACTOR and target.role == pb.TARGET
        assert (actor.outcome, actor.points) == (A, 1)
        assert (target.outcome, target.points) == ((A, 1) if i < 5 else (CAP, 0))
    assert (await balance(api, "star")).available == 5
    # The giver earns at most 10 a day, whoever receives.
    for i in range(5):
        await record(api, "giver", "like", target_user_id=f"other{i}")
    capped = await record(api, "giver", "like", target_user_id="someone")
    assert capped.credits[0].outcome == CAP
    assert capped.credits[1].outcome == A  # the receiver is not punished
    assert capped.outcome == A
    assert (await balance(api, "giver")).available == 10


async def test_thanks_card_pays_only_the_receiver(api: Api) -> None:
    r = await record(api, "sender", "thanks_card", target_user_id="helper")
    assert r.outcome == A and r.points == 5
    # The sender's credit is the giving budget: awarded, 0 points.
    assert [(c.user_id, c.role, c.points) for c in r.credits] == [
        ("sender", pb.ACTOR, 0), ("helper", pb.TARGET, 5),
    ]  # fmt: skip
    assert (await balance(api, "sender")).available == 0
    assert (await balance(api, "helper")).available == 5
    again = await record(api, "sender", "thanks_card", target_user_id="helper")
    assert again.outcome == CAP


async def test_online_minutes_accumulate_per_30(api: Api) -> None:
    got = [(await record(api, "u1", "online", quantity=q)).points for q in (20, 20, 20, 45, 5)]
    # 20 -> 0, 40 -> 1, 60 -> 2, 105 -> 3, 110 -> 3
    assert got == [0, 1, 1, 1, 0]
    many = [(await record(api, "u1", "online", quantity=300)).points for _ in range(3)]
    assert sum(got) + sum(many) == 24  # daily points cap
    assert (await balance(api, "u1")).available == 24


async def test_feature_first_use_once_ever_per_feature(api: Api) -> None:
    def use(feature: str):
        return record(api, "u1", "feature.first_use", attributes={"feature": feature})

    assert (await use("calendar")).points == 20
    assert (await use("calendar")).outcome == CAP
    assert (await use("docs")).points == 20
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(api, "u1", "feature.first_use")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "attributes" in (err.value.details() or "")


async def test_min_interval_throttles(make_api: ApiFactory, tenant: str) -> None:
    api = await make_api(
        [tenant], actions={"poke": {"actor": {"points": 1, "min_interval_ms": 60_000}}}
    )
    t0 = now_ms() - 600_000
    assert (await record(api, "u1", "poke", at_ms=t0)).outcome == A
    r = await record(api, "u1", "poke", at_ms=t0 + 30_000)
    assert r.outcome == pb.THROTTLED and "once every 1 min" in r.reason
    assert (await record(api, "u1", "poke", at_ms=t0 + 61_000)).outcome == A
    # Another user is not throttled by u1.
    assert (await record(api, "u2", "poke", at_ms=t0 + 61_000)).outcome == A


async def test_unknown_action_is_no_rule_and_leaves_no_trace(api: Api, rds) -> None:
    r = await record(api, "u1", "teleport")
    assert r.outcome == pb.NO_RULE and "teleport" in r.reason
    assert tenant_keys(rds, api.tenant) == []


async def test_duplicate_returns_the_original_outcome(api: Api) -> None:
    first = await record(api, "u1", "file", event_id="evt-1")
    for _ in range(10):
        await record(api, "u1", "file")  # uses up the cap meanwhile
    again = await record(api, "u1", "file", event_id="evt-1")
    assert again.outcome == DUP
    assert again.original_outcome == A
    assert (again.points, again.balance) == (first.points, first.balance) == (10, 10)
    assert (await balance(api, "u1")).available == 50
    capped = await record(api, "u1", "file", event_id="evt-capped")
    replay = await record(api, "u1", "file", event_id="evt-capped")
    assert capped.outcome == CAP
    assert (replay.outcome, replay.original_outcome) == (DUP, CAP)


async def test_event_id_reused_for_other_content(api: Api, sql) -> None:
    await record(api, "u1", "file", event_id="same")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(api, "u1", "image", event_id="same")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already used for a different event" in (err.value.details() or "")
    assert (await balance(api, "u1")).available == 10


async def test_batch_mixes_good_and_bad_events_in_order(api: Api, rds) -> None:
    t = api.tenant
    events = [
        ev(t, "u1", "login", event_id="b1"),
        ev(t, "u1", "login", event_id="b{2}"),
        ev(t, "", "login", event_id="b3"),
        ev(t, "u1", "like", event_id="b4"),  # no target
        ev(t, "u2", "file", event_id="b5", quantity=-1),
        ev(t, "u1", "nope", event_id="b6"),
        ev("no-such-tenant", "u1", "login", event_id="b7"),
        ev(t, "u2", "file", event_id="b8", at_ms=now_ms() + 3_600_000),
        ev(t, "u1", "login", event_id="b1"),
        ev(t, "u2", "file", event_id="b9"),
    ]
    resp = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    got = [(r.event_id, r.outcome, r.field) for r in resp.results]
    assert got == [
        ("b1", A, ""),
        ("b{2}", pb.REJECTED, "event_id"),
        ("b3", pb.REJECTED, "user_id"),
        ("b4", pb.REJECTED, "target_user_id"),
        ("b5", pb.REJECTED, "quantity"),
        ("b6", pb.NO_RULE, ""),
        ("b7", pb.REJECTED, "tenant_id"),
        ("b8", pb.REJECTED, "occurred_at"),
        ("b1", DUP, ""),
        ("b9", A, ""),
    ]
    assert "in the future" in resp.results[7].reason
    assert (await balance(api, "u1")).available == 5
    assert (await balance(api, "u2")).available == 10
    # Nothing of the rejected events reached Redis.
    keys = b" ".join(tenant_keys(rds, t))
    for bad in (b"b{2}", b"b3", b"b4", b"b5", b"b6", b"b8"):
        assert b":ev:e:" + bad not in keys and b":ev:t:" + bad not in keys


async def test_batch_over_the_limit_is_refused_whole(api: Api, rds) -> None:
    events = [ev(api.tenant, f"u{i}", "login") for i in range(1001)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000" in (err.value.details() or "")
    assert tenant_keys(rds, api.tenant) == []


async def test_full_batch_of_1000(api: Api) -> None:
    events = [ev(api.tenant, f"u{i % 100}", "message.text") for i in range(1000)]
    resp = await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=events))
    assert [r.event_id for r in resp.results] == [e.event_id for e in events]
    # 10 messages per user at 2 points, under the 40-point cap.
    assert all(r.outcome == A and r.points == 2 for r in resp.results)
    assert (await balance(api, "u7")).available == 20


async def test_stream_answers_each_event_in_order(api: Api) -> None:
    t = api.tenant
    events = [ev(t, f"s{i % 7}", "reply", event_id=f"st{i}") for i in range(300)]
    events.insert(50, ev(t, "s1", "reply", event_id="bad{"))
    events.append(ev(t, "s0", "reply", event_id="st0"))

    async def gen():
        for e in events:
            yield e

    results = [r async for r in api.stub.StreamActivities(gen())]
    assert [r.event_id for r in results] == [e.event_id for e in events]
    assert results[50].outcome == pb.REJECTED and results[50].field == "event_id"
    assert results[-1].outcome == DUP
    awarded = sum(r.points for r in results if r.outcome == A)
    total = sum([(await balance(api, f"s{i}")).available for i in range(7)])
    assert awarded == total == 7 * 30  # every user reached the 30-point reply cap


async def test_stream_can_be_interleaved_by_the_client(api: Api) -> None:
    call = api.stub.StreamActivities()
    for i in range(5):
        await call.write(ev(api.tenant, "u1", "file", event_id=f"x{i}"))
        r = await call.read()
        assert r.event_id == f"x{i}" and r.outcome == A
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


@pytest.mark.parametrize(
    ("field", "kwargs", "message"),
    [
        ("tenant_id", {"tenant_id": ""}, "is required"),
        ("event_id", {"event_id": "x" * 129}, "at most 128"),
        ("event_id", {"event_id": "a{b"}, "'{' or '}'"),
        ("user_id", {"user_id": "a}b"}, "'{' or '}'"),
        ("user_id", {"user_id": "a\x00b"}, "control characters"),
        ("action", {"action": ""}, "is required"),
        ("target_user_id", {"target_user_id": "y" * 200}, "at most 128"),
        ("quantity", {"quantity": -5}, ">= 0"),
        ("quantity", {"quantity": 10**9}, "<= 100000"),
        ("occurred_at", {"at_ms": 1_000_000}, "in the past"),
        ("occurred_at", {"at_ms": "future"}, "in the future"),
        ("attributes", {"attributes": {f"k{i}": "v" for i in range(17)}}, "at most 16"),
        ("attributes[k]", {"attributes": {"k": "v" * 300}}, "at most 256 bytes"),
    ],
)
async def test_bad_input_is_invalid_argument_and_changes_nothing(
    api: Api, rds, sql, field: str, kwargs: dict, message: str
) -> None:
    kw = dict(kwargs)
    tenant = kw.pop("tenant_id", api.tenant)
    if kw.get("at_ms") == "future":
        kw["at_ms"] = now_ms() + 3_600_000
    user = kw.pop("user_id", "u1")
    action = kw.pop("action", "like")
    kw.setdefault("target_user_id", "u2")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(ev(tenant, user, action, **kw))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert details.startswith(field) and message in details
    assert tenant_keys(rds, api.tenant) == []
    assert ledger_count(sql, api.tenant) == 0


async def test_oversized_requests_are_refused(make_api: ApiFactory) -> None:
    api = await make_api(request_bytes_max=64 * 1024)
    batch = [ev(api.tenant, f"u{i}", "login", attributes={"k": "v" * 200}) for i in range(400)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivities(pb.RecordActivitiesRequest(events=batch))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bytes; at most 65536" in (err.value.details() or "")
    # Far over the limit, the transport refuses before anything is decoded.
    huge = ev(api.tenant, "u1", "login", attributes={"k": "v" * 200_000})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(huge)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.calendar
async def test_get_balance_and_earned_today(api: Api, clock: TestClock, zone: ZoneInfo) -> None:
    tz = zone
    today_start = clock.datetime(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday_ms = int((today_start - timedelta(hours=2)).timestamp() * 1000)
    await record(api, "u1", "file", at_ms=yesterday_ms)
    await record(api, "u1", "file")
    await record(api, "u1", "login")
    b = await balance(api, "u1")
    assert (b.available, b.lifetime_earned, b.spent, b.earned_today) == (25, 25, 0, 15)
    assert b.day == clock.datetime(tz).date().isoformat()
    empty = await balance(api, "nobody")
    assert (empty.available, empty.lifetime_earned, empty.earned_today) == (0, 0, 0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id="nope", user_id="u1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.calendar
async def test_period_rollover_in_tenant_time_zone(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    """Shanghai midnight is 16:00 UTC: the cap resets at local, not UTC, midnight."""
    api = await make_api({tenant: {"timezone": "Asia/Shanghai"}})
    tz = ZoneInfo("Asia/Shanghai")
    # The last local midnight at least two hours ago: every event below is in
    # the past whatever the time of day the test runs.
    midnight = (clock.datetime(tz) - timedelta(hours=2)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    m_ms = int(midnight.timestamp() * 1000)
    before, after = m_ms - 60_000, m_ms + 60_000
    assert (await record(api, "u1", "login", at_ms=before)).outcome == A
    assert (await record(api, "u1", "login", at_ms=before - 3_600_000)).outcome == CAP
    assert (await record(api, "u1", "login", at_ms=after)).outcome == A
    assert (await record(api, "u1", "login", at_ms=after + 3_600_000)).outcome == CAP
    # In UTC both instants are the same calendar day unless it is 00:00-00:01 UTC.
    utc_days = {datetime.fromtimestamp(x / 1000, ZoneInfo("UTC")).date() for x in (before, after)}
    assert len(utc_days) == 1
    b = await balance(api, "u1")
    assert b.available == 10


async def test_ledger_lists_history_newest_first_with_pages(api: Api, sql) -> None:
    base = now_ms() - 3_600_000
    for i in range(7):
        await record(api, "u1", "reply", event_id=f"r{i}", at_ms=base + i * 1000)
    await record(api, "u1", "like", event_id="lk", target_user_id="u9", at_ms=base + 10_000)
    await wait_for(lambda: _ledger_has(sql, api.tenant, 9))
    seen = []
    token = ""
    while True:
        page = await api.stub.ListLedger(
            pb.ListLedgerRequest(tenant_id=api.tenant, user_id="u1", page_size=3, page_token=token)
        )
        seen.extend(page.entries)
        token = page.next_page_token
        if not token:
            break
    assert [e.event_id for e in seen] == ["lk"] + [f"r{i}" for i in reversed(range(7))]
    like = seen[0]
    assert (like.kind, like.role, like.counterpart_user_id, like.points) == (
        pb.AWARD,
        pb.ACTOR,
        "u9",
        1,
    )
    assert like.entry_id == "e:lk:a:u1"
    assert (seen[0].balance_after, seen[1].balance_after, seen[-1].balance_after) == (22, 21, 3)
    assert ledger_sum(sql, api.tenant, "u1") == sum(e.points for e in seen)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.ListLedger(
            pb.ListLedgerRequest(
                tenant_id=api.tenant, user_id="u9", page_token=page.next_page_token or "eyJxIjoxfQ"
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    import base64
    import json

    # Signed and bound to the query: another user's token, a hand-made
    # cursor, or an edited real one are all refused.
    real = (
        await api.stub.ListLedger(
            pb.ListLedgerRequest(tenant_id=api.tenant, user_id="u1", page_size=3)
        )
    ).next_page_token
    padded = base64.urlsafe_b64decode(real + "=" * (-len(real) % 4))
    edited = base64.urlsafe_b64encode(padded.replace(b'"i":', b'"i":1')).decode()
    made_up = base64.urlsafe_b64encode(json.dumps({"o": 1, "i": 1}).encode() + b"0" * 16)
    for user, forged in [("u9", real), ("u1", edited), ("u1", made_up.decode()), ("u1", "!")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.ListLedger(
                pb.ListLedgerRequest(tenant_id=api.tenant, user_id=user, page_token=forged)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (user, forged)
        assert (err.value.details() or "").startswith("page_token")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.ListLedger(
            pb.ListLedgerRequest(tenant_id=api.tenant, user_id="u1", page_size=501)
        )
    assert "page_size" in (err.value.details() or "")


async def _ledger_has(sql, tenant: str, n: int) -> bool:
    await asyncio.sleep(0)
    return ledger_count(sql, tenant) >= n


async def test_event_id_reused_with_another_credit_layout_applies_nothing(api: Api) -> None:
    """The first credit's record is the event's identity, whatever its role:
    a thanks card (receiver only) and a like (giver first) cannot share an id."""
    t = api.tenant
    await api.stub.RecordActivity(
        ev(t, "sender", "thanks_card", event_id="x1", target_user_id="helper")
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(ev(t, "giver", "like", event_id="x1", target_user_id="star"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await api.stub.RecordActivity(ev(t, "filer", "file", event_id="x2"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(
            ev(t, "sender", "thanks_card", event_id="x2", target_user_id="filer")
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    for user, points in [("helper", 5), ("giver", 0), ("star", 0), ("filer", 10), ("sender", 0)]:
        assert (await balance(api, user)).available == points, user


async def test_event_id_reused_across_shards_still_leaves_one_row_per_payment(
    make_api: ApiFactory, tenant: str, sql
) -> None:
    """Reuse of an id by another user on another shard cannot be caught
    atomically (G1); the ledger still records both payments (G7)."""
    from pointsd.service.ops import reconcile
    from pointsd.storage.keys import shard_of

    api = await make_api({tenant: {"shards": 4}})
    users = ["alice"] + [f"u{i}" for i in range(20)]
    other = next(u for u in users[1:] if shard_of(u, 4) != shard_of("alice", 4))
    first = await api.stub.RecordActivity(ev(tenant, "alice", "file", event_id="same"))
    second = await api.stub.RecordActivity(ev(tenant, other, "file", event_id="same"))
    assert first.outcome == second.outcome == A
    assert await api.app.flusher.drain(30)
    assert ledger_count(sql, tenant) == 2
    assert (await reconcile(api.app)).clean
