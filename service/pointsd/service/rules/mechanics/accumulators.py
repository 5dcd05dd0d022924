"""Accumulators: points per quantity, collected per day (1 point per 30
online minutes, reported in any chunks).

Rule file, in an actor/target credit: `per_quantity`: 0 (default) ignores
the event's quantity, each event earns `points`; 1 pays `points` per unit
of quantity; N > 1 collects the quantity per day and pays `points` per whole
N crossed. `tiers: [p1, p2, ...]` (with N > 1): the day's first unit pays p1
(= `points`), the second p2, ... and each unit after the list its last
price ("over 30 minutes: base points; each further 30 minutes a little
more"); caps then apply to what the units paid.

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

__all__ = ["PER_QUANTITY", "TIERS", "Accumulators", "Tiers"]

PER_QUANTITY: PartKey[int] = PartKey("accumulators", 0)
TIERS: PartKey[tuple[int, ...]] = PartKey("tiers", ())
_TIERS_MAX = 48


class _CompiledAccumulator(Compiled):
    rank = Rank.POINTS
    uses_quantity = True

    def __init__(self, counter: str, unit: int, tiers: tuple[int, ...]) -> None:
        self.counter = counter
        self.unit = unit
        self.tiers = tiers
        self.kinds = (Period.DAY,) if unit > 1 else ()

    def steps(self, refs: Refs, *, restore: bool) -> tuple[Step, ...]:
        if restore or self.unit <= 1:
            return ()
        return (Accumulate(refs[Period.DAY], self.counter, self.unit, self.tiers),)

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
        tiers = credit.part(TIERS)
        if tiers:
            return f"per {unit} units, priced {', '.join(map(str, tiers))} (then {tiers[-1]} each)"
        return f"per {unit} units" if unit > 1 else ("per unit of quantity" if unit else "")

    def compile(self, ctx: CompileContext) -> Compiled | None:
        unit = ctx.credit.part(PER_QUANTITY)
        if not unit:
            return None
        return _CompiledAccumulator(SEP.join((ctx.base, "q")), unit, ctx.credit.part(TIERS))


class Tiers(Mechanic):
    """`tiers` of an accumulating credit (parsed apart: it needs the points
    and per_quantity of the same credit)."""

    name = "tiers"
    credit_keys = frozenset({"tiers"})

    def parse_credit(self, c: Checker, m: Mapping[str, Any], path: str) -> Any:
        raw = m.get("tiers")
        if raw is None:
            return None
        where = f"{path}.tiers"
        if not (
            isinstance(raw, list)
            and 0 < len(raw) <= _TIERS_MAX
            and all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 10**6 for p in raw)
        ):
            c.fail(where, f"must be a list of 1-{_TIERS_MAX} unit prices (0-1000000 points)")
            return None
        if m.get("points") != raw[0]:
            c.fail(where, f"the first unit's price is the credit's points ({m.get('points')!r}), "
                          f"got {raw[0]}")  # fmt: skip
        if not (isinstance(m.get("per_quantity"), int) and m["per_quantity"] > 1):
            c.fail(where, "needs per_quantity > 1 (the unit, e.g. 30 minutes)")
        return tuple(raw)
