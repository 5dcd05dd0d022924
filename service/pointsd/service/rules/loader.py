"""Load and validate a rule book from YAML (or any mapping of the same shape).

Every problem is reported with its path in the document, all at once, so an
operator fixes a rule file in one pass. The loader reads the skeleton
(tenants, rule sets, actions, each credit's points); every other key belongs
to a mechanic (service/pointsd/service/rules/mechanics/), which parses it. See
docs/rules.md for the format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from pointsd.service.domain import Role
from pointsd.service.rules.calendar import WEEKDAYS_CALENDAR, BusinessCalendar, parse_calendars
from pointsd.service.rules.checker import (
    ACTION_RE,
    ATTRIBUTE_RE,
    ID_RE,
    Checker,
    RuleError,
    one_line,
)
from pointsd.service.rules.farming import FARMING, parse_farming
from pointsd.service.rules.mechanics import MECHANICS, Mechanic
from pointsd.service.rules.model import ActionRule, CreditRule, RuleBook, TenantRules

__all__ = [
    "DEFAULT_RULES",
    "PROGRESSION_KEYS",
    "RuleError",
    "load_rule_book",
    "load_rule_file",
    "parse_rule_book",
    "without_progression",
]

DEFAULT_RULES = "default_rules.yaml"
SHARDS_MAX = 1024
POINTS_MAX = 1_000_000

# Rule-set blocks of the progression mechanics, and their credit keys.
PROGRESSION_KEYS = ("levels", "badges", "tasks", "streak", "campaigns")
PROGRESSION_CREDIT_KEYS = ("tiers",)

_ACTION_KEYS = {
    "description", "actor", "target", "target_required", "attributes_required", "actor_gates"
}  # fmt: skip


class _Reader:
    """The checker and the mechanics one document is read with."""

    def __init__(self, mechanics: Sequence[Mechanic]) -> None:
        self.c = Checker()
        self.mechanics = tuple(mechanics)
        self.credit_keys = {"points"}.union(*(m.credit_keys for m in mechanics))
        self.rule_set_keys = {"actions", FARMING.name} | {
            m.rule_set_key for m in mechanics if m.rule_set_key
        }


def _credit(r: _Reader, raw: Any, role: Role, path: str) -> CreditRule | None:
    c = r.c
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, r.credit_keys, path)
    if "points" not in m:
        c.fail(f"{path}.points", "is required")
    # 0: the credit pays nothing and only feeds tasks (a group's member count).
    points = c.integer(m.get("points", 1), f"{path}.points", 0, POINTS_MAX)
    parts: dict[str, Any] = {}
    for mechanic in r.mechanics:
        if mechanic.credit_keys:
            part = mechanic.parse_credit(c, m, path)
            if part is not None:
                parts[mechanic.name] = part
    return CreditRule(role=role, points=points, parts=parts)


def _action(r: _Reader, key: str, raw: Any, path: str) -> ActionRule | None:
    c = r.c
    if not (isinstance(key, str) and ACTION_RE.match(key)):
        c.fail(path, "action keys are 1-64 chars of a-z 0-9 . _ - starting with a letter or digit")
        return None
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, _ACTION_KEYS, path)
    credits = _credits(r, m, path)
    target_required = c.boolean(m.get("target_required", False), f"{path}.target_required")
    if any(cr.role is Role.TARGET for cr in credits):
        target_required = True
    actor_gates = c.boolean(m.get("actor_gates", False), f"{path}.actor_gates")
    if actor_gates and {cr.role for cr in credits} != {Role.ACTOR, Role.TARGET}:
        # The gate is the actor's credit; what it lets through, the target's.
        c.fail(f"{path}.actor_gates", "needs both an `actor` and a `target` credit")
        actor_gates = False
    # Problems in document order: attributes before the description.
    attributes = _attributes(c, m, path)
    rule = ActionRule(
        key=key,
        description=_description(c, m, key, path),
        credits=tuple(credits),
        target_required=target_required,
        attributes_required=attributes,
        actor_gates=actor_gates,
    )
    for mechanic in r.mechanics:
        if mechanic.credit_keys:
            rule = mechanic.review_action(c, rule, path)
    return rule


def _credits(r: _Reader, m: Mapping[str, Any], path: str) -> list[CreditRule]:
    credits: list[CreditRule] = []
    for role in (Role.ACTOR, Role.TARGET):
        name = role.name.lower()
        if name in m:
            credit = _credit(r, m[name], role, f"{path}.{name}")
            if credit is not None:
                credits.append(credit)
    if not credits:
        r.c.fail(path, "needs an `actor` or a `target` credit")
    return credits


def _attributes(c: Checker, m: Mapping[str, Any], path: str) -> tuple[str, ...]:
    raw = m.get("attributes_required", [])
    if not isinstance(raw, list) or not all(
        isinstance(a, str) and ATTRIBUTE_RE.match(a) for a in raw
    ):
        c.fail(f"{path}.attributes_required", "must be a list of attribute names")
        return ()
    # A copy: the document's list may be shared (YAML anchors) with other actions.
    return tuple(raw)


def _description(c: Checker, m: Mapping[str, Any], key: str, path: str) -> str:
    description = m.get("description", key)
    if not one_line(description):
        c.fail(f"{path}.description", "must be one line of at most 200 characters")
        return key
    return str(description)


def _rule_set(r: _Reader, raw: Any, path: str) -> tuple[dict[str, ActionRule], dict[str, Any]]:
    c = r.c
    rs = c.mapping(raw, path) or {}
    c.unknown(rs, r.rule_set_keys, path)
    actions: dict[str, ActionRule] = {}
    raw_actions = c.mapping(rs.get("actions", {}), f"{path}.actions") or {}
    for key, raw_action in raw_actions.items():
        action = _action(r, key, raw_action, f"{path}.actions.{key}")
        if action is not None:
            actions[key] = action
    parts: dict[str, Any] = {}
    for mechanic in r.mechanics:
        if mechanic.rule_set_key:
            raw_part = rs.get(mechanic.rule_set_key, {})
            part = mechanic.parse_rule_set(c, raw_part, actions, f"{path}.{mechanic.rule_set_key}")
            if part is not None:
                parts[mechanic.name] = part
    for mechanic in r.mechanics:
        if mechanic.rule_set_key:
            mechanic.review_rule_set(c, parts, f"{path}.{mechanic.rule_set_key}")
    # Thresholds of the farming signals (rules/farming.py), read off the award path.
    parts[FARMING.name] = parse_farming(c, rs.get(FARMING.name), actions, f"{path}.{FARMING.name}")
    return actions, parts


def _tenant(
    c: Checker,
    raw: Any,
    path: str,
    rule_sets: Mapping[str, tuple[dict[str, ActionRule], dict[str, Any]]],
    known: Mapping[str, TenantRules],
    default_shards: int,
    calendars: Mapping[str, BusinessCalendar],
) -> TenantRules | None:
    t = c.mapping(raw, path)
    if t is None:
        return None
    c.unknown(t, {"id", "timezone", "shards", "rule_set", "calendar"}, path)
    tenant_id = t.get("id")
    if not (isinstance(tenant_id, str) and ID_RE.match(tenant_id)):
        c.fail(f"{path}.id", "must be 1-128 chars of A-Z a-z 0-9 . _ : @ -")
        return None
    if tenant_id in known:
        c.fail(f"{path}.id", f"tenant {tenant_id!r} is defined twice")
        return None
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
    actions, parts = rule_sets.get(str(rule_set), ({}, {}))
    calendar_name = t.get("calendar", WEEKDAYS_CALENDAR.name)
    calendar = calendars.get(calendar_name) if isinstance(calendar_name, str) else None
    if calendar is None:
        c.fail(f"{path}.calendar", f"no calendar named {calendar_name!r} in $.calendars")
        calendar = WEEKDAYS_CALENDAR
    return TenantRules(
        tenant_id=tenant_id,
        timezone=tz,
        shards=c.integer(t.get("shards", default_shards), f"{path}.shards", 1, SHARDS_MAX),
        rule_set=str(rule_set),
        actions=actions,
        parts=parts,
        calendar=calendar,
    )


def parse_rule_book(
    doc: Any, *, default_shards: int = 1, mechanics: Sequence[Mechanic] = MECHANICS
) -> RuleBook:
    """Validate a parsed rule document; raise RuleError listing every problem.
    `mechanics`: the mechanics that read (and later compile) it."""
    r = _Reader(mechanics)
    c = r.c
    root = c.mapping(doc, "$") or {}
    c.unknown(root, {"version", "tenants", "rule_sets", "calendars"}, "$")
    if root.get("version", 1) != 1:
        c.fail("$.version", "only version 1 is supported")
    rule_sets = {
        str(name): _rule_set(r, raw_set, f"$.rule_sets.{name}")
        for name, raw_set in (c.mapping(root.get("rule_sets", {}), "$.rule_sets") or {}).items()
    }
    calendars = parse_calendars(c, root.get("calendars", {}), "$.calendars")
    tenants: dict[str, TenantRules] = {}
    raw_tenants = root.get("tenants", [])
    if not isinstance(raw_tenants, list) or not raw_tenants:
        c.fail("$.tenants", "must be a non-empty list")
        raw_tenants = []
    for i, raw_tenant in enumerate(raw_tenants):
        tenant = _tenant(
            c, raw_tenant, f"$.tenants[{i}]", rule_sets, tenants, default_shards, calendars
        )
        if tenant is not None:
            tenants[tenant.tenant_id] = tenant
    if c.problems:
        raise RuleError(c.problems)
    return RuleBook(tenants=tenants, mechanics=r.mechanics)


def default_rules_text() -> str:
    return resources.files("pointsd.service.rules").joinpath(DEFAULT_RULES).read_text("utf-8")


def load_rule_file(path: Path | None) -> Any:
    """The parsed YAML document of `path`, or of the packaged default rules."""
    source = str(path) if path is not None else DEFAULT_RULES
    try:
        text = default_rules_text() if path is None else path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise RuleError([f"{source}: cannot read: {reason}"]) from exc
    try:
        return yaml.load(text, Loader=_RulesLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise RuleError([_yaml_problem(source, exc)]) from exc


class _RulesLoader(yaml.SafeLoader):
    """SafeLoader reading dates as text: the calendar checks them, so a date
    that does not exist (2026-02-30) is a problem with its path, not an
    exception from the YAML parser."""


_RulesLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_problem(source: str, exc: yaml.YAMLError) -> str:
    """ "file:line:column: what", instead of PyYAML's text, which names the
    stream "<unicode string>" and spans several lines."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    return f"{where}: not valid YAML: {context + ', ' if context else ''}{problem}"


def load_rule_book(path: Path | None, *, default_shards: int = 1) -> RuleBook:
    return parse_rule_book(load_rule_file(path), default_shards=default_shards)


def without_progression(doc: Any) -> Any:
    """A rule document with every rule set's progression mechanics removed:
    the same book without levels, badges, tasks, the streak, campaigns and
    online-time tiers (the benchmark's baseline; tests of the core
    mechanics, whose balances they would change)."""
    for rule_set in (doc.get("rule_sets") or {}).values():
        if not isinstance(rule_set, dict):
            continue
        for key in PROGRESSION_KEYS:
            rule_set.pop(key, None)
        for action in (rule_set.get("actions") or {}).values():
            for role in ("actor", "target"):
                credit = action.get(role) if isinstance(action, dict) else None
                if isinstance(credit, dict):
                    for key in PROGRESSION_CREDIT_KEYS:
                        credit.pop(key, None)
    return doc
