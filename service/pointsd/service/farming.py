"""The farming detector: a periodic pass that judges the durable ledger and
holds flagged users, and the decision on a flag (docs/farming.md).

The pass (`FarmingPass`, in the flusher role, every POINTS_FARMING_INTERVAL_S)
goes over every tenant of the rule book, in the tenant's zone:

1. settles the decisions not yet settled in Redis (a process that decided
   a flag died before paying or cancelling its held points, or a rebuild
   owned the shard then);
2. judges the tenant's ledger with the pure rules (rules/farming.py), when
   its signals are on: reciprocity and rings over the ISO week containing
   now ("2026-W49"), rate over the clock hour containing now ("2026-12-03T06").
   The first pass after a week or an hour turned also judges the one that
   ended in full: the pass before saw it up to its last minute at most;
3. stores the findings never seen before, each on the user's open flag or
   a new one (storage/pointsd/storage/postgres/farming.py);
4. holds every open flag's user in Redis (idempotent: it also repairs a
   hold lost between PostgreSQL and Redis). Open flags keep holding after
   a tenant turned its signals off: the signals find, a person decides.

Any number of processes may run passes: PostgreSQL keeps one open flag per
user and one row per finding, and Redis settles each flag exactly once.

`decide` releases (pays the held points) or voids (cancels them) one flag:
the decision in PostgreSQL with the call's audit row, then the settlement in
Redis, then its record. A retry, or a second process deciding the same way,
gets the same flag and moves nothing twice; a flag decided the other way
is FAILED_PRECONDITION. A decision whose settlement found the shard in a
rebuild, or Redis unreachable (UNAVAILABLE, saying the decision stands), is
settled by the next pass.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

from pointsd.service.domain import Period, StoreCode
from pointsd.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unfinished,
    clip,
)
from pointsd.service.periodic import every
from pointsd.service.rules import TenantRules
from pointsd.service.rules.farming import (
    FARMING,
    FarmingRules,
    Finding,
    pair_findings,
    rate_findings,
)
from pointsd.service.rules.periods import period_bounds, period_key, shift_period
from pointsd.storage.errors import RecordMissing, StorageUnavailable
from pointsd.storage.postgres.audit import AuditRow
from pointsd.storage.postgres.farming import (
    NOTE_CHARS_MAX,
    OPEN,
    RELEASED,
    VOIDED,
    FlagDecided,
    FlagRecord,
)

if TYPE_CHECKING:
    from pointsd.service.app import App

__all__ = ["DECIDED_BY_CHARS_MAX", "FarmingPass", "PassReport", "decide", "hour_window"]

log = logging.getLogger("pointsd.farming")

DECIDED_BY_CHARS_MAX = 256
_FLAG_ID_MAX = 2**63 - 1
_HOUR_MS = 3_600_000


@dataclass
class PassReport:
    """What one pass did, over every tenant."""

    # Tenants whose ledger was judged (signals on).
    tenants: int = 0
    # Findings the rules made, new or seen before.
    findings: int = 0
    # (tenant, flag id, user) of the flags that gained findings.
    flagged: list[tuple[str, int, str]] = field(default_factory=list)
    # Open flags whose hold is in place in Redis.
    held: int = 0
    # Decisions settled in Redis by this pass.
    settled: int = 0
    # Holds and settlements put off: a rebuild owns the shard.
    deferred: int = 0


def hour_window(now_ms: int, tz: tzinfo) -> tuple[int, int, str]:
    """[start, end) in ms of the tenant-local clock hour containing now_ms,
    and its key ("2026-12-03T06")."""
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    start = local.replace(minute=0, second=0, microsecond=0)
    start_ms = int(start.timestamp() * 1000)
    return start_ms, start_ms + _HOUR_MS, f"{start:%Y-%m-%dT%H}"


@dataclass
class FarmingPass:
    app: App
    interval_s: float = 60.0
    # Per tenant, the (week, hour) keys the last pass of this process judged:
    # when they change, the period that ended is judged once in full.
    _judged: dict[str, tuple[str, str]] = field(default_factory=dict)

    async def run_once(self, now_ms: int | None = None) -> PassReport:
        now_ms = self.app.clock() if now_ms is None else now_ms
        report = PassReport()
        for tenant in self.app.rules.tenants.values():
            await self._settle_decided(tenant.tenant_id, now_ms, report)
            rules = tenant.part(FARMING)
            if rules.enabled:
                report.tenants += 1
                findings = await self._judge(tenant, rules, now_ms)
                report.findings += len(findings)
                await self._record(tenant.tenant_id, findings, now_ms, report)
            await self._hold_open(tenant.tenant_id, report)
        return report

    async def run(self, stop: asyncio.Event) -> None:
        await every(self.interval_s, stop, self.run_once, log, "the farming pass")

    async def _settle_decided(self, tenant_id: str, now_ms: int, report: PassReport) -> None:
        for flag in await self.app.stores.farming.unsettled(tenant_id):
            if await _settle(self.app, flag, now_ms) is None:
                report.deferred += 1
            else:
                report.settled += 1

    async def _judge(self, tenant: TenantRules, rules: FarmingRules, now_ms: int) -> list[Finding]:
        tz = tenant.timezone
        week = period_key(Period.WEEK, now_ms, tz)
        hour_start, _, hour = hour_window(now_ms, tz)
        last = self._judged.get(tenant.tenant_id)
        findings = await self._pairs(tenant, rules, now_ms)
        if last is None or last[0] != week:
            findings += await self._pairs(tenant, rules, shift_period(Period.WEEK, now_ms, tz, 1))
        findings += await self._rate(tenant, rules, now_ms)
        if last is None or last[1] != hour:
            findings += await self._rate(tenant, rules, hour_start - 1)
        self._judged[tenant.tenant_id] = (week, hour)
        return findings

    async def _pairs(self, tenant: TenantRules, rules: FarmingRules, at_ms: int) -> list[Finding]:
        """Reciprocity and ring findings of the ISO week containing at_ms."""
        tz = tenant.timezone
        start_s, end_s = period_bounds(Period.WEEK, at_ms, tz)
        pairs = await self.app.stores.farming.pair_counts(
            tenant.tenant_id, start_s * 1000, end_s * 1000, rules.actions, rules.pair_floor
        )
        return pair_findings(rules, pairs, period_key(Period.WEEK, at_ms, tz))

    async def _rate(self, tenant: TenantRules, rules: FarmingRules, at_ms: int) -> list[Finding]:
        """Rate findings of the tenant-local clock hour containing at_ms."""
        store = self.app.stores.farming
        start, end, key = hour_window(at_ms, tenant.timezone)
        ignored = rules.rate.ignore_actions
        counts = await store.rate_counts(tenant.tenant_id, start, end, ignored)
        # Only a user with enough events can show a regular spacing.
        spaced = [u for u, n in counts.items() if n >= rules.rate.spacing_min_events]
        times = await store.times(tenant.tenant_id, spaced, start, end, ignored)
        return rate_findings(rules, counts, times, key, f"hour {key} ({tenant.timezone.key})")

    async def _record(
        self, tenant_id: str, findings: list[Finding], now_ms: int, report: PassReport
    ) -> None:
        store = self.app.stores.farming
        for flag_id, user_id in await store.record(tenant_id, findings, now_ms):
            report.flagged.append((tenant_id, flag_id, user_id))
            flag = await store.get(tenant_id, flag_id)
            found = flag.findings if flag is not None else ()
            new = [f for f in found if f.found_at_ms == now_ms]
            what = ", ".join(f"{f.signal} {f.period_key}" for f in new)
            if len(new) == len(found):
                log.info("farming flag %d holds %s/%s for review: %s",
                         flag_id, tenant_id, user_id, what)  # fmt: skip
            else:
                log.info("farming flag %d of %s/%s has %d new finding(s): %s",
                         flag_id, tenant_id, user_id, len(new), what)  # fmt: skip

    async def _hold_open(self, tenant_id: str, report: PassReport) -> None:
        holds = self.app.stores.holds
        for flag_id, user_id in await self.app.stores.farming.holding(tenant_id):
            got = await holds.hold(tenant_id, user_id, flag_id)
            if got.code is StoreCode.MAINTENANCE:
                report.deferred += 1
            elif got.code is StoreCode.APPLIED:
                # Held, under this flag or an older one Redis still holds the
                # user under (settled first; this flag holds from the next pass).
                report.held += 1
            else:
                await self._settled_meanwhile(tenant_id, flag_id, user_id)

    async def _settled_meanwhile(self, tenant_id: str, flag_id: int, user_id: str) -> None:
        """Redis says the flag was settled, which a decision made since
        `holding` read it explains; a flag still open is out of step."""
        flag = await self.app.stores.farming.get(tenant_id, flag_id)
        if flag is not None and flag.state == OPEN:
            log.warning("farming flag %d of %s/%s is open, yet settled in Redis: it holds "
                        "nothing; decide it to close it", flag_id, tenant_id, user_id)  # fmt: skip


def _reason(flag: FlagRecord) -> str:
    # The same text from every process: a settlement is applied once, by
    # whichever gets there first.
    return f"farming flag {flag.flag_id} {flag.state}"


async def _settle(app: App, flag: FlagRecord, now_ms: int) -> FlagRecord | None:
    """Pay (released) or cancel (voided) what the flag held, once, and
    record it: the flag as settled, or None when a rebuild owns the shard."""
    got = await app.stores.holds.settle(
        flag.tenant_id, flag.user_id, flag.flag_id, release=flag.state == RELEASED,
        reason=_reason(flag),
    )  # fmt: skip
    if got.code is StoreCode.MAINTENANCE:
        return None
    await app.stores.farming.settled(flag.flag_id, got.points, now_ms)
    return await app.stores.farming.get(flag.tenant_id, flag.flag_id)


def _check(flag_id: int, note: str) -> None:
    if not 0 < flag_id <= _FLAG_ID_MAX:
        raise InvalidArgument(f"flag_id: a flag id is a positive integer, got {flag_id}")
    if len(note) > NOTE_CHARS_MAX:
        raise InvalidArgument(
            f"note: at most {NOTE_CHARS_MAX} characters, got {len(note)}; shorten it"
        )


async def decide(
    app: App,
    tenant_id: str,
    flag_id: int,
    *,
    release: bool,
    note: str,
    decided_by: str,
    audit_row: AuditRow | None,
) -> FlagRecord:
    """Release or void the tenant's flag `flag_id` (see the module's
    docstring), as `decided_by`, writing `audit_row` (audit.effect_row())
    with the decision. The flag as it ends: settled_at_ms None only when a
    rebuild owned the user's shard (the next pass settles it). A store
    unreachable after the decision: Unfinished (UNAVAILABLE, saying the
    decision stands); a retry, or the next pass, settles it."""
    _check(flag_id, note)
    state = RELEASED if release else VOIDED
    now_ms = app.clock()
    try:
        flag = await app.stores.farming.decide(
            tenant_id, flag_id, state=state, decided_by=clip(decided_by, DECIDED_BY_CHARS_MAX),
            note=note, now_ms=now_ms, audit=audit_row,
        )  # fmt: skip
    except RecordMissing:
        raise NotFound(f"flag_id: tenant {clip(tenant_id)!r} has no flag {flag_id}") from None
    except FlagDecided as exc:
        done = exc.flag
        when = "" if done.decided_at_ms is None else " at " + _iso(done.decided_at_ms)
        raise FailedPrecondition(
            f"flag_id: flag {flag_id} was {done.state} by {clip(done.decided_by)!r}{when}; "
            f"a decided flag cannot be {state}"
        ) from None
    if flag.settled_at_ms is not None:
        return flag
    try:
        settled = await _settle(app, flag, now_ms)
    except StorageUnavailable:
        raise Unfinished(
            f"flag {flag_id} is {state}; settling its held points waits for a store that did "
            "not answer: retry this call (it moves nothing twice), or the next farming pass "
            "settles it"
        ) from None
    return flag if settled is None else settled


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
