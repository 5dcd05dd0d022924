"""Load and validate a rule book from YAML (or any mapping of the same shape).

Every problem is reported with its path in the document, all at once, so an
operator fixes a rule file in one pass. See README "Rule file" for the format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from service.domain import Metric, Period, Role
from service.rules.model import (
    ActionRule,
    BoardFeed,
    BoardMember,
    BoardRule,
    BoardScope,
    CreditRule,
    LimitRule,
    RuleBook,
    TenantRules,
)

__all__ = ["DEFAULT_RULES", "RuleError", "load_rule_book", "load_rule_file", "parse_rule_book"]

DEFAULT_RULES = "default_rules.yaml"
SHARDS_MAX = 1024
POINTS_MAX = 1_000_000
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
ACTION_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ATTRIBUTE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

_CREDIT_KEYS = {
    "points",
    "per_quantity",
    "min_interval_ms",
    "daily_count_max",
    "daily_points_max",
    "pair_daily_count_max",
    "once_per_day",
    "once_ever",
    "limits",
}
_LIMIT_KEYS = {"per", "count", "points", "per_counterpart", "by_attribute"}
_ACTION_KEYS = {"description", "actor", "target", "target_required", "attributes_required"}
_BOARD_KEYS = {
    "description",
    "score",
    "member",
    "feeds",
    "periods",
    "scopes",
    "newcomer_days",
    "keep_periods",
    "winners",
}
_BOARD_PERIODS = {"day": Period.DAY, "week": Period.WEEK, "month": Period.MONTH, "all": Period.EVER}


class RuleError(ValueError):
    """The rule document is invalid; `problems` lists every "path: what" found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid rules:\n  " + "\n  ".join(problems))


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a mapping, got {type(value).__name__}")
            return None
        return value

    def unknown(self, value: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in value:
            if key not in allowed:
                self.fail(f"{path}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {value!r}")
            return lo
        if not lo <= value <= hi:
            self.fail(path, f"must be between {lo} and {hi}, got {value}")
            return lo
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, got {value!r}")
            return False
        return value


def _limit(c: _Checker, raw: Any, path: str) -> LimitRule | None:
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, _LIMIT_KEYS, path)
    per = m.get("per")
    try:
        period = Period(str(per))
    except ValueError:
        c.fail(f"{path}.per", f"must be one of day, week, month, ever, got {per!r}")
        return None
    if ("count" in m) == ("points" in m):
        c.fail(path, "needs exactly one of `count` or `points`")
        return None
    metric = Metric.COUNT if "count" in m else Metric.POINTS
    maximum = c.integer(m[metric.value], f"{path}.{metric.value}", 1, 10**9)
    by_attribute = m.get("by_attribute", "")
    if by_attribute and not (isinstance(by_attribute, str) and ATTRIBUTE_RE.match(by_attribute)):
        c.fail(f"{path}.by_attribute", f"must be an attribute name, got {by_attribute!r}")
    return LimitRule(
        period=period,
        metric=metric,
        max=maximum,
        per_counterpart=c.boolean(m.get("per_counterpart", False), f"{path}.per_counterpart"),
        by_attribute=str(by_attribute or ""),
    )


def _credit(c: _Checker, raw: Any, role: Role, path: str) -> CreditRule | None:
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, _CREDIT_KEYS, path)
    if "points" not in m:
        c.fail(f"{path}.points", "is required")
    points = c.integer(m.get("points", 1), f"{path}.points", 1, POINTS_MAX)
    limits: list[LimitRule] = []
    shorthands: list[tuple[str, Period, Metric, bool]] = [
        ("daily_count_max", Period.DAY, Metric.COUNT, False),
        ("daily_points_max", Period.DAY, Metric.POINTS, False),
        ("pair_daily_count_max", Period.DAY, Metric.COUNT, True),
    ]
    for key, period, metric, pair in shorthands:
        if key in m:
            limits.append(
                LimitRule(period, metric, c.integer(m[key], f"{path}.{key}", 1, 10**9), pair)
            )
    if c.boolean(m.get("once_per_day", False), f"{path}.once_per_day"):
        limits.append(LimitRule(Period.DAY, Metric.COUNT, 1))
    if c.boolean(m.get("once_ever", False), f"{path}.once_ever"):
        limits.append(LimitRule(Period.EVER, Metric.COUNT, 1))
    raw_limits = m.get("limits", [])
    if not isinstance(raw_limits, list):
        c.fail(f"{path}.limits", "must be a list")
        raw_limits = []
    for i, item in enumerate(raw_limits):
        limit = _limit(c, item, f"{path}.limits[{i}]")
        if limit is not None:
            limits.append(limit)
    return CreditRule(
        role=role,
        points=points,
        per_quantity=c.integer(m.get("per_quantity", 0), f"{path}.per_quantity", 0, 10**6),
        limits=tuple(limits),
        min_interval_ms=c.integer(
            m.get("min_interval_ms", 0), f"{path}.min_interval_ms", 0, 7 * 86_400_000
        ),
    )


