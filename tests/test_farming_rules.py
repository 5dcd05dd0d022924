"""The farming signals' pure decisions (service/pointsd/service/rules/farming.py):
the `farming:` block of a rule set with its defaults, bounds and errors;
reciprocity and rings from a week's pair counts (a pair, rings of four and
five caught; a popular honest colleague and honest noise not); rate from
an hour's counts and event times (machine speed, machine-regular spacing);
and the spacing measure itself. No I/O, no clock."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from pointsd.service.rules import RuleError, load_rule_file, parse_rule_book
from pointsd.service.rules.farming import (
    DEFAULT_FARMING,
    FARMING,
    FarmingRules,
    PairCount,
    RateRules,
    ReciprocityRules,
    RingRules,
    Signal,
    gap_cv,
    pair_findings,
    rate_findings,
)

# The scenarios' thresholds, spelled out (the defaults are tuned on simulated
# traffic and may move; the last tests check the defaults catch rings).
RULES = FarmingRules(
    reciprocity=ReciprocityRules(min_each_way=15, min_share_percent=30),
    ring=RingRules(max_counterparts=3, min_each_way=2, min_share_percent=60, min_received=20),
    rate=RateRules(min_events_per_hour=60, median_multiple=10, spacing_min_events=20,
                   spacing_max_cv_percent=15),
)  # fmt: skip
WEEK = "2026-W49"
HOUR = "2026-12-03T14"
T0 = 1_796_000_000_000  # any instant: the rules see numbers, not dates


def farming_of(block: Any = None, *, omit: bool = False) -> FarmingRules:
    """The farming rules the default rule set parses to with `block`."""
    doc = load_rule_file(None)
    if not omit:
        doc["rule_sets"]["default"]["farming"] = block
    book = parse_rule_book(doc)
    return next(iter(book.tenants.values())).part(FARMING)


def problems_of(block: Any) -> list[str]:
    with pytest.raises(RuleError) as info:
        farming_of(block)
    return info.value.problems


def pairs_of(credits: Iterable[tuple[str, str, int]]) -> list[PairCount]:
    """PairCounts as the store returns them from (sender, receiver, count)
    credits, every pair kept (floor 1)."""
    got: Counter[tuple[str, str]] = Counter()
    for sender, receiver, n in credits:
        got[(receiver, sender)] += n
    total: Counter[str] = Counter()
    for (receiver, _), n in got.items():
        total[receiver] += n
    return [PairCount(r, s, n, total[r]) for (r, s), n in sorted(got.items())]


def ring(users: list[str], each: int) -> list[tuple[str, str, int]]:
    """Every member credits every other member `each` times."""
    return [(a, b, each) for a in users for b in users if a != b]


# -- the farming: block ---------------------------------------------------------


def test_a_rule_set_without_the_block_gets_every_default() -> None:
    rules = farming_of(omit=True)
    assert rules == DEFAULT_FARMING == FarmingRules()
    assert rules.enabled
    assert rules.actions == ("like", "thanks_card")
    assert rules.rate.ignore_actions == ("online", "login")
    assert rules.pair_floor == min(rules.reciprocity.min_each_way, rules.ring.min_each_way)
    assert farming_of({}) == DEFAULT_FARMING
    assert farming_of(None) == DEFAULT_FARMING


def test_thresholds_are_read_and_the_rest_stay_default() -> None:
    rules = farming_of(
        {
            "enabled": False,
            "actions": ["like"],
            "reciprocity": {"min_each_way": 8},
            "ring": {"max_counterparts": 4, "min_received": 30},
            "rate": {"min_events_per_hour": 120, "ignore_actions": []},
        }
    )
    assert not rules.enabled
    assert rules.actions == ("like",)
    d = DEFAULT_FARMING
    assert rules.reciprocity == ReciprocityRules(8, d.reciprocity.min_share_percent)
    assert rules.ring == RingRules(4, d.ring.min_each_way, d.ring.min_share_percent, 30)
    assert rules.rate == RateRules(min_events_per_hour=120, ignore_actions=())
    assert rules.pair_floor == min(8, d.ring.min_each_way)


def test_the_bounds_of_every_threshold_are_accepted() -> None:
    rules = farming_of(
        {
            "reciprocity": {"min_each_way": 1, "min_share_percent": 0},
            "ring": {"max_counterparts": 20, "min_each_way": 100_000, "min_share_percent": 100},
            "rate": {"median_multiple": 1000, "spacing_min_events": 3,
                     "spacing_max_cv_percent": 0},
        }
    )  # fmt: skip
    assert rules.reciprocity.min_each_way == 1
    assert rules.ring.max_counterparts == 20
    assert rules.rate.spacing_min_events == 3
    assert rules.pair_floor == 1


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ({"reciprocity": {"min_each_way": 0}},
         "farming.reciprocity.min_each_way: must be between 1 and 100000, got 0"),
        ({"reciprocity": {"min_share_percent": 101}},
         "farming.reciprocity.min_share_percent: must be between 0 and 100, got 101"),
        ({"ring": {"max_counterparts": 1}},
         "farming.ring.max_counterparts: must be between 2 and 20, got 1"),
        ({"ring": {"max_counterparts": 21}},
         "farming.ring.max_counterparts: must be between 2 and 20, got 21"),
        ({"ring": {"min_share_percent": 0}},
         "farming.ring.min_share_percent: must be between 1 and 100, got 0"),
        ({"rate": {"median_multiple": 1001}},
         "farming.rate.median_multiple: must be between 1 and 1000, got 1001"),
        ({"rate": {"spacing_min_events": 2}},
         "farming.rate.spacing_min_events: must be between 3 and 100000, got 2"),
        ({"rate": {"min_events_per_hour": "60"}},
         "farming.rate.min_events_per_hour: must be an integer, got '60'"),
        ({"ring": {"min_received": True}}, "farming.ring.min_received: must be an integer"),
        ({"enabled": "yes"}, "farming.enabled: must be true or false, got 'yes'"),
        ({"bogus": 1}, "farming.bogus: unknown key"),
        ({"ring": {"size": 3}}, "farming.ring.size: unknown key"),
        ({"ring": [3]}, "farming.ring: must be a mapping, got list"),
        ("on", "farming: must be a mapping, got str"),
        ({"actions": []}, "farming.actions: must be a non-empty list of action keys"),
        ({"actions": "like"}, "farming.actions: must be a non-empty list of action keys"),
        ({"actions": ["hug"]}, "farming.actions: 'hug': no such action in this rule set"),
        ({"actions": ["login"]}, "farming.actions: 'login' credits no target"),
        ({"rate": {"ignore_actions": ["nap"]}},
         "farming.rate.ignore_actions: 'nap': no such action in this rule set"),
        ({"rate": {"ignore_actions": "login"}},
         "farming.rate.ignore_actions: must be a list of action keys"),
    ],
)  # fmt: skip
def test_a_bad_block_is_refused_with_its_path(block: Any, problem: str) -> None:
    problems = problems_of(block)
    assert any(problem in p for p in problems), problems
    assert all(p.startswith("$.rule_sets.default.farming") for p in problems), problems


def test_every_problem_of_the_block_is_reported_at_once() -> None:
    problems = problems_of(
        {"bogus": 1, "actions": ["login"], "reciprocity": {"min_each_way": 0},
         "rate": {"ignore_actions": ["nope"]}}
    )  # fmt: skip
    assert len(problems) == 4, problems


# -- reciprocity and rings ----------------------------------------------------------


def test_a_pair_crediting_each_other_is_flagged_on_both_sides_with_evidence() -> None:
    pairs = pairs_of([("ann", "bob", 20), ("bob", "ann", 18), ("cat", "ann", 2)])
    found = pair_findings(RULES, pairs, WEEK)
    assert [(f.user_id, f.signal, f.counterparts) for f in found] == [
        ("ann", Signal.RECIPROCITY, ("bob",)),
        ("bob", Signal.RECIPROCITY, ("ann",)),
    ]
    ann = found[0]
    assert ann.period_key == WEEK
    assert "ann received 18 from bob (90% of the 20 ann received)" in ann.evidence
    assert "bob received 20 from ann (100% of 20)" in ann.evidence
    assert "threshold 15 each way and 30% of each one's" in ann.evidence
    assert "like, thanks_card" in ann.evidence


def test_a_pair_under_the_count_or_the_share_is_not_flagged() -> None:
    # 14 one way: under 15 each way.
    assert pair_findings(RULES, pairs_of([("a", "b", 20), ("b", "a", 14)]), WEEK) == []
    # 20 each way, but b is popular: 20 of 100 is 20% of what b received.
    many = [(f"fan{i}", "b", 10) for i in range(8)]
    pairs = pairs_of([("a", "b", 20), ("b", "a", 20), *many])
    assert pair_findings(RULES, pairs, WEEK) == []


@pytest.mark.parametrize("size", [4, 5])
def test_a_ring_of_colleagues_crediting_each_other_is_caught(size: int) -> None:
    members = [f"r{i}" for i in range(size)]
    # 7 each way: under reciprocity's 15, so only the ring can see them.
    found = pair_findings(RULES, pairs_of(ring(members, 7)), WEEK)
    assert [(f.user_id, f.signal) for f in found] == [(m, Signal.RING) for m in members]
    received = 7 * (size - 1)
    for f in found:
        assert len(f.counterparts) == 3  # at most max_counterparts named
        assert set(f.counterparts) <= set(members) - {f.user_id}
        share = 100 * 21 // received
        assert f.evidence.startswith(
            f"{share}% of the {received} credits {f.user_id} received in {WEEK}"
        )
        assert "threshold 60% of at least 20 from at most 3, each at least 2 each way" in f.evidence


def test_a_ring_is_seen_through_honest_noise_around_it() -> None:
    members = ["r0", "r1", "r2", "r3"]
    noise = honest_week(random.Random(7), 40)
    found = pair_findings(RULES, pairs_of([*ring(members, 7), *noise]), WEEK)
    assert {f.user_id for f in found} == set(members)


def test_a_popular_honest_colleague_is_not_flagged() -> None:
    # 30 colleagues like pop twice; pop likes 10 of them back twice.
    credits = [(f"c{i:02d}", "pop", 2) for i in range(30)]
    credits += [("pop", f"c{i:02d}", 2) for i in range(10)]
    assert pair_findings(RULES, pairs_of(credits), WEEK) == []


def test_honest_noise_trips_nothing() -> None:
    for seed in range(20):
        noise = honest_week(random.Random(seed), 60)
        assert pair_findings(RULES, pairs_of(noise), WEEK) == [], seed


def test_a_ring_under_min_received_is_not_flagged() -> None:
    # 3 colleagues, 3 each way: 9 received, under 20.
    assert pair_findings(RULES, pairs_of(ring(["a", "b", "c", "d"], 3)), WEEK) == []


def test_pair_findings_are_sorted_and_off_when_disabled() -> None:
    pairs = pairs_of([*ring(["z", "y", "x", "w"], 7), ("m", "n", 20), ("n", "m", 20)])
    found = pair_findings(RULES, pairs, WEEK)
    assert [f.user_id for f in found] == sorted(f.user_id for f in found)
    assert pair_findings(RULES, list(reversed(pairs)), WEEK) == found
    off = FarmingRules(enabled=False)
    assert pair_findings(off, pairs, WEEK) == []


def test_a_self_credit_is_no_pair() -> None:
    pairs = [PairCount("a", "a", 50, 50)]
    assert pair_findings(RULES, pairs, WEEK) == []


def honest_week(rng: random.Random, users: int) -> list[tuple[str, str, int]]:
    """Each user likes about ten colleagues a week, once or twice each,
    popular ones more often (a Zipf-like skew, as scripts/loadgen.py draws)."""
    out: list[tuple[str, str, int]] = []
    names = [f"h{i:02d}" for i in range(users)]
    weights = [1 / (rank + 1) for rank in range(users)]
    for giver in names:
        for receiver in rng.choices(names, weights, k=10):
            if receiver != giver:
                out.append((giver, receiver, rng.choice((1, 1, 2))))
    return out


# -- rate ---------------------------------------------------------------------------


def regular(n: int, every_s: float, start: int = T0) -> list[int]:
    return [start + int(i * every_s * 1000) for i in range(n)]


def bursty(rng: random.Random, n: int, start: int = T0) -> list[int]:
    """People: a few quick ones, then a long pause."""
    t, out = start, []
    for _ in range(n):
        t += int(rng.expovariate(1 / 90) * 1000) + 500
        out.append(t)
    return out


def test_machine_speed_is_flagged_against_the_tenant_median() -> None:
    counts = {f"u{i:02d}": 3 + i % 4 for i in range(50)} | {"bot": 120}
    found = rate_findings(RULES, counts, {}, HOUR, f"hour {HOUR}")
    assert [(f.user_id, f.signal, f.period_key) for f in found] == [("bot", Signal.RATE, HOUR)]
    assert found[0].counterparts == ()
    median = sorted(counts.values())[len(counts) // 2]
    assert f"120 events in hour {HOUR}" in found[0].evidence
    assert f"the tenant's median of {median}" in found[0].evidence
    assert "(threshold 60 and 10x)" in found[0].evidence


def test_many_events_are_not_flagged_where_everyone_is_busy() -> None:
    # 100 an hour, but the median is 30: not 10x.
    counts = {f"u{i:02d}": 30 for i in range(20)} | {"busy": 100}
    assert rate_findings(RULES, counts, {}, HOUR, "h") == []
    # 10x the median, under 60 an hour.
    counts = {f"u{i:02d}": 1 for i in range(20)} | {"keen": 59}
    assert rate_findings(RULES, counts, {}, HOUR, "h") == []


def test_regular_spacing_is_flagged_and_bursty_people_are_not() -> None:
    rng = random.Random(3)
    times = {"timer": regular(30, 60.0), "human": bursty(rng, 30)}
    counts = {f"u{i}": 2 for i in range(10)} | {"timer": 30, "human": 30}
    found = rate_findings(RULES, counts, times, HOUR, f"hour {HOUR}")
    assert [f.user_id for f in found] == ["timer"]
    assert f"30 events in hour {HOUR} about every 60.0 s with gaps varying by 0.0%" in (
        found[0].evidence
    )
    assert "threshold at most 15% over at least 20 events" in found[0].evidence


def test_spacing_needs_enough_events_and_ignores_users_without_times() -> None:
    counts = {"timer": 19, "other": 3}
    assert rate_findings(RULES, counts, {"timer": regular(19, 30.0)}, HOUR, "h") == []
    # Times of a user the counts do not name are ignored.
    assert rate_findings(RULES, {"a": 1}, {"ghost": regular(40, 30.0)}, HOUR, "h") == []


def test_both_reasons_are_given_in_one_finding() -> None:
    counts = {f"u{i}": 2 for i in range(30)} | {"bot": 100}
    times = {"bot": regular(100, 30.0)}
    found = rate_findings(RULES, counts, times, HOUR, "h")
    assert len(found) == 1
    assert found[0].evidence.count("threshold") == 2


def test_rate_is_off_when_disabled_or_without_counts() -> None:
    off = FarmingRules(enabled=False)
    assert rate_findings(off, {"bot": 1000}, {}, HOUR, "h") == []
    assert rate_findings(RULES, {}, {}, HOUR, "h") == []


# -- gap_cv -------------------------------------------------------------------------


def test_gap_cv_of_even_spacing_is_zero() -> None:
    assert gap_cv(regular(10, 5.0)) == 0.0
    # Order does not matter.
    assert gap_cv(list(reversed(regular(10, 5.0)))) == 0.0


def test_gap_cv_measures_the_spread_of_the_gaps() -> None:
    # Gaps 2 s and 4 s: mean 3, population stdev 1.
    times = [T0, T0 + 2000, T0 + 6000]
    assert gap_cv(times) == pytest.approx(1 / 3)


def test_gap_cv_needs_three_times_and_gaps_of_a_second() -> None:
    assert gap_cv([]) is None
    assert gap_cv([T0, T0 + 5000]) is None
    # A burst at one instant (gaps averaging under a second) is no spacing.
    assert gap_cv(regular(50, 0.5)) is None
    assert gap_cv([T0] * 5) is None


# -- the defaults ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [4, 5])
def test_the_defaults_catch_a_ring_liking_each_other_at_the_cap(size: int) -> None:
    # Five likes a day from one colleague is the receiver's cap (default
    # rules): a ring at it for four days.
    members = [f"r{i}" for i in range(size)]
    found = pair_findings(DEFAULT_FARMING, pairs_of(ring(members, 20)), WEEK)
    assert {f.user_id for f in found} == set(members)


def test_the_defaults_spare_a_popular_colleague_and_honest_noise() -> None:
    credits = [(f"c{i:02d}", "pop", 2) for i in range(30)]
    credits += [("pop", f"c{i:02d}", 2) for i in range(10)]
    credits += honest_week(random.Random(5), 60)
    assert pair_findings(DEFAULT_FARMING, pairs_of(credits), WEEK) == []
    counts = {f"u{i:02d}": 3 + i % 4 for i in range(50)}
    rng = random.Random(9)
    times = {u: bursty(rng, n) for u, n in counts.items()}
    assert rate_findings(DEFAULT_FARMING, counts, times, HOUR, "h") == []


def test_a_default_action_that_credits_no_target_is_left_out_an_explicit_one_refused() -> None:
    """A rule set whose `like` pays only its giver: nothing is received
    from it, so the defaults count thanks cards alone; naming it is an error."""
    doc = load_rule_file(None)
    doc["rule_sets"]["default"]["actions"]["like"] = {"actor": {"points": 1}}
    doc["rule_sets"]["default"]["tasks"].pop("100-likes-received")
    doc["rule_sets"]["default"].pop("farming", None)
    book = parse_rule_book(doc)
    assert next(iter(book.tenants.values())).part(FARMING).actions == ("thanks_card",)
    doc["rule_sets"]["default"]["farming"] = {"actions": ["like"]}
    with pytest.raises(RuleError) as info:
        parse_rule_book(doc)
    assert info.value.problems == [
        "$.rule_sets.default.farming.actions: 'like' credits no target: nothing is received from it"
    ]
