"""Badges: marks of honour a user earns once and keeps.

Rule file, a rule-set block:

    badges:
      chatterbox: {name: 话痨, name_en: Chatterbox, description: 1,000 messages sent}

A badge is granted by the bonus of a growth task or a streak milestone that
names it (`reward: {badge: chatterbox}`); it is kept in the user's badge
hash with the time of the event that earned it, and is never taken away.
The bonus row in the ledger names it (attributes["badge"]), which is what a
rebuild restores badges from. This module only declares them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pointsd.service.rules.checker import Checker, one_line
from pointsd.service.rules.mechanics.base import Mechanic
from pointsd.service.rules.mechanics.levels import TAG_ID_RE, names
from pointsd.service.rules.model import ActionRule, PartKey

__all__ = ["BADGES", "Badge", "Badges"]

_BADGE_KEYS = {"name", "name_en", "description"}
_BADGES_MAX = 200


@dataclass(frozen=True, slots=True)
class Badge:
    id: str
    name: str
    name_en: str
    description: str = ""


BADGES: PartKey[Mapping[str, Badge]] = PartKey("badges", {})


class Badges(Mechanic):
    name = "badges"
    rule_set_key = "badges"

    def parse_rule_set(
        self, c: Checker, raw: Any, actions: Mapping[str, ActionRule], path: str
    ) -> Any:
        m = c.mapping(raw, path)
        if not m:
            return None
        if len(m) > _BADGES_MAX:
            c.fail(path, f"at most {_BADGES_MAX} badges")
        badges: dict[str, Badge] = {}
        for badge_id, raw_badge in m.items():
            p = f"{path}.{badge_id}"
            if not (isinstance(badge_id, str) and TAG_ID_RE.match(badge_id)):
                c.fail(p, "badge ids are 1-48 chars of a-z 0-9 _ - starting with a letter or digit")
                continue
            b = c.mapping(raw_badge, p)
            if b is None:
                continue
            c.unknown(b, _BADGE_KEYS, p)
            name, name_en = names(c, b, p)
            description = b.get("description", "")
            if not one_line(description):
                c.fail(f"{p}.description", "must be one line of at most 200 characters")
                description = ""
            badges[badge_id] = Badge(badge_id, str(name), str(name_en), str(description))
        return badges or None

    def describe_rule_set(self, parts: Mapping[str, Any]) -> list[str]:
        badges: Mapping[str, Badge] = parts.get(self.name, {})
        return [
            f"badge    {b.id:<22} {b.name_en}"
            + (f" ({b.name})" if b.name != b.name_en else "")
            + (f": {b.description}" if b.description else "")
            for b in badges.values()
        ]
