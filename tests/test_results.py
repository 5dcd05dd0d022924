"""Results out, without I/O: the single-credit fast path of Ingestor._combine
says exactly what the general path says, and a batch's results added
straight into the response are the messages result_to_pb makes."""

from __future__ import annotations

import itertools

import pytest
from redis.asyncio import Redis as AsyncRedis

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.convert import add_results, result_to_pb
from pointsd.service.domain import CreditResult, Event, StoreCode
from pointsd.service.ingest import Ingestor
from pointsd.service.rules import Plan, RulesEngine, load_rule_book
from pointsd.storage.keys import KeySchema, Topology
from pointsd.storage.redis import AwardStore
from tests.test_rules import event

AT_MS = 1_796_293_607_898


@pytest.fixture(scope="module")
def ingestor() -> Ingestor:
    engine = RulesEngine(
        load_rule_book(None), state_retention_s=3 * 86400, dedup_retention_s=4 * 86400
    )
    topology = Topology(KeySchema(), {t.tenant_id: t.shards for t in engine.book.tenants.values()})
    # Never called here (combine only); the compiled Ingestor checks its type.
    awards = AwardStore(AsyncRedis(), topology, clock=lambda: AT_MS, outbox_entries_max=0)
    return Ingestor(engine, awards, lambda: AT_MS)


def plan_of(ingestor: Ingestor, ev: Event) -> Plan:
    planned = ingestor.engine.plan(ev, recorded_at_ms=AT_MS)
    assert isinstance(planned, Plan)
    return planned


CODES = [StoreCode.AWARDED, StoreCode.DUPLICATE, StoreCode.CAPPED, StoreCode.THROTTLED]
ORIGINALS = [None, StoreCode.AWARDED, StoreCode.CAPPED, StoreCode.THROTTLED]


@pytest.mark.parametrize("action", ["message.text", "login", "file", "online"])
def test_the_single_credit_path_says_what_the_general_path_says(
    ingestor: Ingestor, action: str
) -> None:
    plan = plan_of(ingestor, event(action, at_ms=AT_MS, quantity=30))
    assert len(plan.ops) == 1
    compared = 0
    for code, original, held, (points, limit) in itertools.product(
        CODES, ORIGINALS, [False, True], [(0, 0), (3, 0), (1, 1), (0, 2)]
    ):
        if original is not None and code is not StoreCode.DUPLICATE:
            continue  # only a duplicate has a first recording
        res = CreditResult(code, points, 120, limit, original, (), held)
        fast = ingestor._combine(plan, [res])
        assert fast == ingestor._general(plan, [res]), (code, original, held, points, limit)
        compared += 1
    assert compared == 3 * 2 * 4 + 4 * 2 * 4


def test_bonuses_and_two_credits_take_the_general_path(ingestor: Ingestor) -> None:
    like = plan_of(ingestor, event("like", target="bo", at_ms=AT_MS))
    both = [CreditResult(StoreCode.AWARDED, 1, 10), CreditResult(StoreCode.AWARDED, 2, 20)]
    got = ingestor._combine(like, both)
    assert [(c.user_id, c.points) for c in got.credits] == [("alice", 1), ("bo", 2)]
    assert got.points == 3 and got.reason.startswith("actor alice: ")
    # One credit that earned a bonus: its points, the bonus and its words.
    message = plan_of(ingestor, event("message.text", at_ms=AT_MS))
    res = CreditResult(StoreCode.AWARDED, 3, 100, bonuses=(("task.weekly-x", 10),))
    got = ingestor._combine(message, [res])
    assert got.points == 13 and [(b.tag, b.points) for b in got.bonuses] == [("task.weekly-x", 10)]
    assert got.reason == "Text message sent: +3; Task done: weekly-x +10"
    assert got.credits[0].reason == got.reason


def test_results_added_into_the_response_are_the_messages_of_result_to_pb(
    ingestor: Ingestor,
) -> None:
    plan = plan_of(ingestor, event("message.text", at_ms=AT_MS, event_id="m1"))
    results = [
        ingestor._combine(plan, [CreditResult(StoreCode.AWARDED, 3, 100)]),
        ingestor._combine(plan, [CreditResult(StoreCode.DUPLICATE, 3, 100, 0, StoreCode.AWARDED)]),
        ingestor._combine(plan, [CreditResult(StoreCode.AWARDED, 3, 100, held=True)]),
        Ingestor._rejected("user_id", "is required", ""),
    ]
    sent = [pb.ActivityEvent(event_id=f"sent-{i}") for i in range(len(results))]
    response = pb.RecordActivitiesResponse()
    add_results(response.results, results, sent)
    # Built by hand, field by field: what a caller receives.
    text = "Text message sent: +3"

    def credit(**fields: object) -> pb.Credit:
        given: dict[str, object] = {"user_id": "alice", "role": pb.ACTOR, "outcome": pb.AWARDED,
                                    "points": 3, "balance": 100, **fields}  # fmt: skip
        return pb.Credit(**given)  # type: ignore[arg-type]

    held = text + "; held for review (a farming flag): paid when an administrator releases it"
    duplicate = f"duplicate event, first recorded as AWARDED: {text}"
    expected = [
        pb.ActivityResult(event_id="m1", outcome=pb.AWARDED, points=3, balance=100, reason=text,
                          credits=[credit(reason=text)]),
        pb.ActivityResult(event_id="m1", outcome=pb.DUPLICATE, original_outcome=pb.AWARDED,
                          points=3, balance=100, reason=duplicate,
                          credits=[credit(reason=duplicate, outcome=pb.DUPLICATE)]),
        pb.ActivityResult(event_id="m1", outcome=pb.AWARDED, points=3, balance=100, reason=held,
                          credits=[credit(reason=held, held=True)]),
        pb.ActivityResult(event_id="sent-3", outcome=pb.REJECTED, reason="user_id: is required",
                          field="user_id"),
    ]  # fmt: skip
    assert list(response.results) == expected
    assert [result_to_pb(r, m.event_id) for r, m in zip(results, sent, strict=True)] == expected
    # A rejected event without a usable id answers with the one it was sent with.
    assert response.results[3].event_id == "sent-3" and response.results[0].event_id == "m1"
    assert response.results[1].original_outcome == pb.AWARDED
    assert response.results[2].credits[0].held and not response.results[0].credits[0].held
