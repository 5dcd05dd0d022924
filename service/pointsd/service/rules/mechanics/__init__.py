"""Mechanics: one module each, compiled onto the award primitives.

Each module owns its rule-file keys, their parsing and validation, the steps
a credit compiles to, the words of its results and its rebuild rule
(docs/architecture.md, "Adding a mechanic"). The engine and the loader know
mechanics only through `MECHANICS`.
"""

from __future__ import annotations

from pointsd.service.rules.mechanics.accumulators import Accumulators, Tiers
from pointsd.service.rules.mechanics.badges import Badges
from pointsd.service.rules.mechanics.balance import Balance
from pointsd.service.rules.mechanics.base import (
    BonusInfo,
    CompileContext,
    Compiled,
    Mechanic,
    Rank,
    Refs,
)
from pointsd.service.rules.mechanics.boards import Boards
from pointsd.service.rules.mechanics.campaigns import Campaigns
from pointsd.service.rules.mechanics.caps import Caps
from pointsd.service.rules.mechanics.levels import Levels
from pointsd.service.rules.mechanics.streaks import Streaks
from pointsd.service.rules.mechanics.tasks import Tasks
from pointsd.service.rules.mechanics.throttles import Throttles

__all__ = ["MECHANICS", "BonusInfo", "CompileContext", "Compiled", "Mechanic", "Rank", "Refs"]

# In the order the loader reads them (and lists their problems); steps are
# ordered by each compiled part's rank.
MECHANICS: tuple[Mechanic, ...] = (
    Caps(),
    Accumulators(),
    Tiers(),
    Throttles(),
    Balance(),
    Boards(),
    Levels(),
    Badges(),
    Tasks(),
    Streaks(),
    Campaigns(),
)
