"""Campaigns: time-limited multipliers or extra points on chosen actions.

Rule file, a rule-set block (docs/progression.md, "Campaigns"):

    campaigns:
      double-messages:
        name: 双倍积分周
        name_en: Double points week
        from: 2026-12-14T00:00        # the tenant's local time (or a date)
        until: 2026-12-21T00:00       # exclusive
        actions: [message.text, reply]  # feeds, as in tasks
        multiplier: 2                 # x points (up to 10, two decimals)
        extra: 0                      # + points per award
        departments: [rd]             # optional: the credited user's department

An award of a fed credit whose event happened inside the window (and, with
`departments`, whose credited user the event puts in one of them) earns
points x multiplier + extra, rounded down. Caps apply to these points: a
campaign makes each award worth more but never lifts a daily cap (an
action capped at 40 points a day still pays at most 40). The award's ledger
row names the campaign in its reason. Several campaigns on one award apply
in file order.

Compiles to one Scale step per active campaign, before the caps. A rebuild
replays nothing of it (the ledger has the points paid).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from pointsd.service.domain import Event, Role
from pointsd.service.domain.steps import Scale, Step
from pointsd.service.rules.checker import ID_RE, Checker
from pointsd.service.rules.mechanics.base import CompileContext, Compiled, Mechanic, Rank, Refs
from pointsd.service.rules.mechanics.levels import TAG_ID_RE, names
from pointsd.service.rules.mechanics.tasks import TaskFeed, feeds_of
from pointsd.service.rules.model import ActionRule, PartKey

__all__ = ["CAMPAIGNS", "CampaignRule", "Campaigns"]

_KEYS = {"name", "name_en", "from", "until", "actions", "multiplier", "extra", "departments"}
_CAMPAIGNS_MAX = 50
_EXTRA_MAX = 10_000


@dataclass(frozen=True, slots=True)
class CampaignRule:
    id: str
    name: str
    name_en: str
    # Local (naive) times in the tenant's zone.
    starts: datetime
    ends: datetime
    feeds: tuple[TaskFeed, ...]
    # Points x percent / 100 + extra.
    percent: int = 100
    extra: int = 0
    departments: frozenset[str] = frozenset()

    def note(self) -> str:
        parts = []
        if self.percent != 100:
            parts.append(f"x{self.percent / 100:g}")
        if self.extra:
            parts.append(f"+{self.extra}")
        return f" (campaign {self.id}: {' '.join(parts)})"


CAMPAIGNS: PartKey[tuple[CampaignRule, ...]] = PartKey("campaigns", ())


class _CompiledCampaigns(Compiled):
    rank = Rank.POINTS + 1
    per_event = True
    notes = True

    def __init__(self, ctx: CompileContext, campaigns: tuple[CampaignRule, ...]) -> None:
        tz = ctx.tenant.timezone
        self.role = ctx.credit.role
        self.windows = [
            (c, int(c.starts.replace(tzinfo=tz).timestamp() * 1000),
             int(c.ends.replace(tzinfo=tz).timestamp() * 1000))
            for c in campaigns
        ]  # fmt: skip
        self._steps = {c.id: Scale(c.percent, c.extra, c.id) for c in campaigns}

    def _department(self, event: Event) -> str:
        if self.role is Role.ACTOR:
            return event.department_id
        return event.attributes.get("target_department_id", "") if event.attributes else ""

    def active(self, event: Event) -> list[CampaignRule]:
        at = event.occurred_at_ms
        found = [c for c, lo, hi in self.windows if lo <= at < hi]
        if found and any(c.departments for c in found):
            department = self._department(event)
            found = [c for c in found if not c.departments or department in c.departments]
        return found

    def event_steps(
        self, refs: Refs, event: Event, counterpart: str, *, restore: bool
    ) -> tuple[Step, ...]:
        if restore:
            return ()
        return tuple(self._steps[c.id] for c in self.active(event))

    def ledger_note(self, event: Event) -> str:
        return "".join(c.note() for c in self.active(event))


def _when(c: Checker, raw: Any, path: str) -> datetime | None:
    if isinstance(raw, str):
        try:
            if len(raw) == 10:
                return datetime.combine(date.fromisoformat(raw), time(0))
            parsed = datetime.fromisoformat(raw)
        except ValueError as exc:
            c.fail(path, f"{raw[:40]!r} is not a local date or time ({exc})")
            return None
        if parsed.tzinfo is not None:
            c.fail(path, "a local time in the tenant's zone, without an offset")
            return None
        return parsed
    c.fail(path, "must be a local date YYYY-MM-DD or time YYYY-MM-DDTHH:MM")
    return None


def _campaign(
    c: Checker, campaign_id: Any, raw: Any, actions: Mapping[str, ActionRule], path: str
) -> CampaignRule | None:
    if not (isinstance(campaign_id, str) and TAG_ID_RE.match(campaign_id)):
        c.fail(path, "campaign ids are 1-48 chars of a-z 0-9 _ - starting with a letter or digit")
        return None
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.unknown(m, _KEYS, path)
    name, name_en = names(c, m, path)
    starts, ends = (
        _when(c, m.get("from"), f"{path}.from"),
        _when(c, m.get("until"), f"{path}.until"),
    )
    if starts and ends and ends <= starts:
        c.fail(f"{path}.until", "must be after `from`")
    feeds = feeds_of(c, m.get("actions"), actions, f"{path}.actions", any_ok=True)
    multiplier = m.get("multiplier", 1)
    if (
        isinstance(multiplier, bool)
        or not isinstance(multiplier, int | float)
        or not (0 < multiplier <= 10)
    ):
        c.fail(f"{path}.multiplier", f"must be a number above 0 and at most 10, got {multiplier!r}")
        multiplier = 1
    percent = round(multiplier * 100)
    if abs(percent - multiplier * 100) > 1e-6:
        c.fail(f"{path}.multiplier", "at most two decimals (1.25, not 1.255)")
    extra = c.integer(m.get("extra", 0), f"{path}.extra", 0, _EXTRA_MAX)
    if percent == 100 and not extra:
        c.fail(path, "needs a multiplier other than 1, or extra points")
    departments = m.get("departments", [])
    if not (isinstance(departments, list) and all(isinstance(d, str) and ID_RE.match(d)
                                                  for d in departments)):  # fmt: skip
        c.fail(f"{path}.departments", "must be a list of department ids")
        departments = []
    if starts is None or ends is None:
        return None
    return CampaignRule(campaign_id, name, name_en, starts, ends, feeds, percent, extra,
                        frozenset(departments))  # fmt: skip


class Campaigns(Mechanic):
    name = "campaigns"
    rule_set_key = "campaigns"

    def parse_rule_set(
        self, c: Checker, raw: Any, actions: Mapping[str, ActionRule], path: str
    ) -> Any:
        m = c.mapping(raw, path)
        if not m:
            return None
        if len(m) > _CAMPAIGNS_MAX:
            c.fail(path, f"at most {_CAMPAIGNS_MAX} campaigns")
        found = [
            campaign
            for campaign_id, body in m.items()
            if (campaign := _campaign(c, campaign_id, body, actions, f"{path}.{campaign_id}"))
        ]
        return tuple(found) or None

    def describe_rule_set(self, parts: Mapping[str, Any]) -> list[str]:
        lines = []
        for c in parts.get(self.name, ()):
            where = f" in {', '.join(sorted(c.departments))}" if c.departments else ""
            actions = ", ".join(f.action for f in c.feeds)
            lines.append(
                f"campaign {c.id:<22} {c.starts.isoformat(timespec='minutes')} to "
                f"{c.ends.isoformat(timespec='minutes')} (local): {actions}{where}"
                f"{c.note().removeprefix(f' (campaign {c.id}:').removesuffix(')')}"
            )
        return lines

    def compile(self, ctx: CompileContext) -> Compiled | None:
        mine = tuple(
            c for c in ctx.tenant.part(CAMPAIGNS)
            if any(f.matches(ctx.rule.key, ctx.credit.role) for f in c.feeds)
        )  # fmt: skip
        return _CompiledCampaigns(ctx, mine) if mine else None
