"""Online-time tiers and campaigns through the real gRPC API on real Redis
and PostgreSQL, at dates set on the test clock."""

from __future__ import annotations

from typing import Any

import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.clock import parse_instant
from pointsd.service.ops import reconcile
from pointsd.service.rules import RuleError
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory
from tests.helpers import ev
from tests.test_progression import book

MONDAY = "2026-12-14T10:00:00+08:00"
DAY_MS = 86_400_000


def no_tasks(rs: dict[str, Any]) -> None:
    # The points of one action alone: no task or level bonus in the sums.
    rs.pop("tasks")
    rs.pop("levels")


async def record(api: Api, user: str, action: str, **fields: Any) -> pb.ActivityResult:
    return await api.stub.RecordActivity(ev(api.tenant, user, action, **fields))


async def test_each_further_30_minutes_online_pay_a_little_more(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    clock.set(parse_instant(MONDAY))
    api = await make_api(book=book(tenant, no_tasks))
    # tiers [1, 2, 3]: the day's 1st half hour pays 1, the 2nd 2, each after 3.
    got = [(await record(api, "ann", "online", quantity=q)).points for q in (20, 20, 20, 60, 45)]
    # 20 -> 0 units, 40 -> 1 (1), 60 -> 2 (2), 120 -> 4 (3 + 3), 165 -> 5 (3)
    assert got == [0, 1, 2, 6, 3]
    # At most 24 points a day: the rest of a long session is clipped.
    more = await record(api, "ann", "online", quantity=600)
    assert more.points == 24 - 12
    assert "clipped" in more.reason
    # The next day starts again at the first tier.
    clock.set(parse_instant(MONDAY) + DAY_MS)
    assert (await record(api, "ann", "online", quantity=60)).points == 1 + 2


def double_week(rs: dict[str, Any], **extra: Any) -> None:
    no_tasks(rs)
    rs["campaigns"] = {
        "double-week": {
            "name": "双倍积分周",
            "name_en": "Double points week",
            "from": "2026-12-14",
            "until": "2026-12-21T00:00",
            "actions": ["message.text"],
            "multiplier": 2,
            "departments": ["rd"],
            **extra,
        },
        "reply-bonus": {
            "name": "回复加分",
            "name_en": "Reply bonus",
            "from": "2026-12-14T09:00",
            "until": "2026-12-14T18:00",
            "actions": ["reply"],
            "extra": 3,
        },
    }


async def test_a_campaign_multiplies_inside_its_window_and_departments(
    make_api: ApiFactory, tenant: str, clock: TestClock, sql: Any
) -> None:
    clock.set(parse_instant("2026-12-21T12:00:00+08:00"))
    api = await make_api(book=book(tenant, double_week), event_max_age_s=30 * 86_400)

    def msg(user: str, when: str, department: str, event_id: str) -> pb.ActivityEvent:
        return ev(api.tenant, user, "message.text", at_ms=parse_instant(when),
                  department_id=department, event_id=event_id)  # fmt: skip

    inside = await api.stub.RecordActivity(msg("ann", "2026-12-14T00:00:00+08:00", "rd", "a1"))
    other = await api.stub.RecordActivity(msg("bob", "2026-12-14T10:00:00+08:00", "sales", "b1"))
    before = await api.stub.RecordActivity(msg("ann", "2026-12-13T23:59:00+08:00", "rd", "a0"))
    after = await api.stub.RecordActivity(msg("ann", "2026-12-21T00:00:00+08:00", "rd", "a9"))
    assert [r.points for r in (inside, other, before, after)] == [4, 2, 2, 2]
    reply = await record(api, "cy", "reply", at_ms=parse_instant("2026-12-14T17:59:00+08:00"))
    assert reply.points == 3 + 3
    await api.app.flusher.drain(30)
    (cy,) = sql("SELECT reason FROM ledger_entries WHERE tenant_id = :t AND user_id = 'cy'",
                t=api.tenant)  # fmt: skip
    assert cy[0] == "Reply to a colleague (campaign reply-bonus: +3)"
    rows = sql(
        "SELECT event_id, points, reason FROM ledger_entries WHERE tenant_id = :t "
        "AND user_id = 'ann' ORDER BY event_id",
        t=api.tenant,
    )
    assert [tuple(r) for r in rows] == [
        ("a0", 2, "Text message sent"),
        ("a1", 4, "Text message sent (campaign double-week: x2)"),
        ("a9", 2, "Text message sent"),
    ]
    assert (await reconcile(api.app)).clean


async def test_caps_apply_to_the_multiplied_points(
    make_api: ApiFactory, tenant: str, clock: TestClock
) -> None:
    clock.set(parse_instant(MONDAY))
    api = await make_api(book=book(tenant, double_week))
    got = [(await record(api, "ann", "message.text", department_id="rd")).points for _ in range(12)]
    # 4 points each under the campaign; the daily cap stays 40 points.
    assert got == [4] * 10 + [0, 0]
    balance = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id="ann"))
    assert balance.earned_today == 40


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"until": "2026-12-13"}, "double-week.until: must be after `from`"),
        ({"from": "2026-12-32"}, "double-week.from: '2026-12-32' is not a local date or time"),
        ({"from": "2026-12-14T00:00+08:00"}, "double-week.from: a local time in the tenant's"),
        ({"multiplier": 0}, "double-week.multiplier: must be a number above 0 and at most 10"),
        ({"multiplier": 1.255}, "double-week.multiplier: at most two decimals"),
        ({"actions": ["nope"]}, "double-week.actions[0]: no action 'nope' in this rule set"),
        ({"multiplier": 1}, "double-week: needs a multiplier other than 1, or extra points"),
        ({"departments": "rd"}, "double-week.departments: must be a list of department ids"),
    ],
)
def test_bad_campaigns_are_refused_with_their_path(
    tenant: str, change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(RuleError) as info:
        book(tenant, lambda rs: double_week(rs, **change))
    assert any(problem in p for p in info.value.problems), info.value.problems
    assert all(p.startswith("$.rule_sets.default.campaigns.") for p in info.value.problems)


def test_bad_tiers_are_refused_with_their_path(tenant: str) -> None:
    def tiers(value: Any, **credit: Any) -> Any:
        def edit(rs: dict[str, Any]) -> None:
            rs["actions"]["online"]["actor"] = {"points": 1, "per_quantity": 30, "tiers": value,
                                                **credit}  # fmt: skip

        return edit

    path = "$.rule_sets.default.actions.online.actor.tiers"
    for value, credit, problem in [
        ([2, 3], {}, "the first unit's price is the credit's points (1), got 2"),
        ([], {}, "must be a list of 1-48 unit prices"),
        ([1, "x"], {}, "must be a list of 1-48 unit prices"),
        ([1, 2], {"per_quantity": 1}, "needs per_quantity > 1"),
    ]:
        with pytest.raises(RuleError) as info:
            book(tenant, tiers(value, **credit))
        assert f"{path}: {problem}" in info.value.problems[0], info.value.problems
