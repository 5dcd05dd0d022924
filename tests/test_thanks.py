"""Public thanks cards through the real gRPC API on real Redis and
PostgreSQL: the sender's weekly giving budget (actor_gates), atomic under
concurrency, kept through replays and a rebuild; the card's message in the
ledger; the ListThanks feed and its filters. Dates are set on the test
clock, never today's."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.clock import parse_instant
from pointsd.service.ops import rebuild, reconcile
from pointsd.service.rules import RuleBook, RuleError, load_rule_file, parse_rule_book
from pointsd.service.rules.loader import without_progression
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory, LoseRedisData
from tests.helpers import ev

# Monday 7 December 2026 in Shanghai: ISO week 2026-W50 runs to Sunday 13th.
MONDAY = "2026-12-07T10:00:00+08:00"
SUNDAY_LATE = "2026-12-13T23:50:00+08:00"
NEXT_MONDAY = "2026-12-14T00:10:00+08:00"
BUDGET = "limit reached (at most 5 times a week); the sender's giving budget is used"


def book(tenant: str, shards: int = 1) -> RuleBook:
    """The default rules without progression (its bonuses would change the
    figures), for one Shanghai tenant."""
    doc = without_progression(load_rule_file(None))
    doc["tenants"] = [{"id": tenant, "timezone": "Asia/Shanghai", "shards": shards}]
    return parse_rule_book(doc)


@pytest.fixture
async def tapi(make_api: ApiFactory, tenant: str, clock: TestClock) -> Api:
    clock.set(parse_instant(MONDAY))
    return await make_api(book=book(tenant))


async def card(api: Api, sender: str, receiver: str, **fields: Any) -> pb.ActivityResult:
    return await api.stub.RecordActivity(
        ev(api.tenant, sender, "thanks_card", target_user_id=receiver, **fields)
    )


async def available(api: Api, user: str) -> int:
    got = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id=user))
    return got.available


async def feed(api: Api, page_size: int = 0, **filters: str) -> list[pb.ThanksCard]:
    """Every card of the feed, page by page."""
    cards: list[pb.ThanksCard] = []
    token = ""
    while True:
        page = await api.stub.ListThanks(
            pb.ListThanksRequest(
                tenant_id=api.tenant, page_size=page_size, page_token=token, **filters
            )
        )
        cards.extend(page.cards)
        token = page.next_page_token
        if not token:
            return cards


async def test_five_cards_a_week_then_capped_and_nobody_paid(
    tapi: Api, clock: TestClock, sql: Any
) -> None:
    sent = [await card(tapi, "ann", f"r{i}", event_id=f"c{i}") for i in range(5)]
    assert [(r.outcome, r.points) for r in sent] == [(pb.AWARDED, 5)] * 5
    # The sender's credit is the budget: awarded, 0 points, its balance.
    first = sent[0]
    assert [(c.user_id, c.outcome, c.points) for c in first.credits] == [
        ("ann", pb.AWARDED, 0), ("r0", pb.AWARDED, 5),
    ]  # fmt: skip
    assert first.balance == 0
    assert first.reason == "actor ann: Thanks card: +0; target r0: Thanks card: +5"

    sixth = await card(tapi, "ann", "r5", event_id="c5")
    assert (sixth.outcome, sixth.points) == (pb.CAPPED, 0)
    assert sixth.reason == f"Thanks card: {BUDGET}, so r5 was not credited"
    assert [(c.user_id, c.outcome) for c in sixth.credits] == [("ann", pb.CAPPED)]
    assert await available(tapi, "r5") == 0
    # Sunday night is the same ISO week: still used.
    clock.set(parse_instant(SUNDAY_LATE))
    assert (await card(tapi, "ann", "r6")).outcome == pb.CAPPED
    # Other senders have budgets of their own.
    assert (await card(tapi, "bo", "r6")).outcome == pb.AWARDED
    # Monday after: a new week, a new budget.
    clock.set(parse_instant(NEXT_MONDAY))
    assert (await card(tapi, "ann", "r6")).outcome == pb.AWARDED
    assert await available(tapi, "r6") == 10
    assert await available(tapi, "ann") == 0

    # Only the receivers have rows: the sender's credit pays nothing.
    assert await tapi.app.flusher.drain(30)
    rows = sql(
        "SELECT user_id, counterpart_id, role, points FROM ledger_entries WHERE tenant_id = :t "
        "ORDER BY id",
        t=tapi.tenant,
    )
    assert {(u, c, role, p) for u, c, role, p in rows} == {
        *((f"r{i}", "ann", "t", 5) for i in range(5)), ("r6", "bo", "t", 5), ("r6", "ann", "t", 5),
    }  # fmt: skip
    assert (await reconcile(tapi.app)).clean


async def test_receiver_caps_still_use_the_senders_budget(tapi: Api) -> None:
    """The budget is checked first and on the sender's own shard; a card the
    receiver's caps refuse (once a day from the same colleague) was sent."""
    assert (await card(tapi, "ann", "rob")).outcome == pb.AWARDED
    again = await card(tapi, "ann", "rob")
    assert (again.outcome, again.points) == (pb.CAPPED, 0)
    assert again.reason == (
        "actor ann: Thanks card: +0; "
        "target rob: Thanks card: limit reached (once a day from the same colleague)"
    )
    assert [(await card(tapi, "ann", f"r{i}")).outcome for i in range(4)] == [
        pb.AWARDED, pb.AWARDED, pb.AWARDED, pb.CAPPED,
    ]  # fmt: skip
    assert await available(tapi, "rob") == 5


