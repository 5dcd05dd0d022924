"""Throttles: at most one award of an action every `min_interval_ms` per
user (a poke every minute, not every second).

Rule file, in an actor/target credit: `min_interval_ms` (0-7 days).

Compiles to one Throttle step: an award closer than the interval to another
awarded one, before or after (events arrive in any order), is THROTTLED.
A rebuild does not restore the award times (they are short-lived).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pointsd.service.domain import StoreCode
from pointsd.service.domain.steps import Step, Throttle
from pointsd.service.rules.checker import Checker
from pointsd.service.rules.mechanics.base import CompileContext, Compiled, Mechanic, Rank, Refs
from pointsd.service.rules.model import CreditRule, PartKey

__all__ = ["MIN_INTERVAL_MS", "Throttles", "interval_text"]

MIN_INTERVAL_MS: PartKey[int] = PartKey("throttles", 0)
_INTERVAL_MAX_MS = 7 * 86_400_000
# Award times are kept for as long as an event may arrive late (the dedup
# retention, which covers the accepted event age), at least this long, plus
# the interval: occurred_at is compared, not arrival time.
_KEEP_MARGIN_MS = 600_000


def interval_text(ms: int) -> str:
    if ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    if ms % 1000 == 0:
        return f"{ms // 1000} s"
    return f"{ms} ms"


class _CompiledThrottle(Compiled):
    rank = Rank.GUARD

    def __init__(self, step: Throttle) -> None:
        self.step = step

    def steps(self, refs: Refs, *, restore: bool) -> tuple[Step, ...]:
        return () if restore else (self.step,)

    def refusal_text(self, code: StoreCode, limit: int) -> str | None:
        if code is StoreCode.THROTTLED:
            return f"too soon, at most once every {interval_text(self.step.interval_ms)}"
        return None


class Throttles(Mechanic):
    name = "throttles"
    credit_keys = frozenset({"min_interval_ms"})

    def parse_credit(self, c: Checker, m: Mapping[str, Any], path: str) -> Any:
        ms = c.integer(m.get("min_interval_ms", 0), f"{path}.min_interval_ms", 0, _INTERVAL_MAX_MS)
        return ms or None

    def describe(self, credit: CreditRule) -> str:
        ms = credit.part(MIN_INTERVAL_MS)
        return f"at most once every {interval_text(ms)}" if ms else ""

    def compile(self, ctx: CompileContext) -> Compiled | None:
        ms = ctx.credit.part(MIN_INTERVAL_MS)
        if not ms:
            return None
        keep = ms + max(_KEEP_MARGIN_MS, ctx.dedup_retention_s * 1000)
        return _CompiledThrottle(Throttle(ctx.base, ms, keep))
