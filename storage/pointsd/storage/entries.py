"""Ledger rows and their encoding in the Redis outbox stream.

The award script appends one entry per award (`award_data`, plus the points
and the balance it computed), and one per bonus the award earned (the same
data, plus `m`: the bonus's tag and reason); the flusher decodes entries back
into LedgerRow. Field `h` names a farming flag (a held award, a settlement);
`s` "h" marks a row of the held balance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pointsd.service.domain import SEP, TIME_MS_MAX, CreditOp, key_part

__all__ = [
    "EARNED_KINDS",
    "KIND_ADJUST",
    "KIND_AWARD",
    "KIND_BONUS",
    "KIND_REFUND",
    "KIND_RELEASE",
    "KIND_SPEND",
    "KIND_VOID",
    "STATE_HELD",
    "STATE_PAID",
    "LedgerRow",
    "award_data",
    "bonus_key",
    "decode_entry",
    "entry_data",
    "settle_key",
]

# Entry kinds and what they move besides `available`: awards and adjustments
# move lifetime `earned`; spends (negative) and refunds (positive) move `spent`.
KIND_AWARD = "award"
KIND_SPEND = "spend"
KIND_REFUND = "refund"
KIND_ADJUST = "adjust"
# A milestone of an award (a Cross or Entry step): its own row, keyed by the
# award's entry key and the bonus's tag; it moves earned like an award.
KIND_BONUS = "bonus"
# A farming flag's settlement (hold.lua): a release moves the held points
# to available (two rows: -points held, +points paid, which moves earned);
# a void cancels them (one row: -points held).
KIND_RELEASE = "release"
KIND_VOID = "void"
EARNED_KINDS = (KIND_AWARD, KIND_ADJUST, KIND_BONUS, KIND_RELEASE)

# Row states: `paid` rows make available; `held` rows make the user's held
# balance (an award of a flagged user, and its settlement's held side).
STATE_PAID = "paid"
STATE_HELD = "held"


@dataclass(frozen=True, slots=True)
class LedgerRow:
    tenant_id: str
    entry_key: str
    user_id: str
    points: int
    balance_after: int
    kind: str
    action: str
    event_id: str
    role: str
    counterpart_id: str
    group_id: str
    department_id: str
    quantity: int
    reason: str
    occurred_at_ms: int
    recorded_at_ms: int
    attributes: Mapping[str, str] = field(default_factory=dict)
    state: str = STATE_PAID
    # The farming flag a held row is held under, or that a settlement settles.
    flag_id: int | None = None


# Outbox entry layout: fields p (points) and b (balance after), written by the
# award script, and d: this module's fields joined by SEP. Ids and attribute
# text hold no control characters (validated) and attributes are JSON, which
# escapes them; the free-text reason comes last, so the split is exact.
_VERSION = "1"
_PARTS = 15


def award_data(op: CreditOp) -> str:
    """The `d` field of an award's outbox entry."""
    facts = op.facts
    attributes = ""
    if facts is not None and facts.attributes:
        # orjson writes what json.dumps(separators=(",", ":"),
        # ensure_ascii=False) does, at a sixth of its cost.
        attributes = orjson.dumps(dict(facts.attributes)).decode()
    if facts is None:
        action = counterpart = group = department = reason = ""
        quantity = 0
    else:
        action, counterpart, group = facts.action, facts.counterpart_id, facts.group_id
        department, quantity, reason = facts.department_id, facts.quantity, facts.reason
    return SEP.join(
        (
            _VERSION, KIND_AWARD, op.entry_key, op.user_id, op.event_id, op.role.letter,
            action, counterpart, group, department, str(quantity), str(op.occurred_at_ms),
            str(op.recorded_at_ms), attributes, reason,
        )
    )  # fmt: skip


def entry_data(
    kind: str,
    entry_key: str,
    user_id: str,
    event_id: str,
    action: str,
    reason: str,
    occurred_at_ms: int,
    recorded_at_ms: int,
) -> str:
    """The `d` field of a spend, refund or adjustment entry."""
    parts = (_VERSION, kind, entry_key, user_id, event_id, "", action, "", "", "", "0",
             str(occurred_at_ms), str(recorded_at_ms), "", reason)  # fmt: skip
    return SEP.join(parts)


def bonus_key(user_id: str, tag: str) -> str:
    """The ledger key of a once-bonus (a task done, a level, a milestone)."""
    return f"b:{key_part(user_id)}:{tag}"


def settle_key(flag_id: int, kind: str = "", *, held: bool = False) -> str:
    """The Redis record key (no kind) or a ledger row key of a flag's
    settlement: one row per side, once per flag."""
    if not kind:
        return f"flag:{flag_id}"
    return f"flag:{flag_id}:{kind}" + (":held" if held else "")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_entry(tenant_id: str, fields: Mapping[Any, Any]) -> LedgerRow:
    """Decode one outbox entry; raises ValueError/KeyError on a malformed one."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    parts = f["d"].split(SEP, _PARTS - 1)
    if len(parts) != _PARTS or parts[0] != _VERSION:
        raise ValueError(f"outbox entry has {len(parts)} parts, version {parts[0]!r}")
    (_, kind, entry_key, user_id, event_id, role, action, counterpart, group, department,
     quantity, occurred, recorded, attributes, reason) = parts  # fmt: skip
    milestone = f.get("m")
    attrs = json.loads(attributes) if attributes else {}
    if milestone is not None:
        # A bonus row of the award in `d`: its own key, points and reason; a
        # once-bonus is keyed by user and tag (its period is in the tag), so
        # the ledger refuses a second one whichever event triggered it.
        tag, _, reason = milestone.partition(SEP)
        if not tag:
            raise ValueError("outbox bonus entry has no tag")
        kind = KIND_BONUS
        entry_key = bonus_key(user_id, tag) if f.get("o") == "1" else f"{entry_key}:{tag}"
        # Its attributes say what it is (the award row keeps the event's).
        attrs = {"bonus": tag}
        if badge := f.get("g"):
            attrs["badge"] = badge
        if freezes := f.get("z"):
            attrs["freezes"] = freezes
    if not isinstance(attrs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()
    ):
        raise ValueError("outbox entry attributes are not a string map")
    flag = f.get("h")
    return LedgerRow(
        tenant_id=tenant_id,
        entry_key=entry_key,
        user_id=user_id,
        points=int(f["p"]),
        balance_after=int(f["b"]),
        kind=kind,
        action=action,
        event_id=event_id,
        role=role,
        counterpart_id=counterpart,
        group_id=group,
        department_id=department,
        quantity=int(quantity or 0),
        reason=reason,
        occurred_at_ms=_time_ms(occurred),
        recorded_at_ms=_time_ms(recorded),
        attributes=attrs,
        state=STATE_HELD if f.get("s") == "h" else STATE_PAID,
        flag_id=int(flag) if flag else None,
    )


def _time_ms(text: str) -> int:
    ms = int(text)
    if not 0 <= ms <= TIME_MS_MAX:
        raise ValueError(f"outbox entry time {ms} ms is out of range")
    return ms