async def test_replays_are_duplicates_and_a_refused_card_never_pays(tapi: Api) -> None:
    for i in range(5):
        await card(tapi, "ann", f"r{i}", event_id=f"c{i}")
    replay = await card(tapi, "ann", "r0", event_id="c0")
    assert (replay.outcome, replay.original_outcome, replay.points) == (
        pb.DUPLICATE, pb.AWARDED, 5,
    )  # fmt: skip
    refused = await card(tapi, "ann", "r5", event_id="c5")
    assert refused.outcome == pb.CAPPED
    # A replay of the refused card gets its refusal back and, concurrent or
    # not, never applies the receiver's credit.
    again = await asyncio.gather(*(card(tapi, "ann", "r5", event_id="c5") for _ in range(20)))
    assert {(r.outcome, r.original_outcome, r.points) for r in again} == {
        (pb.DUPLICATE, pb.CAPPED, 0)
    }
    assert {r.reason for r in again} == {
        f"duplicate event, first recorded as CAPPED: Thanks card: {BUDGET}, so r5 was not credited"
    }
    assert await available(tapi, "r5") == 0
    assert await available(tapi, "r0") == 5


@pytest.mark.slow
async def test_200_concurrent_cards_from_one_sender_pay_exactly_five(
    make_api: ApiFactory, tenant: str, clock: TestClock, sql: Any
) -> None:
    clock.set(parse_instant(MONDAY))
    # Receivers spread over shards; the budget lives on the sender's.
    api = await make_api(book=book(tenant, shards=4))
    results = await asyncio.gather(*(card(api, "ann", f"r{i}") for i in range(200)))
    outcomes = [r.outcome for r in results]
    assert outcomes.count(pb.AWARDED) == 5 and outcomes.count(pb.CAPPED) == 195
    assert sum(r.points for r in results) == 25
    paid = [f"r{i}" for i, r in enumerate(results) if r.outcome == pb.AWARDED]
    assert [await available(api, f"r{i}") for i in range(200)].count(5) == 5
    assert await api.app.flusher.drain(30)
    rows = sql("SELECT user_id FROM ledger_entries WHERE tenant_id = :t", t=api.tenant)
    assert sorted(r[0] for r in rows) == sorted(paid)
    assert (await reconcile(api.app)).clean


