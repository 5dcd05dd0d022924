"""Ledger rows and their encoding in the Redis outbox stream.

The award script appends `k u p b m` fields; `m` is this module's JSON of the
remaining facts. The flusher decodes entries back into LedgerRow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.domain import CreditOp

__all__ = ["KIND_AWARD", "LedgerRow", "decode_entry", "encode_award_meta"]

KIND_AWARD = "award"


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


def encode_award_meta(op: CreditOp) -> str:
    facts = op.facts
    meta: dict[str, Any] = {
        "kd": KIND_AWARD,
        "e": op.event_id,
        "r": op.role.letter,
        "o": op.occurred_at_ms,
        "t": op.recorded_at_ms,
    }
    if facts is not None:
        meta.update(
            a=facts.action,
            c=facts.counterpart_id,
            g=facts.group_id,
            dp=facts.department_id,
            q=facts.quantity,
            why=facts.reason,
        )
        if facts.attributes:
            meta["at"] = dict(facts.attributes)
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_entry(tenant_id: str, fields: Mapping[Any, Any]) -> LedgerRow:
    """Decode one outbox entry; raises ValueError/KeyError on a malformed one."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    meta = json.loads(f["m"])
    return LedgerRow(
        tenant_id=tenant_id,
        entry_key=f["k"],
        user_id=f["u"],
        points=int(f["p"]),
        balance_after=int(f["b"]),
        kind=str(meta.get("kd", KIND_AWARD)),
        action=str(meta.get("a", "")),
        event_id=str(meta.get("e", "")),
        role=str(meta.get("r", "")),
        counterpart_id=str(meta.get("c", "")),
        group_id=str(meta.get("g", "")),
        department_id=str(meta.get("dp", "")),
        quantity=int(meta.get("q", 0)),
        reason=str(meta.get("why", "")),
        occurred_at_ms=int(meta["o"]),
        recorded_at_ms=int(meta["t"]),
        attributes={str(k): str(v) for k, v in meta.get("at", {}).items()},
    )
