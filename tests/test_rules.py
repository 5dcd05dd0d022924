"""Unit tests for the rules package: loader, model, engine and the shipped
default rule book. Pure: no servers, no clock."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pointsd.service.domain import (
    SEP,
    CreditOp,
    Event,
    Metric,
    Period,
    PeriodRef,
    Role,
)
from pointsd.service.domain.steps import Accumulate, Amount, Bump, Check, Throttle
from pointsd.service.rules import (
    EARNED,
    LIMITS,
    ActionRule,
    CreditRule,
    LimitRule,
    NoRule,
    Plan,
    Rejection,
    RuleBook,
    RuleError,
    RulesEngine,
    fingerprint,
    load_rule_book,
    load_rule_file,
    parse_rule_book,
)
from pointsd.service.rules.mechanics.accumulators import PER_QUANTITY

DAY_S = 86_400


def limits(op: CreditOp) -> tuple[Check, ...]:
    """The caps an op checks, in the order of the rule's limits."""
    return op.steps_of(Check)


def counters(op: CreditOp) -> tuple[Bump, ...]:
    """The counters an op bumps that no cap checks (earned today)."""
    checked = {c.counter for c in limits(op)}
    return tuple(b for b in op.steps_of(Bump) if b.counter not in checked)


def accumulator(op: CreditOp) -> Accumulate | None:
    found = op.steps_of(Accumulate)
    return found[0] if found else None


def throttle(op: CreditOp) -> Throttle:
    (found,) = op.steps_of(Throttle)
    return found


STATE_RETENTION_S = 8 * DAY_S
DEDUP_RETENTION_S = 3 * DAY_S + 17


def utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1000


def utc_s(text: str) -> int:
    return utc_ms(text) // 1000


# 2026-11-22T17:30Z is Monday 2026-11-23 01:30 in Shanghai, Sunday in UTC.
AT_MS = utc_ms("2026-11-22T17:30:00") + 250
RECORDED_MS = AT_MS + 1234


