"""The balance: every award moves the user's available and lifetime earned
points, writes its ledger entry, and counts into the points earned today
(GetBalance's `earned_today`). Not a rule-file key: every credit has it.

Compiles to a Credit step and a Bump of the day's EARNED counter. A rebuild
sets balances from the ledger's sums instead, and replays the Bump.
"""

from __future__ import annotations

from pointsd.service.domain import Period
from pointsd.service.domain.steps import Amount, Bump, Credit, Step
from pointsd.service.rules.mechanics.base import CompileContext, Compiled, Mechanic, Rank, Refs

__all__ = ["EARNED", "Balance"]

# Points earned per day, the source of Balance.earned_today.
EARNED = "earned"
_CREDIT = Credit()


class _CompiledBalance(Compiled):
    rank = Rank.BALANCE
    kinds: tuple[Period, ...] = (Period.DAY,)

    def steps(self, refs: Refs, *, restore: bool) -> tuple[Step, ...]:
        earned = Bump(refs[Period.DAY], EARNED, Amount.POINTS)
        return (earned,) if restore else (_CREDIT, earned)

    def award_text(self, points: int, limit: int) -> str | None:
        return f"+{points}"


class Balance(Mechanic):
    name = "balance"

    def compile(self, ctx: CompileContext) -> Compiled | None:
        return _CompiledBalance()
