"""Accumulators: points per quantity, collected per day (1 point per 30
online minutes, reported in any chunks).

Rule file, in an actor/target credit: `per_quantity`: 0 (default) ignores
the event's quantity, each event earns `points`; 1 pays `points` per unit
of quantity; N > 1 collects the quantity per day and pays `points` per whole
N crossed.

Compiles to one Accumulate step (N > 1). A rebuild does not restore the
quantity collected towards the next unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pointsd.service.domain import SEP, Period
from pointsd.service.domain.steps import Accumulate, Step
from pointsd.service.rules.checker import Checker
from pointsd.service.rules.mechanics.base import CompileContext, Compiled, Mechanic, Rank, Refs
from pointsd.service.rules.model import CreditRule, PartKey

__all__ = ["PER_QUANTITY", "Accumulators"]

PER_QUANTITY: PartKey[int] = PartKey("accumulators", 0)


class _CompiledAccumulator(Compiled):
    rank = Rank.POINTS
    uses_quantity = True

    def __init__(self, counter: str, unit: int) -> None:
        self.counter = counter
        self.unit = unit
        self.kinds = (Period.DAY,) if unit > 1 else ()

    def steps(self, refs: Refs, *, restore: bool) -> tuple[Step, ...]:
        if restore or self.unit <= 1:
            return ()
        return (Accumulate(refs[Period.DAY], self.counter, self.unit),)

    def award_text(self, points: int, limit: int) -> str | None:
        if points == 0:
            return f"quantity counted; points are due per {self.unit} units"
        return None


class Accumulators(Mechanic):
    name = "accumulators"
    credit_keys = frozenset({"per_quantity"})

    def parse_credit(self, c: Checker, m: Mapping[str, Any], path: str) -> Any:
        return c.integer(m.get("per_quantity", 0), f"{path}.per_quantity", 0, 10**6) or None

    def describe(self, credit: CreditRule) -> str:
        unit = credit.part(PER_QUANTITY)
        return f"per {unit} units" if unit > 1 else ("per unit of quantity" if unit else "")

    def compile(self, ctx: CompileContext) -> Compiled | None:
        unit = ctx.credit.part(PER_QUANTITY)
        if not unit:
            return None
        return _CompiledAccumulator(SEP.join((ctx.base, "q")), unit)