async def test_the_message_is_kept_and_the_feed_pages_newest_first(
    tapi: Api, clock: TestClock
) -> None:
    start = parse_instant(MONDAY)
    sent = [
        ("ann", "bo", "谢谢你帮我修好了构建!", "eng", "ops"),
        ("bo", "cy", "Thanks for the review", "ops", ""),
        ("cy", "ann", "", "", "eng"),
        ("dee", "bo", "Great demo", "sales", "ops"),
        ("ann", "dee", "Thank you", "eng", "sales"),
    ]
    for i, (sender, receiver, message, dept, target_dept) in enumerate(sent):
        clock.set(start + i * 60_000)
        attributes = {"message": message} if message else {}
        if target_dept:
            attributes["target_department_id"] = target_dept
        # The event carries the instant itself: the clock runs on between
        # set() and the call, and the feed shows occurred_at to the ms.
        r = await card(tapi, sender, receiver, event_id=f"c{i}", department_id=dept,
                       attributes=attributes, at_ms=start + i * 60_000)  # fmt: skip
        assert r.outcome == pb.AWARDED
    # Refused cards are not in the feed: nobody was paid.
    assert (await card(tapi, "ann", "bo", event_id="again")).outcome == pb.CAPPED
    assert await tapi.app.flusher.drain(30)

    everything = await feed(tapi, page_size=2)
    assert [c.event_id for c in everything] == ["c4", "c3", "c2", "c1", "c0"]
    oldest = everything[-1]
    assert (oldest.sender_user_id, oldest.receiver_user_id, oldest.message, oldest.points) == (
        "ann", "bo", "谢谢你帮我修好了构建!", 5,
    )  # fmt: skip
    assert (oldest.department_id, oldest.receiver_department_id) == ("eng", "ops")
    assert oldest.occurred_at.ToMilliseconds() == start
    assert everything[2].message == ""
    assert [c.event_id for c in await feed(tapi)] == ["c4", "c3", "c2", "c1", "c0"]

    # A department: the sender's or the receiver's, each card once.
    ops = await feed(tapi, page_size=1, department_id="ops")
    assert [c.event_id for c in ops] == ["c3", "c1", "c0"]
    assert [c.event_id for c in await feed(tapi, department_id="eng")] == ["c4", "c2", "c0"]
    assert await feed(tapi, department_id="legal") == []
    # A user: sent or received.
    assert [c.event_id for c in await feed(tapi, page_size=2, user_id="ann")] == [
        "c4", "c2", "c0",
    ]  # fmt: skip
    assert [c.event_id for c in await feed(tapi, user_id="bo")] == ["c3", "c1", "c0"]


async def test_feed_pages_break_ties_and_tokens_are_bound_to_their_query(
    tapi: Api,
) -> None:
    at = parse_instant(MONDAY)
    for i in range(5):  # the same instant: insertion order decides
        await card(tapi, f"s{i}", f"r{i}", event_id=f"c{i}", at_ms=at)
    assert await tapi.app.flusher.drain(30)
    assert [c.event_id for c in await feed(tapi, page_size=2)] == ["c4", "c3", "c2", "c1", "c0"]

    first = await tapi.stub.ListThanks(pb.ListThanksRequest(tenant_id=tapi.tenant, page_size=2))
    assert first.next_page_token
    refusals = [
        pb.ListThanksRequest(tenant_id=tapi.tenant, page_token="not-a-token"),
        pb.ListThanksRequest(tenant_id=tapi.tenant, page_token=first.next_page_token[:-2]),
        # A token is for the query that issued it.
        pb.ListThanksRequest(tenant_id=tapi.tenant, user_id="s1", page_token=first.next_page_token),
    ]
    for request in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tapi.stub.ListThanks(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("page_token: is not a token ListThanks")


@pytest.mark.parametrize(
    ("fields", "details"),
    [
        ({"tenant_id": "nobody"}, "tenant_id: unknown tenant 'nobody'"),
        ({"department_id": "d", "user_id": "u"},
         "user_id: cannot be combined with department_id: filter by one of them"),
        ({"user_id": "a{b}"}, "user_id: must not contain '{' or '}'"),
        ({"department_id": " d"}, "department_id: must not start or end with whitespace"),
        ({"page_size": 501}, "page_size: must be between 1 and 500, got 501"),
        ({"page_size": -1}, "page_size: must be between 1 and 500, got -1"),
    ],
)  # fmt: skip
async def test_bad_feed_requests_are_invalid_argument(
    tapi: Api, fields: dict[str, Any], details: str
) -> None:
    request = pb.ListThanksRequest(tenant_id=tapi.tenant)
    for name, value in fields.items():
        setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tapi.stub.ListThanks(request)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, details)