def _action(c: _Checker, key: str, raw: Any, path: str) -> ActionRule | None:
    if not (isinstance(key, str) and ACTION_RE.match(key)):
        c.fail(path, "action keys are 1-64 chars of a-z 0-9 . _ - starting with a letter or digit")
        return None
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, _ACTION_KEYS, path)
    credits: list[CreditRule] = []
    for role in (Role.ACTOR, Role.TARGET):
        name = role.name.lower()
        if name in m:
            credit = _credit(c, m[name], role, f"{path}.{name}")
            if credit is not None:
                credits.append(credit)
    if not credits:
        c.fail(path, "needs an `actor` or a `target` credit")
    target_required = c.boolean(m.get("target_required", False), f"{path}.target_required")
    if any(cr.role is Role.TARGET for cr in credits):
        target_required = True
    uses_counterpart = any(lim.per_counterpart for cr in credits for lim in cr.limits)
    if uses_counterpart and not target_required:
        c.fail(path, "a per_counterpart limit needs target_required: true")
    raw_attributes = m.get("attributes_required", [])
    if not isinstance(raw_attributes, list) or not all(
        isinstance(a, str) and ATTRIBUTE_RE.match(a) for a in raw_attributes
    ):
        c.fail(f"{path}.attributes_required", "must be a list of attribute names")
        raw_attributes = []
    # A copy: the document's list may be shared (YAML anchors) with other actions.
    attributes = list(raw_attributes)
    keyed = {lim.by_attribute for cr in credits for lim in cr.limits if lim.by_attribute}
    for attr in sorted(keyed - set(attributes)):
        attributes.append(attr)
    description = m.get("description", key)
    if (
        not isinstance(description, str)
        or len(description) > 200
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in description)
    ):
        c.fail(f"{path}.description", "must be one line of at most 200 characters")
        description = key
    return ActionRule(
        key=key,
        description=description,
        credits=tuple(credits),
        target_required=target_required,
        attributes_required=tuple(attributes),
    )


def _choices(
    c: _Checker, raw: Any, path: str, allowed: dict[str, Any], default: list[str]
) -> list[Any]:
    values = default if raw is None else raw
    if not isinstance(values, list) or not values:
        c.fail(path, f"must be a non-empty list of {', '.join(allowed)}")
        return []
    out = []
    for v in values:
        if v not in allowed:
            c.fail(path, f"{v!r} is not one of {', '.join(allowed)}")
        elif allowed[v] not in out:
            out.append(allowed[v])
    return out


def _board(
    c: _Checker, name: Any, raw: Any, actions: dict[str, ActionRule], path: str
) -> BoardRule | None:
    if not (isinstance(name, str) and ACTION_RE.match(name)):
        c.fail(path, "board names are 1-64 chars of a-z 0-9 . _ - starting with a letter or digit")
        return None
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, _BOARD_KEYS, path)
    score = m.get("score", "points")
    if score not in ("points", "count"):
        c.fail(f"{path}.score", f"must be points or count, got {score!r}")
    member = m.get("member", "user")
    if member not in ("user", "group"):
        c.fail(f"{path}.member", f"must be user or group, got {member!r}")
    feeds: list[BoardFeed] = []
    raw_feeds = m.get("feeds", [{"action": "*"}])
    if not isinstance(raw_feeds, list) or not raw_feeds:
        c.fail(f"{path}.feeds", "must be a non-empty list of {action, role}")
        raw_feeds = []
    for i, raw_feed in enumerate(raw_feeds):
        fpath = f"{path}.feeds[{i}]"
        f = c.mapping(raw_feed, fpath)
        if f is None:
            continue
        c.unknown(f, {"action", "role"}, fpath)
        action = f.get("action", "*")
        if action != "*" and action not in actions:
            c.fail(f"{fpath}.action", f"no action {action!r} in this rule set")
        role = f.get("role")
        if role not in (None, "actor", "target"):
            c.fail(f"{fpath}.role", f"must be actor or target, got {role!r}")
            role = None
        feeds.append(BoardFeed(str(action), Role[role.upper()] if role else None))
    periods = _choices(c, m.get("periods"), f"{path}.periods", _BOARD_PERIODS, [])
    scopes = _choices(
        c, m.get("scopes"), f"{path}.scopes", {s.value: s for s in BoardScope}, ["tenant"]
    )
    if member == "group" and BoardScope.GROUP in scopes:
        c.fail(f"{path}.scopes", "a board of groups cannot also be scoped per group")
    description = m.get("description", name)
    if not isinstance(description, str) or len(description) > 200:
        c.fail(f"{path}.description", "must be one line of at most 200 characters")
        description = name
    return BoardRule(
        name=name,
        description=description,
        score=Metric.POINTS if score == "points" else Metric.COUNT,
        member=BoardMember.GROUP if member == "group" else BoardMember.USER,
        feeds=tuple(feeds),
        periods=tuple(periods),
        scopes=tuple(scopes),
        newcomer_days=c.integer(m.get("newcomer_days", 0), f"{path}.newcomer_days", 0, 3650),
        keep_periods=c.integer(m.get("keep_periods", 3), f"{path}.keep_periods", 1, 100),
        winners=c.integer(m.get("winners", 10), f"{path}.winners", 0, 100),
    )


