"""Farming signals: the `farming:` block of a rule set and the pure decision.

Caps stop one user from spamming; these signals look for what caps cannot
see: two colleagues crediting each other all week (reciprocity), a small
circle whose credits go round among its members (ring), and a sender at
machine speed or machine-regular spacing (rate). The detector
(service/pointsd/service/farming.py) reads aggregates of the durable ledger
and hands them here; this module only decides, from numbers to findings
with their evidence in words. Pure: no I/O, no clock.

Counts are of credited ledger rows: an event refused by a cap wrote no row
and earned nothing, so it is not evidence here either.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pointsd.service.domain import PairCount, Role
from pointsd.service.rules.checker import Checker
from pointsd.service.rules.model import ActionRule, PartKey

__all__ = [
    "DEFAULT_FARMING",
    "FARMING",
    "FarmingRules",
    "Finding",
    "PairCount",
    "RateRules",
    "ReciprocityRules",
    "RingRules",
    "Signal",
    "describe_farming",
    "gap_cv",
    "pair_findings",
    "parse_farming",
    "rate_findings",
]

# Bounds of the thresholds an operator may set (a typo must not turn a
# signal into one that fires on everybody, or loop for long).
_COUNT_MAX = 100_000
_COUNTERPARTS_MAX = 20
_EVIDENCE_NAMES_MAX = 8


class Signal(StrEnum):
    RECIPROCITY = "reciprocity"
    RING = "ring"
    RATE = "rate"


@dataclass(frozen=True, slots=True)
class ReciprocityRules:
    # Both of a pair received at least this many credits from the other in
    # one ISO week...
    min_each_way: int = 15
    # ...and those are at least this share of what each received that week
    # (a popular colleague whom a friend likes often is not a pair farming).
    min_share_percent: int = 30


@dataclass(frozen=True, slots=True)
class RingRules:
    # At most this many colleagues ("a ring of five": the user and four)...
    max_counterparts: int = 3
    # ...each of whom credited the user and was credited by the user at
    # least this many times in the week...
    min_each_way: int = 2
    # ...give at least this share of the user's received credits, of at
    # least min_received in the week.
    min_share_percent: int = 60
    min_received: int = 20


@dataclass(frozen=True, slots=True)
class RateRules:
    # Credited events a user sent in the last hour: at least this many, and
    # at least median_multiple times the tenant's median of that hour.
    min_events_per_hour: int = 100
    median_multiple: int = 10
    # Regular spacing: at least this many events in the hour whose gaps
    # vary by at most this coefficient of variation (people are bursty:
    # about 100%; a script's timer: a few %).
    spacing_min_events: int = 20
    spacing_max_cv_percent: int = 15
    # Actions not counted: what a client reports on its own on a timer.
    ignore_actions: tuple[str, ...] = ("online", "login")


@dataclass(frozen=True, slots=True)
class FarmingRules:
    enabled: bool = True
    # The received credits reciprocity and rings count.
    actions: tuple[str, ...] = ("like", "thanks_card")
    reciprocity: ReciprocityRules = field(default_factory=ReciprocityRules)
    ring: RingRules = field(default_factory=RingRules)
    rate: RateRules = field(default_factory=RateRules)

    @property
    def pair_floor(self) -> int:
        """The smallest pair count any pair signal can use: the storage
        query leaves smaller pairs out (they still count in the totals)."""
        return max(1, min(self.reciprocity.min_each_way, self.ring.min_each_way))


DEFAULT_FARMING = FarmingRules()
# Where a tenant's rules keep it (TenantRules.part(FARMING)); not a
# mechanic: it compiles to nothing on the award path.
FARMING = PartKey("farming", DEFAULT_FARMING)

_KEYS = {"enabled", "actions", "reciprocity", "ring", "rate"}


def _ints(
    c: Checker,
    raw: Any,
    path: str,
    default: Any,
    bounds: Mapping[str, tuple[int, int]],
    extra: frozenset[str] = frozenset(),
) -> tuple[dict[str, int], Mapping[str, Any]] | None:
    """Bounded integers over the defaults of a rules dataclass, and the raw
    mapping (None when it is not one; the problem is in `c`)."""
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, set(bounds) | extra, path)
    values = {
        k: c.integer(m[k], f"{path}.{k}", lo, hi) if k in m else int(getattr(default, k))
        for k, (lo, hi) in bounds.items()
    }
    return values, m


def _action_list(
    c: Checker, raw: Any, actions: Mapping[str, ActionRule], path: str, *, empty: bool
) -> tuple[str, ...] | None:
    if (
        not isinstance(raw, list)
        or not all(isinstance(a, str) for a in raw)
        or (not raw and not empty)
    ):
        c.fail(path, "must be a " + ("" if empty else "non-empty ") + "list of action keys")
        return None
    unknown = [a for a in raw if a not in actions]
    if unknown:
        c.fail(path, f"{', '.join(map(repr, unknown))}: no such action in this rule set")
        return None
    return tuple(dict.fromkeys(raw))


def _received(action: ActionRule) -> bool:
    return any(cr.role is Role.TARGET for cr in action.credits)


def parse_farming(
    c: Checker, raw: Any, actions: Mapping[str, ActionRule], path: str
) -> FarmingRules:
    """The `farming:` block of a rule set (absent: every default). Problems
    go to `c` with their path; the defaults stand in for what is wrong."""
    if raw is None:
        raw = {}
    m = c.mapping(raw, path)
    if m is None:
        return DEFAULT_FARMING
    c.unknown(m, _KEYS, path)
    d = DEFAULT_FARMING
    enabled = c.boolean(m.get("enabled", True), f"{path}.enabled")
    if "actions" in m:
        counted = _action_list(c, m["actions"], actions, f"{path}.actions", empty=False) or ()
    else:
        # The defaults name the standard actions; a rule set without them
        # counts what it has of them.
        counted = tuple(a for a in d.actions if a in actions and _received(actions[a]))
    for key in counted:
        if not _received(actions[key]):
            c.fail(f"{path}.actions", f"{key!r} credits no target: nothing is received from it")
    rec, ring, rate = _thresholds(c, m, actions, path)
    return FarmingRules(enabled=enabled, actions=counted, reciprocity=rec, ring=ring, rate=rate)


def _thresholds(
    c: Checker, m: Mapping[str, Any], actions: Mapping[str, ActionRule], path: str
) -> tuple[ReciprocityRules, RingRules, RateRules]:
    d = DEFAULT_FARMING
    rec = d.reciprocity
    got = _ints(c, m.get("reciprocity", {}), f"{path}.reciprocity", rec, {
        "min_each_way": (1, _COUNT_MAX), "min_share_percent": (0, 100),
    })  # fmt: skip
    if got is not None:
        rec = ReciprocityRules(**got[0])
    ring = d.ring
    got = _ints(c, m.get("ring", {}), f"{path}.ring", ring, {
        "max_counterparts": (2, _COUNTERPARTS_MAX), "min_each_way": (1, _COUNT_MAX),
        "min_share_percent": (1, 100), "min_received": (1, _COUNT_MAX),
    })  # fmt: skip
    if got is not None:
        ring = RingRules(**got[0])
    rate = d.rate
    got = _ints(c, m.get("rate", {}), f"{path}.rate", rate, {
        "min_events_per_hour": (1, _COUNT_MAX), "median_multiple": (1, 1000),
        "spacing_min_events": (3, _COUNT_MAX), "spacing_max_cv_percent": (0, 100),
    }, frozenset({"ignore_actions"}))  # fmt: skip
    if got is not None:
        values, raw_rate = got
        if "ignore_actions" in raw_rate:
            ignored = _action_list(
                c, raw_rate["ignore_actions"], actions, f"{path}.rate.ignore_actions", empty=True
            )
        else:
            ignored = tuple(a for a in rate.ignore_actions if a in actions)
        rate = RateRules(**values, ignore_actions=ignored or ())
    return rec, ring, rate


def describe_farming(f: FarmingRules) -> str:
    """One line for `pointsd rules check`."""
    if not f.enabled:
        return "farming signals: off"
    r, g, t = f.reciprocity, f.ring, f.rate
    return (
        f"farming signals on {', '.join(f.actions) or 'no action'}: reciprocity >= "
        f"{r.min_each_way} each way a week and >= {r.min_share_percent}% of each one's; ring "
        f"<= {g.max_counterparts} colleagues giving >= {g.min_share_percent}% of >= "
        f"{g.min_received} received; rate >= {t.min_events_per_hour}/h and >= "
        f"{t.median_multiple}x the median, or >= {t.spacing_min_events} events spaced within "
        f"{t.spacing_max_cv_percent}% CV"
    )


@dataclass(frozen=True, slots=True)
class Finding:
    """One signal about one user in one period, with its evidence in words."""

    user_id: str
    signal: Signal
    period_key: str
    counterparts: tuple[str, ...]
    evidence: str


def _pct(part: int, whole: int) -> int:
    return 0 if whole <= 0 else (part * 100) // whole


def _names(users: Sequence[str]) -> str:
    shown = ", ".join(users[:_EVIDENCE_NAMES_MAX])
    more = len(users) - _EVIDENCE_NAMES_MAX
    return shown + (f" and {more} more" if more > 0 else "")


def pair_findings(
    rules: FarmingRules, pairs: Sequence[PairCount], period_key: str
) -> list[Finding]:
    """Reciprocity and ring findings of one ISO week's pair counts. Sorted
    by user, then signal: the same input always gives the same list."""
    if not rules.enabled:
        return []
    got: dict[tuple[str, str], int] = {}
    total: dict[str, int] = {}
    for p in pairs:
        if p.receiver != p.sender:
            got[(p.receiver, p.sender)] = p.count
            total[p.receiver] = p.receiver_total
    what = ", ".join(rules.actions)
    out = _reciprocity(rules.reciprocity, got, total, period_key, what)
    out += _rings(rules.ring, got, total, period_key, what)
    out.sort(key=lambda f: (f.user_id, f.signal.value))
    return out


def _reciprocity(
    rec: ReciprocityRules,
    got: Mapping[tuple[str, str], int],
    total: Mapping[str, int],
    period_key: str,
    what: str,
) -> list[Finding]:
    out: list[Finding] = []
    for (a, b), n_ab in got.items():
        n_ba = got.get((b, a), 0)
        if a > b or min(n_ab, n_ba) < rec.min_each_way:
            continue
        if min(_pct(n_ab, total[a]), _pct(n_ba, total[b])) < rec.min_share_percent:
            continue
        for me, other, mine, theirs in ((a, b, n_ab, n_ba), (b, a, n_ba, n_ab)):
            out.append(Finding(me, Signal.RECIPROCITY, period_key, (other,), (
                f"{me} and {other} credited each other in {period_key} ({what}): {me} received "
                f"{mine} from {other} ({_pct(mine, total[me])}% of the {total[me]} {me} "
                f"received), {other} received {theirs} from {me} ({_pct(theirs, total[other])}% "
                f"of {total[other]}); threshold {rec.min_each_way} each way and "
                f"{rec.min_share_percent}% of each one's"
            )))  # fmt: skip
    return out


def _rings(
    ring: RingRules,
    got: Mapping[tuple[str, str], int],
    total: Mapping[str, int],
    period_key: str,
    what: str,
) -> list[Finding]:
    out: list[Finding] = []
    senders: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for (receiver, sender), n in got.items():
        if n >= ring.min_each_way and got.get((sender, receiver), 0) >= ring.min_each_way:
            senders[receiver].append((n, sender))
    for user, mutual in senders.items():
        if total[user] < ring.min_received:
            continue
        mutual.sort(key=lambda x: (-x[0], x[1]))
        circle = mutual[: ring.max_counterparts]
        share = sum(n for n, _ in circle)
        # Two or more: a pair alone is reciprocity's finding.
        if len(circle) < 2 or _pct(share, total[user]) < ring.min_share_percent:
            continue
        names = [s for _, s in circle]
        counts = ", ".join(f"{s} {n}" for n, s in circle)
        out.append(Finding(user, Signal.RING, period_key, tuple(names), (
            f"{_pct(share, total[user])}% of the {total[user]} credits {user} received in "
            f"{period_key} ({what}) came from {len(names)} colleagues {user} also credited: "
            f"{counts}; threshold {ring.min_share_percent}% of at least {ring.min_received} "
            f"from at most {ring.max_counterparts}, each at least {ring.min_each_way} each way"
        )))  # fmt: skip
    return out


def gap_cv(times_ms: Sequence[int]) -> float | None:
    """Coefficient of variation of the gaps between sorted times; None with
    fewer than 3 times or gaps averaging under a second (a burst at one
    instant is the count's business, not the spacing's)."""
    ts = sorted(times_ms)
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    if len(gaps) < 2:
        return None
    mean = statistics.fmean(gaps)
    if mean < 1000:
        return None
    return statistics.pstdev(gaps) / mean


def rate_findings(
    rules: FarmingRules,
    counts: Mapping[str, int],
    times_ms: Mapping[str, Sequence[int]],
    period_key: str,
    window: str,
) -> list[Finding]:
    """Rate findings of one window (`window` names it in words): `counts`,
    each active user's credited events in it; `times_ms`, the event times
    of the users the count or spacing could flag (any others are ignored)."""
    if not rules.enabled or not counts:
        return []
    rate = rules.rate
    median = statistics.median(counts.values())
    out: list[Finding] = []
    for user in sorted(counts):
        n = counts[user]
        reasons: list[str] = []
        if n >= rate.min_events_per_hour and n >= rate.median_multiple * median:
            reasons.append(
                f"{n} events in {window}, {_ratio(n, median)}x the tenant's median of "
                f"{median:g} (threshold {rate.min_events_per_hour} and {rate.median_multiple}x)"
            )
        ts = times_ms.get(user, ())
        cv = gap_cv(ts) if len(ts) >= rate.spacing_min_events else None
        if cv is not None and cv * 100 <= rate.spacing_max_cv_percent:
            mean_s = (max(ts) - min(ts)) / (len(ts) - 1) / 1000
            reasons.append(
                f"{len(ts)} events in {window} about every {mean_s:.1f} s with gaps varying by "
                f"{cv * 100:.1f}% (threshold at most {rate.spacing_max_cv_percent}% over at "
                f"least {rate.spacing_min_events} events)"
            )
        if reasons:
            out.append(Finding(user, Signal.RATE, period_key, (), "; ".join(reasons)))
    return out


def _ratio(n: int, median: float) -> str:
    return "many" if median <= 0 else f"{n / median:.0f}"
