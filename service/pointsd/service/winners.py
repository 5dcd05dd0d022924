"""Record the winners of closed weeks and months in the hall of fame.

A period is final once it has ended and events for it can no longer arrive:
events up to POINTS_EVENT_MAX_AGE_S old are accepted, so by default winners
are recorded that long after the period's end (POINTS_WINNERS_DELAY_S). Each
pass looks at the closed periods whose boards are still kept, for every
scope with data, and records the top N of those not yet recorded. "Still
kept" means its keys have not expired, which with a long delay reaches
beyond `keep_periods`. Any number
of processes may run passes: PostgreSQL decides who records (exactly once).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from pointsd.service.app import App
from pointsd.service.domain import BoardRef, Period
from pointsd.service.periodic import every
from pointsd.service.rules import TenantRules
from pointsd.service.rules.mechanics.boards import BOARD_PERIOD_S, BOARDS, BoardMember, BoardRule
from pointsd.service.rules.periods import period_bounds, period_key, shift_period
from pointsd.storage.postgres.winners import WinnerRow

__all__ = ["WinnersRecorder"]

log = logging.getLogger("pointsd.winners")

_CLOSING = (Period.WEEK, Period.MONTH)
# Bound of the backwards scan (a misconfiguration must not loop for long).
_OFFSETS_MAX = 520


@dataclass
class WinnersRecorder:
    app: App
    delay_s: int
    interval_s: float = 60.0
    _done: set[tuple[str, str, str, str, str]] = field(default_factory=set)

    async def run_once(self, now_ms: int | None = None) -> int:
        """One pass; returns how many (period, scope) records this call wrote."""
        now_ms = self.app.clock() if now_ms is None else now_ms
        written = 0
        for tenant in self.app.rules.tenants.values():
            if await self.app.stores.balances.in_maintenance(tenant.tenant_id):
                continue  # a rebuild is refilling its boards: judge them later
            for board in tenant.part(BOARDS).values():
                if not board.winners:
                    continue
                for kind in board.periods:
                    if kind not in _CLOSING:
                        continue
                    count, finished = await self._record_board(tenant, board, kind, now_ms)
                    written += count
                    if not finished:
                        return written  # a rebuild started: judge it later
        return written

    async def _record_board(
        self, tenant: TenantRules, board: BoardRule, kind: Period, now_ms: int
    ) -> tuple[int, bool]:
        """Records written for the closed periods of one board and kind, and
        False if a rebuild of the tenant started meanwhile (the pass stops)."""
        tz = tenant.timezone
        # Every closed period whose board can still exist: with a
        # long delay a period is final only beyond keep_periods.
        keep_s = self.app.engine.state_retention_s + board.keep_periods * BOARD_PERIOD_S[kind]
        written = 0
        for offset in range(1, _OFFSETS_MAX + 1):
            at = shift_period(kind, now_ms, tz, offset)
            _, end_s = period_bounds(kind, at, tz)
            if end_s + keep_s < now_ms // 1000:
                break  # its keys (and all older ones) have expired
            if end_s + self.delay_s > now_ms // 1000:
                continue
            count, finished = await self._record_period(
                tenant, board, kind, period_key(kind, at, tz)
            )
            written += count
            if not finished:
                return written, False
        return written, True

    async def _record_period(
        self, tenant: TenantRules, board: BoardRule, kind: Period, key: str
    ) -> tuple[int, bool]:
        """Records written for one closed period's scopes, and False if a
        rebuild of the tenant started meanwhile."""
        stores = self.app.stores
        ident = (tenant.tenant_id, board.name, kind.value, key)
        scopes = {"t"} | await stores.boards.scopes(tenant.tenant_id, board.name, kind, key)
        todo = {s for s in scopes if (*ident, s) not in self._done}
        if todo:
            todo -= await stores.hall_of_fame.recorded_scopes(*ident)
        written = 0
        for scope in sorted(todo):
            if await stores.balances.in_maintenance(tenant.tenant_id):
                return written, False
            ranking = await stores.boards.top(
                tenant.tenant_id,
                BoardRef(board.name, scope, kind, key),
                0,
                board.winners,
                board.member is BoardMember.GROUP,
            )
            rows = [WinnerRow(e.rank, e.member, e.score) for e in ranking.entries]
            # A period without activity has no winners to keep
            # (and no late event can change that any more).
            if rows and await stores.hall_of_fame.record(*ident, scope, rows):
                written += 1
                log.info(
                    "recorded %d winners of %s %s %s scope %s",
                    len(rows),
                    tenant.tenant_id,
                    board.name,
                    key,
                    scope,
                )
        self._done.update((*ident, s) for s in scopes)
        return written, True

    async def run(self, stop: asyncio.Event) -> None:
        await every(self.interval_s, stop, self.run_once, log, "recording winners")