async def test_a_message_too_long_is_refused_and_uses_no_budget(tapi: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await card(tapi, "ann", "bo", attributes={"message": "谢" * 86})  # 258 bytes
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        "attributes[message]: must be at most 256 bytes without control characters"
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await card(tapi, "ann", "bo", attributes={"message": "line\nbreak"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [(await card(tapi, "ann", f"r{i}")).outcome for i in range(6)].count(pb.AWARDED) == 5


@pytest.mark.slow
async def test_rebuild_keeps_the_week_s_budget_used(
    make_api: ApiFactory, tenant: str, clock: TestClock, lose_redis_data: LoseRedisData
) -> None:
    clock.set(parse_instant(MONDAY))
    api = await make_api(book=book(tenant, shards=4))
    for i in range(3):
        assert (await card(api, "ann", f"r{i}", event_id=f"mon{i}")).outcome == pb.AWARDED
    # Thursday: two more, whose dedup records outlive a rebuild on Saturday;
    # Monday's will have expired by then (the budget must not).
    clock.set(parse_instant("2026-12-10T10:00:00+08:00"))
    for i in range(3, 5):
        assert (await card(api, "ann", f"r{i}", event_id=f"thu{i}")).outcome == pb.AWARDED
    assert (await card(api, "bo", "r0", event_id="bo0")).outcome == pb.AWARDED
    clock.set(parse_instant("2026-12-12T10:00:00+08:00"))
    assert await api.app.flusher.drain(30)

    lose_redis_data(api.tenant)
    await rebuild(api.app)
    assert (await reconcile(api.app)).clean
    assert [await available(api, f"r{i}") for i in range(5)] == [10, 5, 5, 5, 5]
    # The replays are duplicates; nobody is paid twice.
    replay = await card(api, "ann", "r3", event_id="thu3")
    assert (replay.outcome, replay.original_outcome) == (pb.DUPLICATE, pb.AWARDED)
    assert await available(api, "r3") == 5
    # Five were sent this week: the sixth is refused, bo's budget is his own.
    refused = await card(api, "ann", "r9")
    assert (refused.outcome, refused.reason) == (
        pb.CAPPED, f"Thanks card: {BUDGET}, so r9 was not credited",
    )  # fmt: skip
    assert await available(api, "r9") == 0
    assert (await card(api, "bo", "r9")).outcome == pb.AWARDED
    clock.set(parse_instant(NEXT_MONDAY))
    assert (await card(api, "ann", "r9")).outcome == pb.AWARDED


# ---------------------------------------------------------------------------
# The rule key `actor_gates`


_GATES = "$.rule_sets.default.actions.card.actor_gates"


def _doc(action: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenants": [{"id": "acme"}],
        "rule_sets": {"default": {"actions": {"card": action}}},
    }


def test_actor_gates_is_read_from_the_action() -> None:
    rules = parse_rule_book(
        _doc({"actor_gates": True, "actor": {"points": 0, "once_per_day": True},
              "target": {"points": 3}})
    )  # fmt: skip
    action = rules.tenants["acme"].actions["card"]
    assert action.actor_gates is True
    plain = parse_rule_book(_doc({"actor": {"points": 0}, "target": {"points": 3}}))
    assert plain.tenants["acme"].actions["card"].actor_gates is False


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ({"actor_gates": True, "target": {"points": 3}},
         f"{_GATES}: needs both an `actor` and a `target` credit"),
        ({"actor_gates": True, "actor": {"points": 1}},
         f"{_GATES}: needs both an `actor` and a `target` credit"),
        ({"actor_gates": "yes", "actor": {"points": 1}, "target": {"points": 1}},
         f"{_GATES}: must be true or false, got 'yes'"),
    ],
)  # fmt: skip
def test_actor_gates_problems_name_their_path(action: dict[str, Any], problem: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rule_book(_doc(action))
    assert problem in err.value.problems


async def test_a_card_recorded_before_the_budget_existed_is_never_paid_twice(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    """Rules upgraded between a card and its replay: the receiver's credit
    keeps its duplicate record under the event id, so the replay finds it."""
    clock.set(parse_instant(MONDAY))
    doc = without_progression(load_rule_file(None))
    doc["tenants"] = [{"id": tenant, "timezone": "Asia/Shanghai"}]
    old = doc["rule_sets"]["default"]["actions"]["thanks_card"]
    old.pop("actor", None)
    old.pop("actor_gates", None)
    before = await make_api(book=parse_rule_book(doc))
    first = await card(before, "giver", "helper", event_id="old-card")
    assert (first.outcome, first.points) == (pb.AWARDED, 5)
    after = await make_api(book=book(tenant))
    replay = await card(after, "giver", "helper", event_id="old-card")
    assert [(c.user_id, c.outcome) for c in replay.credits] == [
        ("giver", pb.AWARDED),
        ("helper", pb.DUPLICATE),
    ]
    assert await available(after, "helper") == 5
    again = await card(after, "giver", "helper", event_id="old-card")
    assert again.outcome == pb.DUPLICATE
    assert await available(after, "helper") == 5