def doc(
    actions: dict[str, Any],
    tenants: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A rule document shaped like default_rules.yaml."""
    return {
        "version": 1,
        "tenants": tenants if tenants is not None else [{"id": "acme", "timezone": "UTC"}],
        "rule_sets": {"default": {"actions": actions}},
    }


def book_of(actions: dict[str, Any], tenants: list[dict[str, Any]] | None = None) -> RuleBook:
    return parse_rule_book(doc(actions, tenants))


def problems_of(document: Any) -> list[str]:
    with pytest.raises(RuleError) as info:
        parse_rule_book(document)
    return info.value.problems


def has_problem(problems: list[str], path: str, text: str = "") -> bool:
    return any(p.startswith(path + ": ") and text in p[len(path) :] for p in problems)


def engine_for(book: RuleBook) -> RulesEngine:
    return RulesEngine(
        book, state_retention_s=STATE_RETENTION_S, dedup_retention_s=DEDUP_RETENTION_S
    )


def event(
    action: str,
    *,
    tenant: str = "demo",
    user: str = "alice",
    target: str = "",
    at_ms: int = AT_MS,
    quantity: int = 1,
    attributes: dict[str, str] | None = None,
    event_id: str = "ev-1",
    group: str = "",
    department: str = "",
) -> Event:
    return Event(
        tenant_id=tenant,
        event_id=event_id,
        user_id=user,
        action=action,
        occurred_at_ms=at_ms,
        target_user_id=target,
        group_id=group,
        department_id=department,
        quantity=quantity,
        attributes=attributes or {},
    )


def plan_ok(engine: RulesEngine, ev: Event) -> Plan:
    result = engine.plan(ev, recorded_at_ms=RECORDED_MS)
    assert isinstance(result, Plan), result
    return result


@pytest.fixture(scope="module")
def default_book() -> RuleBook:
    return load_rule_book(None)


@pytest.fixture(scope="module")
def default_engine(default_book: RuleBook) -> RulesEngine:
    return engine_for(default_book)


# ===========================================================================
# The shipped default rule book


def test_default_book_has_the_demo_tenant_in_shanghai(default_book: RuleBook) -> None:
    demo = default_book.tenant("demo")
    assert demo is not None
    assert demo.timezone == ZoneInfo("Asia/Shanghai")
    assert demo.rule_set == "default"
    assert demo.shards == 1
    assert default_book.tenant("nobody") is None


def test_default_book_takes_default_shards() -> None:
    demo = load_rule_book(None, default_shards=4).tenant("demo")
    assert demo is not None
    assert demo.shards == 4


def test_default_book_has_exactly_the_seed_actions(default_book: RuleBook) -> None:
    demo = default_book.tenant("demo")
    assert demo is not None
    assert set(demo.actions) == {
        "login",
        "message.text",
        "message.voice",
        "message.video",
        "file",
        "image",
        "reply",
        "vote",
        "survey",
        "group.create",
        "invite",
        "like",
        "thanks_card",
        "online",
        "feature.first_use",
        # Feeding tasks: start a group vote, the third use of a feature, a
        # group you created reaching 50 members.
        "vote.start",
        "feature.use",
        "group.members",
    }
    for key, rule in demo.actions.items():
        assert rule.key == key
        assert rule.description and rule.description != key


@pytest.mark.parametrize(
    ("action", "points"),
    [
        ("login", 5),
        ("message.text", 2),
        ("message.voice", 5),
        ("message.video", 5),
        ("file", 10),
        ("image", 10),
        ("reply", 3),
        ("vote", 8),
        ("survey", 8),
        ("group.create", 15),
        ("invite", 15),
        ("like", 1),
        ("online", 1),
        ("feature.first_use", 20),
    ],
)
def test_default_actor_points(default_book: RuleBook, action: str, points: int) -> None:
    demo = default_book.tenant("demo")
    assert demo is not None
    actor = demo.actions[action].credit(Role.ACTOR)
    assert actor is not None
    assert actor.points == points


@pytest.mark.parametrize(
    "action",
    [
        "login",
        "message.text",
        "message.voice",
        "message.video",
        "file",
        "image",
        "reply",
        "vote",
        "survey",
        "group.create",
        "online",
        "feature.first_use",
    ],
)
def test_default_solo_actions_credit_only_the_actor(default_book: RuleBook, action: str) -> None:
    demo = default_book.tenant("demo")
    assert demo is not None
    rule = demo.actions[action]
    assert [c.role for c in rule.credits] == [Role.ACTOR]
    assert rule.target_required is False


def test_default_login_is_5_points_once_a_day(default_book: RuleBook) -> None:
    demo = default_book.tenant("demo")
    assert demo is not None
    actor = demo.actions["login"].credit(Role.ACTOR)
    assert actor == CreditRule(Role.ACTOR, 5, {"caps": (LimitRule(Period.DAY, Metric.COUNT, 1),)})


def test_default_like_credits_giver_and_receiver(default_book: RuleBook) -> None:
    demo = default_book.tenant("demo")
    assert demo is not None
    like = demo.actions["like"]
    assert like.target_required is True
    assert [c.role for c in like.credits] == [Role.ACTOR, Role.TARGET]
    assert like.credits[0] == CreditRule(
        Role.ACTOR, 1, {"caps": (LimitRule(Period.DAY, Metric.COUNT, 10),)}
    )
    assert like.credits[1] == CreditRule(
        Role.TARGET, 1, {"caps": (LimitRule(Period.DAY, Metric.COUNT, 5, per_counterpart=True),)}
    )


def test_default_thanks_card_pays_only_the_receiver(default_book: RuleBook) -> None:
    demo = default_book.tenant("demo")
    assert demo is not None
    card = demo.actions["thanks_card"]
    # The sender's credit pays nothing: it is the weekly giving budget.
    assert card.credit(Role.ACTOR) == CreditRule(
        Role.ACTOR, 0, {"caps": (LimitRule(Period.WEEK, Metric.COUNT, 5),)}
    )
    assert [c.role for c in card.credits] == [Role.ACTOR, Role.TARGET]
    assert card.target_required is True and card.actor_gates is True
    target = card.credit(Role.TARGET)
    assert target is not None
    assert target.points > 0


def test_default_online_is_1_point_per_30_units(default_book: RuleBook) -> None:
    demo = default_book.tenant("demo")
    assert demo is not None
    online = demo.actions["online"].credit(Role.ACTOR)
    assert online is not None
    assert (online.points, online.part(PER_QUANTITY)) == (1, 30)


def test_default_feature_first_use_is_once_ever_per_feature(default_book: RuleBook) -> None:
    demo = default_book.tenant("demo")
    assert demo is not None
    rule = demo.actions["feature.first_use"]
    assert rule.attributes_required == ("feature",)
    actor = rule.credit(Role.ACTOR)
    assert actor is not None
    assert actor.part(LIMITS) == (LimitRule(Period.EVER, Metric.COUNT, 1, by_attribute="feature"),)
    assert actor.part(LIMITS)[0].label() == "once ever per feature"


def test_default_invite_needs_a_target(default_book: RuleBook) -> None:
    demo = default_book.tenant("demo")
    assert demo is not None
    invite = demo.actions["invite"]
    assert invite.target_required is True
    assert [c.role for c in invite.credits] == [Role.ACTOR]


def test_load_rule_file_none_is_the_packaged_yaml() -> None:
    raw = load_rule_file(None)
    assert raw["version"] == 1
    assert raw["tenants"][0]["id"] == "demo"
    assert "like" in raw["rule_sets"]["default"]["actions"]


@pytest.mark.parametrize(
    ("action", "target", "roles_points"),
    [
        ("login", "", [(Role.ACTOR, 5)]),
        ("message.text", "", [(Role.ACTOR, 2)]),
        ("message.voice", "", [(Role.ACTOR, 5)]),
        ("message.video", "", [(Role.ACTOR, 5)]),
        ("file", "", [(Role.ACTOR, 10)]),
        ("image", "", [(Role.ACTOR, 10)]),
        ("reply", "", [(Role.ACTOR, 3)]),
        ("vote", "", [(Role.ACTOR, 8)]),
        ("survey", "", [(Role.ACTOR, 8)]),
        ("group.create", "", [(Role.ACTOR, 15)]),
        ("invite", "bob", [(Role.ACTOR, 15)]),
        ("like", "bob", [(Role.ACTOR, 1), (Role.TARGET, 1)]),
    ],
)
def test_default_engine_plans_seed_points(
    default_engine: RulesEngine,
    action: str,
    target: str,
    roles_points: list[tuple[Role, int]],
) -> None:
    plan = plan_ok(default_engine, event(action, target=target))
    assert [(op.role, op.points_per_unit) for op in plan.ops] == roles_points


def test_default_engine_like_limits(default_engine: RulesEngine) -> None:
    plan = plan_ok(default_engine, event("like", user="alice", target="bob"))
    actor, target = plan.ops
    assert [(c.metric, c.max) for c in limits(actor)] == [(Metric.COUNT, 10)]
    assert "bob" not in limits(actor)[0].counter
    assert [(c.metric, c.max) for c in limits(target)] == [(Metric.COUNT, 5)]
    assert limits(target)[0].counter.endswith(SEP + "~alice")
    assert limits(target)[0].label == "at most 5 times a day from the same colleague"
    assert limits(actor)[0].label == "at most 10 times a day"


def test_default_engine_thanks_card_pays_receiver_only(default_engine: RulesEngine) -> None:
    plan = plan_ok(default_engine, event("thanks_card", user="alice", target="bob"))
    # The sender's 0-point budget credit first (the anchor), then the receiver's.
    assert [(op.user_id, op.role, op.points_per_unit) for op in plan.ops] == [
        ("alice", Role.ACTOR, 0), ("bob", Role.TARGET, 5),
    ]  # fmt: skip


# ===========================================================================
# Loader validation


def valid_like() -> dict[str, Any]:
    return {
        "description": "Like",
        "actor": {"points": 1, "daily_count_max": 10},
        "target": {"points": 1, "pair_daily_count_max": 5},
    }


def test_minimal_document_parses_with_defaults() -> None:
    book = parse_rule_book(
        {
            "tenants": [{"id": "acme"}],
            "rule_sets": {"default": {"actions": {"x": {"actor": {"points": 2}}}}},
        }
    )
    acme = book.tenant("acme")
    assert acme is not None
    assert acme.timezone == ZoneInfo("UTC")
    assert acme.shards == 1
    assert acme.rule_set == "default"
    rule = acme.actions["x"]
    assert rule == ActionRule(
        key="x",
        description="x",
        credits=(CreditRule(Role.ACTOR, 2),),
        target_required=False,
        attributes_required=(),
    )


def test_tenants_share_a_rule_set_and_pick_their_own() -> None:
    document = {
        "tenants": [
            {"id": "acme", "timezone": "Europe/Berlin", "shards": 8},
            {"id": "globex", "rule_set": "premium"},
        ],
        "rule_sets": {
            "default": {"actions": {"x": {"actor": {"points": 2}}}},
            "premium": {"actions": {"x": {"actor": {"points": 7}}}},
        },
    }
    book = parse_rule_book(document, default_shards=3)
    acme, globex = book.tenant("acme"), book.tenant("globex")
    assert acme is not None and globex is not None
    assert acme.timezone == ZoneInfo("Europe/Berlin")
    assert acme.shards == 8
    assert globex.shards == 3
    assert globex.rule_set == "premium"
    acme_x = acme.actions["x"].credit(Role.ACTOR)
    globex_x = globex.actions["x"].credit(Role.ACTOR)
    assert acme_x is not None and globex_x is not None
    assert (acme_x.points, globex_x.points) == (2, 7)


def test_rule_error_is_a_value_error_listing_each_problem() -> None:
    document = doc({"like": {"actor": {"points": -1}}})
    with pytest.raises(ValueError) as info:
        parse_rule_book(document)
    assert isinstance(info.value, RuleError)
    assert info.value.problems == [
        "$.rule_sets.default.actions.like.actor.points: must be between 0 and 1000000, got -1"
    ]
    assert "$.rule_sets.default.actions.like.actor.points" in str(info.value)


def test_several_problems_are_reported_at_once() -> None:
    document = doc(
        {
            "like": {
                "actor": {"points": "one", "bonus": 1},
                "target": {"points": 1, "limits": [{"per": "daily", "count": 1}]},
            },
            "Bad Key": {"actor": {"points": 1}},
        },
        tenants=[
            {"id": "acme", "timezone": "Mars/Olympus"},
            {"id": "acme"},
            {"id": "globex", "rule_set": "premium"},
        ],
    )
    document["extra"] = True
    problems = problems_of(document)
    expected = [
        ("$.extra", "unknown key"),
        ("$.rule_sets.default.actions.like.actor.bonus", "unknown key"),
        ("$.rule_sets.default.actions.like.actor.points", "must be an integer, got 'one'"),
        ("$.rule_sets.default.actions.like.target.limits[0].per", "got 'daily'"),
        ("$.rule_sets.default.actions.Bad Key", "action keys are"),
        ("$.tenants[0].timezone", "unknown IANA time zone 'Mars/Olympus'"),
        ("$.tenants[1].id", "tenant 'acme' is defined twice"),
        ("$.tenants[2].rule_set", "no rule set named 'premium'"),
    ]
    for path, text in expected:
        assert has_problem(problems, path, text), (path, problems)
    assert len(problems) == len(expected)
    with pytest.raises(RuleError) as info:
        parse_rule_book(document)
    for path, _ in expected:
        assert path in str(info.value)


A = "$.rule_sets.default.actions"


@pytest.mark.parametrize(
    ("actions", "path", "text"),
    [
        # Unknown keys at each level.
        ({"like": {**valid_like(), "colour": "red"}}, f"{A}.like.colour", "unknown key"),
        (
            {"like": {**valid_like(), "actor": {"points": 1, "bonus": 2}}},
            f"{A}.like.actor.bonus",
            "unknown key (allowed: ",
        ),
        (
            {"x": {"actor": {"points": 1, "limits": [{"per": "day", "count": 1, "max": 2}]}}},
            f"{A}.x.actor.limits[0].max",
            "unknown key",
        ),
        # Points: required, integer, in range.
        ({"x": {"actor": {"daily_count_max": 2}}}, f"{A}.x.actor.points", "is required"),
        ({"x": {"actor": {"points": -1}}}, f"{A}.x.actor.points", "between 0 and 1000000"),
        ({"x": {"actor": {"points": -3}}}, f"{A}.x.actor.points", "got -3"),
        ({"x": {"actor": {"points": 1_000_001}}}, f"{A}.x.actor.points", "between 0 and"),
        ({"x": {"actor": {"points": 1.5}}}, f"{A}.x.actor.points", "must be an integer"),
        ({"x": {"actor": {"points": "5"}}}, f"{A}.x.actor.points", "must be an integer"),
        ({"x": {"actor": {"points": True}}}, f"{A}.x.actor.points", "must be an integer"),
        ({"x": {"actor": {"points": None}}}, f"{A}.x.actor.points", "must be an integer"),
        # Other numbers.
        (
            {"x": {"actor": {"points": 1, "per_quantity": -1}}},
            f"{A}.x.actor.per_quantity",
            "between 0 and 1000000",
        ),
        (
            {"x": {"actor": {"points": 1, "per_quantity": 1_000_001}}},
            f"{A}.x.actor.per_quantity",
            "between 0 and 1000000",
        ),
        (
            {"x": {"actor": {"points": 1, "min_interval_ms": 7 * 86_400_000 + 1}}},
            f"{A}.x.actor.min_interval_ms",
            "between 0 and 604800000",
        ),
        (
            {"x": {"actor": {"points": 1, "daily_count_max": 0}}},
            f"{A}.x.actor.daily_count_max",
            "between 1 and",
        ),
        (
            {"x": {"actor": {"points": 1, "daily_points_max": "40"}}},
            f"{A}.x.actor.daily_points_max",
            "must be an integer",
        ),
        (
            {"x": {"actor": {"points": 1, "once_per_day": "yes"}}},
            f"{A}.x.actor.once_per_day",
            "must be true or false",
        ),
        (
            {"x": {"actor": {"points": 1, "once_ever": 1}}},
            f"{A}.x.actor.once_ever",
            "must be true or false",
        ),
        # Limits.
        (
            {"x": {"actor": {"points": 1, "limits": [{"per": "daily", "count": 1}]}}},
            f"{A}.x.actor.limits[0].per",
            "must be one of day, week, month, ever, got 'daily'",
        ),
        (
            {"x": {"actor": {"points": 1, "limits": [{"count": 1}]}}},
            f"{A}.x.actor.limits[0].per",
            "got None",
        ),
        (
            {"x": {"actor": {"points": 1, "limits": [{"per": "day", "count": 1, "points": 5}]}}},
            f"{A}.x.actor.limits[0]",
            "needs exactly one of `count` or `points`",
        ),
        (
            {"x": {"actor": {"points": 1, "limits": [{"per": "week", "per_counterpart": False}]}}},
            f"{A}.x.actor.limits[0]",
            "needs exactly one of `count` or `points`",
        ),
        (
            {"x": {"actor": {"points": 1, "limits": [{"per": "day", "count": 0}]}}},
            f"{A}.x.actor.limits[0].count",
            "between 1 and 1000000000",
        ),
        (
            {"x": {"actor": {"points": 1, "limits": [{"per": "day", "points": 2.5}]}}},
            f"{A}.x.actor.limits[0].points",
            "must be an integer",
        ),
        (
            {
                "x": {
                    "actor": {
                        "points": 1,
                        "limits": [{"per": "ever", "count": 1, "by_attribute": "bad name!"}],
                    }
                }
            },
            f"{A}.x.actor.limits[0].by_attribute",
            "must be an attribute name",
        ),
        (
            {
                "x": {
                    "target_required": True,
                    "actor": {
                        "points": 1,
                        "limits": [{"per": "day", "count": 1, "per_counterpart": "yes"}],
                    },
                }
            },
            f"{A}.x.actor.limits[0].per_counterpart",
            "must be true or false",
        ),
        (
            {"x": {"actor": {"points": 1, "limits": {"per": "day", "count": 1}}}},
            f"{A}.x.actor.limits",
            "must be a list",
        ),
        (
            {"x": {"actor": {"points": 1, "limits": ["daily"]}}},
            f"{A}.x.actor.limits[0]",
            "must be a mapping, got str",
        ),
        # Actions.
        ({"x": {"description": "nothing to earn"}}, f"{A}.x", "needs an `actor` or a `target`"),
        ({"x": None}, f"{A}.x", "must be a mapping, got NoneType"),
        ({"x": {"actor": 5}}, f"{A}.x.actor", "must be a mapping, got int"),
        (
            {"x": {"actor": {"points": 1, "pair_daily_count_max": 1}}},
            f"{A}.x",
            "a per_counterpart limit needs target_required: true",
        ),
        (
            {
                "x": {
                    "actor": {
                        "points": 1,
                        "limits": [{"per": "day", "count": 3, "per_counterpart": True}],
                    }
                }
            },
            f"{A}.x",
            "a per_counterpart limit needs target_required: true",
        ),
        (
            {"x": {"target_required": "yes", "actor": {"points": 1}}},
            f"{A}.x.target_required",
            "must be true or false",
        ),
        (
            {"x": {"attributes_required": "feature", "actor": {"points": 1}}},
            f"{A}.x.attributes_required",
            "must be a list of attribute names",
        ),
        (
            {"x": {"attributes_required": ["ok", "not ok"], "actor": {"points": 1}}},
            f"{A}.x.attributes_required",
            "must be a list of attribute names",
        ),
        (
            {"x": {"description": "d" * 201, "actor": {"points": 1}}},
            f"{A}.x.description",
            "at most 200 characters",
        ),
        (
            {"x": {"description": 42, "actor": {"points": 1}}},
            f"{A}.x.description",
            "must be one line",
        ),
    ],
)
def test_action_problems_are_reported_with_their_path(
    actions: dict[str, Any], path: str, text: str
) -> None:
    problems = problems_of(doc(actions))
    assert has_problem(problems, path, text), problems


@pytest.mark.parametrize(
    "key",
    ["Like", "-like", ".like", "like!", "like button", "é", "a" * 65, ""],
)
def test_bad_action_keys_are_refused(key: str) -> None:
    problems = problems_of(doc({key: {"actor": {"points": 1}}}))
    assert problems == [
        f"{A}.{key}: action keys are 1-64 chars of a-z 0-9 . _ - starting with a letter or digit"
    ]


@pytest.mark.parametrize("key", ["a", "like", "message.text", "group_create", "x-1", "9" * 64])
def test_good_action_keys_are_accepted(key: str) -> None:
    acme = book_of({key: {"actor": {"points": 1}}}).tenant("acme")
    assert acme is not None
    assert list(acme.actions) == [key]


@pytest.mark.parametrize(
    ("tenants", "path", "text"),
    [
        ([], "$.tenants", "must be a non-empty list"),
        ({"id": "acme"}, "$.tenants", "must be a non-empty list"),
        ("acme", "$.tenants", "must be a non-empty list"),
        (["acme"], "$.tenants[0]", "must be a mapping, got str"),
        ([{"id": "acme", "region": "eu"}], "$.tenants[0].region", "unknown key"),
        ([{"id": "has space"}], "$.tenants[0].id", "must be 1-128 chars"),
        ([{"id": ""}], "$.tenants[0].id", "must be 1-128 chars"),
        ([{"id": 42}], "$.tenants[0].id", "must be 1-128 chars"),
        ([{"id": "a" * 129}], "$.tenants[0].id", "must be 1-128 chars"),
        ([{"timezone": "UTC"}], "$.tenants[0].id", "must be 1-128 chars"),
        (
            [{"id": "acme"}, {"id": "acme"}],
            "$.tenants[1].id",
            "tenant 'acme' is defined twice",
        ),
        (
            [{"id": "acme", "timezone": "Mars/Olympus"}],
            "$.tenants[0].timezone",
            "unknown IANA time zone 'Mars/Olympus'",
        ),
        (
            [{"id": "acme", "timezone": "../etc/passwd"}],
            "$.tenants[0].timezone",
            "unknown IANA time zone",
        ),
        ([{"id": "acme", "timezone": ""}], "$.tenants[0].timezone", "unknown IANA time zone"),
        (
            [{"id": "acme", "rule_set": "premium"}],
            "$.tenants[0].rule_set",
            "no rule set named 'premium' in $.rule_sets",
        ),
        ([{"id": "acme", "shards": 0}], "$.tenants[0].shards", "between 1 and 1024"),
        ([{"id": "acme", "shards": 1025}], "$.tenants[0].shards", "between 1 and 1024"),
        ([{"id": "acme", "shards": "2"}], "$.tenants[0].shards", "must be an integer"),
    ],
)
def test_tenant_problems_are_reported_with_their_path(tenants: Any, path: str, text: str) -> None:
    problems = problems_of(doc({"x": {"actor": {"points": 1}}}, tenants=tenants))
    assert has_problem(problems, path, text), problems


def test_missing_tenants_is_refused() -> None:
    problems = problems_of({"rule_sets": {"default": {"actions": {"x": {"actor": {"points": 1}}}}}})
    assert problems == ["$.tenants: must be a non-empty list"]


@pytest.mark.parametrize(
    ("document", "path", "text"),
    [
        ([], "$", "must be a mapping, got list"),
        (None, "$", "must be a mapping, got NoneType"),
        ({**doc({"x": {"actor": {"points": 1}}}), "version": 2}, "$.version", "only version 1"),
        ({**doc({"x": {"actor": {"points": 1}}}), "extra": 1}, "$.extra", "unknown key"),
        (
            {"tenants": [{"id": "acme"}], "rule_sets": {"default": {"rules": {}}}},
            "$.rule_sets.default.rules",
            "unknown key",
        ),
        (
            {"tenants": [{"id": "acme"}], "rule_sets": {"default": []}},
            "$.rule_sets.default",
            "must be a mapping",
        ),
        (
            {"tenants": [{"id": "acme"}], "rule_sets": {"default": {"actions": []}}},
            "$.rule_sets.default.actions",
            "must be a mapping",
        ),
        ({"tenants": [{"id": "acme"}], "rule_sets": []}, "$.rule_sets", "must be a mapping"),
    ],
)
def test_document_problems_are_reported_with_their_path(
    document: Any, path: str, text: str
) -> None:
    problems = problems_of(document)
    assert has_problem(problems, path, text), problems


def test_per_counterpart_is_fine_with_a_target() -> None:
    # Explicit target_required on an actor-only action.
    invite = book_of(
        {"invite": {"target_required": True, "actor": {"points": 1, "pair_daily_count_max": 1}}}
    ).tenant("acme")
    assert invite is not None
    assert invite.actions["invite"].target_required is True
    # A target credit implies target_required.
    like = book_of({"like": valid_like()}).tenant("acme")
    assert like is not None
    assert like.actions["like"].target_required is True


def test_parse_leaves_the_input_intact() -> None:
    document = doc({"like": valid_like()})
    before = copy.deepcopy(document)
    parse_rule_book(document)
    assert document == before


def test_load_rule_file_reports_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("tenants: [\n  - id: acme\nrule_sets: {", encoding="utf-8")
    with pytest.raises(RuleError) as info:
        load_rule_file(path)
    assert len(info.value.problems) == 1
    # file:line:column, never PyYAML's "<unicode string>".
    assert info.value.problems[0].startswith(f"{path}:2:3: not valid YAML")
    assert "<unicode string>" not in info.value.problems[0]
    with pytest.raises(RuleError):
        load_rule_book(path)


def test_load_rule_book_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\n"
        "tenants:\n"
        "  - {id: acme, timezone: America/New_York, shards: 2}\n"
        "rule_sets:\n"
        "  default:\n"
        "    actions:\n"
        "      login: {actor: {points: 3, once_per_day: true}}\n",
        encoding="utf-8",
    )
    acme = load_rule_book(path).tenant("acme")
    assert acme is not None
    assert acme.timezone == ZoneInfo("America/New_York")
    assert acme.shards == 2
    login = acme.actions["login"].credit(Role.ACTOR)
    assert login == CreditRule(Role.ACTOR, 3, {"caps": (LimitRule(Period.DAY, Metric.COUNT, 1),)})


def test_load_rule_book_reports_validation_problems_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("tenants: []\nrule_sets: {}\n", encoding="utf-8")
    with pytest.raises(RuleError) as info:
        load_rule_book(path)
    assert info.value.problems == ["$.tenants: must be a non-empty list"]


def test_empty_yaml_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(RuleError) as info:
        load_rule_book(path)
    assert "$: must be a mapping, got NoneType" in info.value.problems


# ---------------------------------------------------------------------------
# Loader edge cases: empty mappings, odd zone names, shared YAML lists.


@pytest.mark.parametrize(
    "document",
    [
        doc({"x": {"actor": {"points": 1, "limits": [{}]}}}),
        doc({"x": {"actor": {"points": 1}, "target": {}}}),
        doc({"x": {"actor": {"points": 1}}, "y": {}}),
        doc({"x": {"actor": {"points": 1}}}, tenants=[{}]),
    ],
    ids=["limit", "credit", "action", "tenant"],
)
def test_empty_mappings_are_reported_not_silently_dropped(document: dict[str, Any]) -> None:
    with pytest.raises(RuleError):
        parse_rule_book(document)


def test_attributes_required_shared_by_a_yaml_anchor_stays_per_action(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "tenants: [{id: acme}]\n"
        "rule_sets:\n"
        "  default:\n"
        "    actions:\n"
        "      x:\n"
        "        attributes_required: &attrs [channel]\n"
        "        actor:\n"
        "          points: 1\n"
        "          limits: [{per: ever, count: 1, by_attribute: feature}]\n"
        "      y: {attributes_required: *attrs, actor: {points: 1}}\n",
        encoding="utf-8",
    )
    acme = load_rule_book(path).tenant("acme")
    assert acme is not None
    assert acme.actions["x"].attributes_required == ("channel", "feature")
    assert acme.actions["y"].attributes_required == ("channel",)


def test_timezone_naming_a_zone_folder_is_a_rule_error() -> None:
    problems = problems_of(doc({"x": {"actor": {"points": 1}}}, [{"id": "a", "timezone": "Asia"}]))
    assert has_problem(problems, "$.tenants[0].timezone", "unknown IANA time zone")


def test_unhashable_rule_set_reference_is_a_rule_error() -> None:
    problems = problems_of(doc({"x": {"actor": {"points": 1}}}, [{"id": "a", "rule_set": ["x"]}]))
    assert has_problem(problems, "$.tenants[0].rule_set")


# ===========================================================================
# Shorthands and LimitRule.label()


@pytest.mark.parametrize(
    ("credit", "limits"),
    [
        ({}, ()),
        ({"daily_count_max": 7}, (LimitRule(Period.DAY, Metric.COUNT, 7),)),
        ({"daily_points_max": 40}, (LimitRule(Period.DAY, Metric.POINTS, 40),)),
        (
            {"pair_daily_count_max": 2},
            (LimitRule(Period.DAY, Metric.COUNT, 2, per_counterpart=True),),
        ),
        ({"once_per_day": True}, (LimitRule(Period.DAY, Metric.COUNT, 1),)),
        ({"once_per_day": False}, ()),
        ({"once_ever": True}, (LimitRule(Period.EVER, Metric.COUNT, 1),)),
        ({"once_ever": False}, ()),
        (
            {"limits": [{"per": "week", "points": 100}]},
            (LimitRule(Period.WEEK, Metric.POINTS, 100),),
        ),
        (
            {"limits": [{"per": "month", "count": 3, "per_counterpart": True}]},
            (LimitRule(Period.MONTH, Metric.COUNT, 3, per_counterpart=True),),
        ),
        (
            {
                "limits": [{"per": "ever", "count": 1, "by_attribute": "feature"}],
                "daily_points_max": 9,
                "daily_count_max": 4,
                "once_ever": True,
            },
            (
                LimitRule(Period.DAY, Metric.COUNT, 4),
                LimitRule(Period.DAY, Metric.POINTS, 9),
                LimitRule(Period.EVER, Metric.COUNT, 1),
                LimitRule(Period.EVER, Metric.COUNT, 1, by_attribute="feature"),
            ),
        ),
    ],
)
def test_shorthands_expand_to_limits(credit: dict[str, Any], limits: tuple[LimitRule, ...]) -> None:
    acme = book_of(
        {"x": {"target_required": True, "actor": {"points": 2, **credit}}},
    ).tenant("acme")
    assert acme is not None
    actor = acme.actions["x"].credit(Role.ACTOR)
    assert actor is not None
    assert actor.part(LIMITS) == limits


def test_by_attribute_adds_the_attribute_to_attributes_required() -> None:
    acme = book_of(
        {
            "x": {
                "attributes_required": ["channel"],
                "actor": {
                    "points": 1,
                    "limits": [
                        {"per": "ever", "count": 1, "by_attribute": "feature"},
                        {"per": "day", "count": 2, "by_attribute": "channel"},
                    ],
                },
            }
        }
    ).tenant("acme")
    assert acme is not None
    assert acme.actions["x"].attributes_required == ("channel", "feature")


def test_credit_fields_are_read() -> None:
    acme = book_of(
        {"online": {"actor": {"points": 3, "per_quantity": 30, "min_interval_ms": 1000}}}
    ).tenant("acme")
    assert acme is not None
    assert acme.actions["online"].credits == (
        CreditRule(Role.ACTOR, 3, {"accumulators": 30, "throttles": 1000}),
    )


@pytest.mark.parametrize(
    ("limit", "label"),
    [
        (LimitRule(Period.DAY, Metric.COUNT, 1), "once a day"),
        (LimitRule(Period.WEEK, Metric.COUNT, 1), "once a week"),
        (LimitRule(Period.MONTH, Metric.COUNT, 1), "once a month"),
        (LimitRule(Period.EVER, Metric.COUNT, 1), "once ever"),
        (LimitRule(Period.DAY, Metric.COUNT, 10), "at most 10 times a day"),
        (LimitRule(Period.WEEK, Metric.COUNT, 3), "at most 3 times a week"),
        (LimitRule(Period.DAY, Metric.POINTS, 40), "at most 40 points a day"),
        (LimitRule(Period.MONTH, Metric.POINTS, 500), "at most 500 points a month"),
        (LimitRule(Period.EVER, Metric.POINTS, 1000), "at most 1000 points ever"),
        # A one-point cap is still a points cap, not "once".
        (LimitRule(Period.DAY, Metric.POINTS, 1), "at most 1 point a day"),
        (
            LimitRule(Period.DAY, Metric.COUNT, 5, per_counterpart=True),
            "at most 5 times a day from the same colleague",
        ),
        (
            LimitRule(Period.DAY, Metric.COUNT, 1, per_counterpart=True),
            "once a day from the same colleague",
        ),
        (
            LimitRule(Period.EVER, Metric.COUNT, 1, by_attribute="feature"),
            "once ever per feature",
        ),
        (
            LimitRule(Period.WEEK, Metric.POINTS, 7, per_counterpart=True, by_attribute="kind"),
            "at most 7 points a week from the same colleague per kind",
        ),
    ],
)
def test_limit_labels(limit: LimitRule, label: str) -> None:
    assert limit.label() == label


def test_action_rule_credit_by_role() -> None:
    actor = CreditRule(Role.ACTOR, 1)
    target = CreditRule(Role.TARGET, 2)
    both = ActionRule("like", "Like", (actor, target))
    assert both.credit(Role.ACTOR) is actor
    assert both.credit(Role.TARGET) is target
    only_target = ActionRule("card", "Card", (target,))
    assert only_target.credit(Role.ACTOR) is None


# ===========================================================================
# RulesEngine.plan


def test_unknown_tenant_is_rejected(default_engine: RulesEngine) -> None:
    result = default_engine.plan(event("login", tenant="nobody"), recorded_at_ms=RECORDED_MS)
    assert isinstance(result, Rejection)
    assert result.field == "tenant_id"
    assert "nobody" in result.message


def test_unknown_action_has_no_rule(default_engine: RulesEngine) -> None:
    result = default_engine.plan(event("dance"), recorded_at_ms=RECORDED_MS)
    assert isinstance(result, NoRule)
    assert "dance" in result.message
    assert "demo" in result.message


def test_engine_tenant_lookup(default_engine: RulesEngine) -> None:
    demo = default_engine.tenant("demo")
    assert demo is not None
    assert demo.tenant_id == "demo"
    assert default_engine.tenant("nobody") is None


@pytest.mark.parametrize("action", ["like", "thanks_card", "invite"])
def test_target_is_required(default_engine: RulesEngine, action: str) -> None:
    result = default_engine.plan(event(action), recorded_at_ms=RECORDED_MS)
    assert isinstance(result, Rejection)
    assert result.field == "target_user_id"
    assert action in result.message


@pytest.mark.parametrize("action", ["like", "thanks_card", "invite"])
def test_target_must_differ_from_user(default_engine: RulesEngine, action: str) -> None:
    result = default_engine.plan(
        event(action, user="alice", target="alice"), recorded_at_ms=RECORDED_MS
    )
    assert isinstance(result, Rejection)
    assert result.field == "target_user_id"
    assert "differ" in result.message


def test_self_target_is_fine_when_no_target_is_required(default_engine: RulesEngine) -> None:
    plan = plan_ok(default_engine, event("login", user="alice", target="alice"))
    assert [op.user_id for op in plan.ops] == ["alice"]


@pytest.mark.parametrize("attributes", [None, {}, {"other": "x"}, {"feature": ""}])
def test_feature_first_use_needs_the_feature_attribute(
    default_engine: RulesEngine, attributes: dict[str, str] | None
) -> None:
    result = default_engine.plan(
        event("feature.first_use", attributes=attributes), recorded_at_ms=RECORDED_MS
    )
    assert isinstance(result, Rejection)
    assert result.field == "attributes[feature]"


def test_like_plans_actor_then_target(default_engine: RulesEngine) -> None:
    ev = event(
        "like",
        user="alice",
        target="bob",
        group="g1",
        department="d1",
        attributes={"msg": "m1"},
        event_id="like-1",
    )
    plan = plan_ok(default_engine, ev)
    demo = default_engine.tenant("demo")
    assert demo is not None
    assert plan.rule is demo.actions["like"]
    assert len(plan.ops) == 2
    actor, target = plan.ops
    assert (actor.user_id, actor.role) == ("alice", Role.ACTOR)
    assert (target.user_id, target.role) == ("bob", Role.TARGET)
    assert actor.facts is not None and target.facts is not None
    assert actor.facts.counterpart_id == "bob"
    assert target.facts.counterpart_id == "alice"
    for op in plan.ops:
        assert op.tenant_id == "demo"
        assert op.event_id == "like-1"
        assert op.fingerprint == fingerprint(ev)
        assert op.occurred_at_ms == AT_MS
        assert op.recorded_at_ms == RECORDED_MS
        assert op.facts is not None
        assert op.facts.action == "like"
        assert op.facts.group_id == "g1"
        assert op.facts.department_id == "d1"
        assert op.facts.attributes == {"msg": "m1"}
        assert op.facts.reason == "Like"
    assert actor.entry_key == "e:like-1:a:" + actor.user_id
    assert target.entry_key == "e:like-1:t:" + target.user_id
    # The two credits never share a counter or an interval key.
    assert {c.counter for c in limits(actor)}.isdisjoint(c.counter for c in limits(target))
    throttled = engine_for(
        book_of({"like": {"actor": {"points": 1, "min_interval_ms": 1000},
                          "target": {"points": 1, "min_interval_ms": 1000}}})
    )  # fmt: skip
    giver, receiver = plan_ok(throttled, event("like", tenant="acme", target="bob")).ops
    assert throttle(giver).name != throttle(receiver).name


def test_thanks_card_plans_the_budget_then_the_target(default_engine: RulesEngine) -> None:
    plan = plan_ok(default_engine, event("thanks_card", user="alice", target="bob"))
    budget, op = plan.ops
    # The budget is applied first; the receiver's credit keeps the record
    # under the event id alone (the event's identity, as before gates).
    assert (budget.user_id, budget.anchor, op.anchor) == ("alice", False, True)
    assert (op.user_id, op.role) == ("bob", Role.TARGET)
    assert op.facts is not None
    assert op.facts.counterpart_id == "alice"
    assert op.entry_key == "e:ev-1:t:bob"


def test_per_counterpart_counters_name_and_separate_the_counterpart(
    default_engine: RulesEngine,
) -> None:
    from_alice = plan_ok(default_engine, event("like", user="alice", target="bob")).ops[1]
    from_carol = plan_ok(default_engine, event("like", user="carol", target="bob")).ops[1]
    (a_limit,) = limits(from_alice)
    (c_limit,) = limits(from_carol)
    assert "alice" in a_limit.counter
    assert "carol" in c_limit.counter
    assert a_limit.counter != c_limit.counter
    # The giver's daily cap is one counter whoever receives the like.
    to_bob = plan_ok(default_engine, event("like", user="alice", target="bob")).ops[0]
    to_dan = plan_ok(default_engine, event("like", user="alice", target="dan")).ops[0]
    assert limits(to_bob)[0].counter == limits(to_dan)[0].counter


def test_actor_per_counterpart_counter_uses_the_target(default_engine: RulesEngine) -> None:
    to_bob = plan_ok(default_engine, event("invite", user="alice", target="bob")).ops[0]
    to_dan = plan_ok(default_engine, event("invite", user="alice", target="dan")).ops[0]
    pair_bob = [c for c in limits(to_bob) if c.max == 1]
    pair_dan = [c for c in limits(to_dan) if c.max == 1]
    assert len(pair_bob) == len(pair_dan) == 1
    assert "bob" in pair_bob[0].counter and "dan" in pair_dan[0].counter
    assert pair_bob[0].counter != pair_dan[0].counter
    daily_bob = [c.counter for c in limits(to_bob) if c.max == 5]
    daily_dan = [c.counter for c in limits(to_dan) if c.max == 5]
    assert daily_bob == daily_dan


def test_by_attribute_counters_differ_per_value(default_engine: RulesEngine) -> None:
    def counter(feature: str) -> str:
        op = plan_ok(
            default_engine, event("feature.first_use", attributes={"feature": feature})
        ).ops[0]
        (limit,) = limits(op)
        assert limit.period == PeriodRef(Period.EVER, "all", 0)
        assert (limit.metric, limit.max) == (Metric.COUNT, 1)
        return limit.counter

    search, share = counter("search"), counter("share")
    assert search != share
    assert "search" in search and "share" in share
    assert counter("search") == search


def test_counters_differ_per_action_and_metric() -> None:
    engine = engine_for(
        book_of(
            {
                "a": {
                    "actor": {
                        "points": 1,
                        "daily_count_max": 3,
                        "daily_points_max": 9,
                        "min_interval_ms": 1000,
                    }
                },
                "b": {"actor": {"points": 1, "daily_count_max": 3, "min_interval_ms": 1000}},
            }
        )
    )
    a = plan_ok(engine, event("a", tenant="acme")).ops[0]
    b = plan_ok(engine, event("b", tenant="acme")).ops[0]
    assert len({c.counter for c in limits(a)}) == 2
    assert limits(a)[0].counter != limits(b)[0].counter
    assert throttle(a).name != throttle(b).name


def test_two_limits_on_one_counter_collapse_to_the_stricter() -> None:
    engine = engine_for(
        book_of(
            {
                "x": {
                    "actor": {
                        "points": 1,
                        "daily_count_max": 10,
                        "once_per_day": True,
                        "limits": [{"per": "day", "count": 4}],
                    }
                },
                "y": {
                    "actor": {
                        "points": 1,
                        "limits": [{"per": "day", "points": 3}, {"per": "day", "points": 30}],
                    }
                },
            }
        )
    )
    (x,) = limits(plan_ok(engine, event("x", tenant="acme")).ops[0])
    assert (x.metric, x.max, x.label) == (Metric.COUNT, 1, "once a day")
    (y,) = limits(plan_ok(engine, event("y", tenant="acme")).ops[0])
    assert (y.metric, y.max, y.label) == (Metric.POINTS, 3, "at most 3 points a day")


def test_limits_on_different_periods_or_metrics_do_not_collapse() -> None:
    engine = engine_for(
        book_of(
            {
                "x": {
                    "actor": {
                        "points": 1,
                        "daily_count_max": 2,
                        "daily_points_max": 5,
                        "limits": [{"per": "week", "count": 6}, {"per": "month", "count": 20}],
                    }
                }
            }
        )
    )
    checked = limits(plan_ok(engine, event("x", tenant="acme")).ops[0])
    assert [(c.period.kind, c.metric, c.max) for c in checked] == [
        (Period.DAY, Metric.COUNT, 2),
        (Period.DAY, Metric.POINTS, 5),
        (Period.WEEK, Metric.COUNT, 6),
        (Period.MONTH, Metric.COUNT, 20),
    ]


QUANTITY_BOOK = {
    "plain": {"actor": {"points": 4}},
    "each": {"actor": {"points": 2, "per_quantity": 1}},
    "chunked": {"actor": {"points": 1, "per_quantity": 30}},
}


@pytest.mark.parametrize(
    ("action", "quantity", "op_quantity", "unit"),
    [
        ("plain", 1, 1, None),
        ("plain", 7, 1, None),
        ("each", 1, 1, None),
        ("each", 7, 7, None),
        ("chunked", 1, 1, 30),
        ("chunked", 45, 45, 30),
    ],
)
def test_quantity_and_accumulator(
    action: str, quantity: int, op_quantity: int, unit: int | None
) -> None:
    engine = engine_for(book_of(QUANTITY_BOOK))
    op = plan_ok(engine, event(action, tenant="acme", quantity=quantity)).ops[0]
    assert op.quantity == op_quantity
    # The ledger facts always keep what the event reported.
    assert op.facts is not None
    assert op.facts.quantity == quantity
    acc = accumulator(op)
    if unit is None:
        assert acc is None
    else:
        assert acc is not None
        assert acc.unit == unit
        assert acc.period == PeriodRef(
            Period.DAY, "2026-11-22", utc_s("2026-11-23T00:00:00") + STATE_RETENTION_S
        )


def test_default_online_accumulates_per_day_in_the_tenant_zone(
    default_engine: RulesEngine,
) -> None:
    op = plan_ok(default_engine, event("online", quantity=45)).ops[0]
    assert op.quantity == 45
    assert op.points_per_unit == 1
    acc = accumulator(op)
    assert isinstance(acc, Accumulate)
    assert acc.unit == 30
    assert acc.period.key == "2026-11-23"
    # The accumulator is not any limit's counter.
    assert acc.counter not in {c.counter for c in limits(op)}


def test_default_login_ignores_quantity(default_engine: RulesEngine) -> None:
    op = plan_ok(default_engine, event("login", quantity=9)).ops[0]
    assert op.quantity == 1
    assert accumulator(op) is None


def period_book() -> RuleBook:
    return book_of(
        {
            "x": {
                "actor": {
                    "points": 1,
                    "limits": [
                        {"per": "day", "count": 1},
                        {"per": "week", "count": 2},
                        {"per": "month", "count": 3},
                        {"per": "ever", "count": 4},
                    ],
                }
            }
        },
        tenants=[
            {"id": "sh", "timezone": "Asia/Shanghai"},
            {"id": "utc", "timezone": "UTC"},
            {"id": "la", "timezone": "America/Los_Angeles"},
        ],
    )


@pytest.mark.parametrize(
    ("tenant", "day", "week", "month", "day_end", "week_end", "month_end"),
    [
        (
            "sh",
            "2026-11-23",
            "2026-W48",
            "2026-11",
            "2026-11-23T16:00:00",
            "2026-11-29T16:00:00",
            "2026-11-30T16:00:00",
        ),
        (
            "utc",
            "2026-11-22",
            "2026-W47",
            "2026-11",
            "2026-11-23T00:00:00",
            "2026-11-23T00:00:00",
            "2026-12-01T00:00:00",
        ),
        (
            "la",
            "2026-11-22",
            "2026-W47",
            "2026-11",
            "2026-11-23T08:00:00",
            "2026-11-23T08:00:00",
            "2026-12-01T08:00:00",
        ),
    ],
)
def test_limit_periods_use_the_tenant_zone(
    tenant: str,
    day: str,
    week: str,
    month: str,
    day_end: str,
    week_end: str,
    month_end: str,
) -> None:
    engine = engine_for(period_book())
    op = plan_ok(engine, event("x", tenant=tenant)).ops[0]
    assert [c.period for c in limits(op)] == [
        PeriodRef(Period.DAY, day, utc_s(day_end) + STATE_RETENTION_S),
        PeriodRef(Period.WEEK, week, utc_s(week_end) + STATE_RETENTION_S),
        PeriodRef(Period.MONTH, month, utc_s(month_end) + STATE_RETENTION_S),
        PeriodRef(Period.EVER, "all", 0),
    ]
    assert counters(op) == (
        Bump(
            PeriodRef(Period.DAY, day, utc_s(day_end) + STATE_RETENTION_S),
            EARNED,
            Amount.POINTS,
        ),
    )


def test_default_tenant_day_is_shanghai_day(default_engine: RulesEngine) -> None:
    # 2026-11-22T17:30Z is 2026-11-23 01:30 in Shanghai.
    op = plan_ok(default_engine, event("login")).ops[0]
    (limit,) = limits(op)
    assert limit.period.kind is Period.DAY
    assert limit.period.key == "2026-11-23"
    assert limit.period.expires_at_s == utc_s("2026-11-23T16:00:00") + STATE_RETENTION_S
    assert limit.label == "once a day"


def test_state_retention_moves_expiry() -> None:
    book = period_book()
    short = RulesEngine(book, state_retention_s=60, dedup_retention_s=DEDUP_RETENTION_S)
    op = plan_ok(short, event("x", tenant="utc")).ops[0]
    assert limits(op)[0].period.expires_at_s == utc_s("2026-11-23T00:00:00") + 60


@pytest.mark.parametrize("retention", [0, 3600, DEDUP_RETENTION_S])
def test_dedup_expiry_counts_from_occurred_at(retention: int) -> None:
    engine = RulesEngine(
        load_rule_book(None), state_retention_s=STATE_RETENTION_S, dedup_retention_s=retention
    )
    plan = plan_ok(engine, event("like", target="bob"))
    for op in plan.ops:
        assert op.dedup_expires_at_s == AT_MS // 1000 + retention
        assert op.dedup_expires_at_s == utc_s("2026-11-22T17:30:00") + retention


@pytest.mark.parametrize(
    ("action", "target", "attributes"),
    [
        ("login", "", None),
        ("message.text", "", None),
        ("like", "bob", None),
        ("thanks_card", "bob", None),
        ("invite", "bob", None),
        ("online", "", None),
        ("feature.first_use", "", {"feature": "search"}),
    ],
)
def test_every_op_counts_points_earned_today(
    default_engine: RulesEngine,
    action: str,
    target: str,
    attributes: dict[str, str] | None,
) -> None:
    plan = plan_ok(default_engine, event(action, target=target, attributes=attributes))
    assert plan.ops
    for op in plan.ops:
        # (Tasks count in counters of their own.)
        assert tuple(b for b in counters(op) if b.counter == EARNED) == (
            Bump(
                PeriodRef(
                    Period.DAY,
                    "2026-11-23",
                    utc_s("2026-11-23T16:00:00") + STATE_RETENTION_S,
                ),
                EARNED,
                Amount.POINTS,
            ),
        )


def test_earned_counter_is_not_a_limit_counter(default_engine: RulesEngine) -> None:
    plan = plan_ok(default_engine, event("like", target="bob"))
    for op in plan.ops:
        assert EARNED not in {c.counter for c in limits(op)}


def test_min_interval_is_passed_on() -> None:
    engine = engine_for(book_of({"x": {"actor": {"points": 1, "min_interval_ms": 5000}}}))
    op = plan_ok(engine, event("x", tenant="acme")).ops[0]
    assert throttle(op).interval_ms == 5000
    assert throttle(op).name


def test_plan_is_deterministic(default_engine: RulesEngine) -> None:
    ev = event("like", target="bob", attributes={"k": "v"})
    first = default_engine.plan(ev, recorded_at_ms=RECORDED_MS)
    second = default_engine.plan(ev, recorded_at_ms=RECORDED_MS)
    assert first == second


def test_ops_are_credit_ops(default_engine: RulesEngine) -> None:
    plan = plan_ok(default_engine, event("like", target="bob"))
    assert all(isinstance(op, CreditOp) for op in plan.ops)


# ===========================================================================
# fingerprint


BASE = event(
    "like",
    user="alice",
    target="bob",
    quantity=1,
    attributes={"a": "1", "b": "2"},
    group="g",
    department="d",
)


def with_(**changes: Any) -> Event:
    return dataclasses.replace(BASE, **changes)


def test_fingerprint_is_a_stable_hex_string() -> None:
    fp = fingerprint(BASE)
    assert fp == fingerprint(with_())
    assert len(fp) == 16
    int(fp, 16)


@pytest.mark.parametrize(
    "changes",
    [
        {"occurred_at_ms": BASE.occurred_at_ms + 1},
        {"occurred_at_ms": BASE.occurred_at_ms + 7 * 86_400_000},
        {"attributes": {"b": "2", "a": "1"}},  # order of attributes is irrelevant
    ],
)
def test_fingerprint_ignores(changes: dict[str, Any]) -> None:
    assert fingerprint(with_(**changes)) == fingerprint(BASE)


@pytest.mark.parametrize(
    "changes",
    [
        {"user_id": "carol"},
        {"action": "thanks_card"},
        {"target_user_id": "dan"},
        {"target_user_id": ""},
        {"quantity": 2},
        {"group_id": "g2"},
        {"department_id": "d2"},
        {"attributes": {}},
        {"attributes": {"a": "1"}},
        {"attributes": {"a": "1", "b": "3"}},
        {"attributes": {"a": "1", "c": "2"}},
        {"attributes": {"a": "1", "b": "2", "c": ""}},
        # Values moved between fields must not look the same.
        {"user_id": "bob", "target_user_id": "alice"},
        {"group_id": "d", "department_id": "g"},
    ],
)
def test_fingerprint_changes_with_content(changes: dict[str, Any]) -> None:
    assert fingerprint(with_(**changes)) != fingerprint(BASE)


def test_fingerprint_separates_adjacent_fields() -> None:
    assert fingerprint(with_(user_id="ab", action="c")) != fingerprint(
        with_(user_id="a", action="bc")
    )


def test_fingerprint_tells_attribute_keys_from_values() -> None:
    assert fingerprint(with_(attributes={"a=b": "c"})) != fingerprint(
        with_(attributes={"a": "b=c"})
    )


def test_events_either_side_of_a_period_end_each_get_their_own_periods(
    default_engine: RulesEngine,
) -> None:
    """The engine keeps the last span of instants whose periods it knows;
    late events of the day before, mixed with the new day's, must not reuse it."""
    sunday_last_ms = utc_ms("2026-12-13T15:59:59") + 999  # 23:59:59.999 in Shanghai
    expected = {
        sunday_last_ms: {(Period.DAY, "2026-12-13"), (Period.WEEK, "2026-W50")},
        sunday_last_ms + 1: {(Period.DAY, "2026-12-14"), (Period.WEEK, "2026-W51")},
    }
    for i, at in enumerate([sunday_last_ms, sunday_last_ms + 1] * 3):
        op = plan_ok(default_engine, event("message.text", at_ms=at, event_id=f"m{i}")).ops[0]
        refs = {(s.period.kind, s.period.key) for s in op.steps if hasattr(s, "period")}
        assert refs == expected[at] | {(Period.EVER, "all")}, (i, refs)


def test_apply_and_restore_programs_stay_apart_at_the_same_instant() -> None:
    """A rebuild replays other steps (no checks) than an award: planning one
    and then the other at the same instant must give each its own program,
    as an engine that never planned the other would."""
    book = load_rule_book(None)
    shared = engine_for(book)
    at = utc_ms("2026-12-13T15:00:00")
    for i, restore in enumerate([False, True, False, True, True, False]):
        ev = event("message.text", at_ms=at + i, event_id=f"m{i}")
        got = shared.plan(ev, recorded_at_ms=RECORDED_MS, restore=restore)
        fresh = engine_for(book).plan(ev, recorded_at_ms=RECORDED_MS, restore=restore)
        assert isinstance(got, Plan) and isinstance(fresh, Plan)
        kinds = [[type(s).__name__ for s in op.steps] for op in got.ops]
        assert kinds == [[type(s).__name__ for s in op.steps] for op in fresh.ops], (i, restore)
        assert ("Check" in kinds[0]) is not restore, kinds