def parse_rule_book(doc: Any, *, default_shards: int = 1) -> RuleBook:
    """Validate a parsed rule document; raise RuleError listing every problem."""
    c = _Checker()
    root = c.mapping(doc, "$") or {}
    c.unknown(root, {"version", "tenants", "rule_sets"}, "$")
    if root.get("version", 1) != 1:
        c.fail("$.version", "only version 1 is supported")
    rule_sets: dict[str, dict[str, ActionRule]] = {}
    board_sets: dict[str, dict[str, BoardRule]] = {}
    for name, raw_set in (c.mapping(root.get("rule_sets", {}), "$.rule_sets") or {}).items():
        path = f"$.rule_sets.{name}"
        rs = c.mapping(raw_set, path) or {}
        c.unknown(rs, {"actions", "boards"}, path)
        actions: dict[str, ActionRule] = {}
        raw_actions = c.mapping(rs.get("actions", {}), f"{path}.actions") or {}
        for key, raw_action in raw_actions.items():
            action = _action(c, key, raw_action, f"{path}.actions.{key}")
            if action is not None:
                actions[key] = action
        rule_sets[str(name)] = actions
        boards: dict[str, BoardRule] = {}
        raw_boards = c.mapping(rs.get("boards", {}), f"{path}.boards") or {}
        for key, raw_board in raw_boards.items():
            board = _board(c, key, raw_board, actions, f"{path}.boards.{key}")
            if board is not None:
                boards[key] = board
        board_sets[str(name)] = boards
    tenants: dict[str, TenantRules] = {}
    raw_tenants = root.get("tenants", [])
    if not isinstance(raw_tenants, list) or not raw_tenants:
        c.fail("$.tenants", "must be a non-empty list")
        raw_tenants = []
    for i, raw_tenant in enumerate(raw_tenants):
        path = f"$.tenants[{i}]"
        t = c.mapping(raw_tenant, path)
        if t is None:
            continue
        c.unknown(t, {"id", "timezone", "shards", "rule_set"}, path)
        tenant_id = t.get("id")
        if not (isinstance(tenant_id, str) and ID_RE.match(tenant_id)):
            c.fail(f"{path}.id", "must be 1-128 chars of A-Z a-z 0-9 . _ : @ -")
            continue
        if tenant_id in tenants:
            c.fail(f"{path}.id", f"tenant {tenant_id!r} is defined twice")
            continue
        tz_name = t.get("timezone", "UTC")
        try:
            tz = ZoneInfo(str(tz_name))
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: a tzdata folder such as "Asia" is not a zone.
            c.fail(f"{path}.timezone", f"unknown IANA time zone {tz_name!r}")
            tz = ZoneInfo("UTC")
        rule_set = t.get("rule_set", "default")
        if not isinstance(rule_set, str) or rule_set not in rule_sets:
            c.fail(f"{path}.rule_set", f"no rule set named {rule_set!r} in $.rule_sets")
        tenants[tenant_id] = TenantRules(
            tenant_id=tenant_id,
            timezone=tz,
            shards=c.integer(t.get("shards", default_shards), f"{path}.shards", 1, SHARDS_MAX),
            rule_set=str(rule_set),
            actions=rule_sets.get(str(rule_set), {}),
            boards=board_sets.get(str(rule_set), {}),
        )
    if c.problems:
        raise RuleError(c.problems)
    return RuleBook(tenants=tenants)


def default_rules_text() -> str:
    return resources.files("service.rules").joinpath(DEFAULT_RULES).read_text("utf-8")


def load_rule_file(path: Path | None) -> Any:
    """The parsed YAML document of `path`, or of the packaged default rules."""
    text = default_rules_text() if path is None else path.read_text("utf-8")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError([f"{path or DEFAULT_RULES}: not valid YAML: {exc}"]) from exc


def load_rule_book(path: Path | None, *, default_shards: int = 1) -> RuleBook:
    return parse_rule_book(load_rule_file(path), default_shards=default_shards)
