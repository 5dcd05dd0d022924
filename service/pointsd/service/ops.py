"""Operator commands behind `pointsd reconcile` and `pointsd rebuild`.

reconcile: drain the outbox, then compare every Redis balance with the sums
of the user's ledger rows in PostgreSQL (guarantee 3, balances are derivable).

rebuild: restore Redis state from the ledger after Redis data loss. Per
tenant: refuse writes (maintenance flag) -> drain the outbox -> wipe the
tenant's state -> balances from ledger sums -> replay every award entry
through award.lua in restore mode, with the steps each mechanic's rebuild
rule gives (engine.plan(restore=True)): dedup records (replays stay
exactly-once), period counters (caps hold), lifetime counters (once-ever
rules stay once) and boards, under the current rules -> allow writes again.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace

from pointsd.service.app import App
from pointsd.service.domain import CreditOp, Event, Period, PeriodRef, Role, StoreCode
from pointsd.service.domain.steps import Step
from pointsd.service.redeem import restoring_change
from pointsd.service.rules import TASKS, Plan, fingerprint, task_counter, task_tag
from pointsd.service.rules.mechanics.streaks import COVER, FREEZES, STREAK, freeze_day
from pointsd.service.rules.mechanics.streaks import KEEP_S as STREAK_KEEP_S
from pointsd.service.rules.mechanics.tasks import Measure
from pointsd.storage.entries import KIND_AWARD, STATE_HELD, LedgerRow
from pointsd.storage.errors import StorageError
from pointsd.storage.keys import Shard
from pointsd.storage.redis import BalanceView, RestoreOp

__all__ = ["Mismatch", "RebuildReport", "ReconcileReport", "rebuild", "reconcile"]

log = logging.getLogger("pointsd.ops")

_RESTORE_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Mismatch:
    tenant_id: str
    user_id: str
    redis: BalanceView
    ledger: BalanceView


@dataclass
class ReconcileReport:
    drained: bool
    users: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.drained and not self.mismatches


class RebuildFailed(RuntimeError):
    pass


@dataclass
class RebuildReport:
    tenants: int = 0
    users: int = 0
    entries: int = 0
    keys_deleted: int = 0


async def _compare(app: App, tenant_id: str) -> tuple[int, list[Mismatch]]:
    sums = await app.stores.ledger.sums(tenant_id)
    ledger = {u: BalanceView(s.net, s.earned, s.spent, held=s.held) for u, s in sums.items()}
    redis: dict[str, BalanceView] = {}
    for shard in app.stores.topology.tenant_shards(tenant_id):
        async for user, view in app.stores.balances.scan_balances(shard):
            redis[user] = view
    zero = BalanceView()
    mismatches = []
    for user in sorted(set(ledger) | set(redis)):
        r, lg = redis.get(user, zero), ledger.get(user, zero)
        if (r.available, r.earned, r.spent, r.held) != (lg.available, lg.earned, lg.spent, lg.held):
            mismatches.append(Mismatch(tenant_id, user, r, lg))
    return len(set(ledger) | set(redis)), mismatches


async def reconcile(app: App, *, drain_timeout_s: float = 60.0) -> ReconcileReport:
    """Balances in Redis == ledger sums in PostgreSQL, for every user."""
    if not await app.flusher.drain(drain_timeout_s):
        return ReconcileReport(drained=False)
    report = ReconcileReport(drained=True)
    for tenant_id in sorted(app.rules.tenants):
        users, mismatches = await _compare(app, tenant_id)
        if mismatches:
            # Events accepted while comparing show up as differences; drain and
            # look again so only lasting differences are reported.
            await app.flusher.drain(drain_timeout_s)
            users, mismatches = await _compare(app, tenant_id)
        report.users += users
        report.mismatches.extend(mismatches)
    return report


def _event_of(row: LedgerRow) -> Event:
    actor, target = (
        (row.user_id, row.counterpart_id) if row.role == "a" else (row.counterpart_id, row.user_id)
    )
    return Event(
        tenant_id=row.tenant_id,
        event_id=row.event_id,
        user_id=actor,
        action=row.action,
        occurred_at_ms=row.occurred_at_ms,
        target_user_id=target,
        group_id=row.group_id,
        department_id=row.department_id,
        quantity=row.quantity or 1,
        attributes=dict(row.attributes),
    )


def _live(steps: tuple[Step, ...], now_s: int) -> tuple[Step, ...]:
    """The steps whose state has not expired yet."""
    return tuple(s for s in steps if not s.expires_at_s or s.expires_at_s > now_s)


def _restore_op(app: App, row: LedgerRow, now_s: int) -> RestoreOp | None:
    if row.kind != KIND_AWARD or not row.event_id:
        return None
    event = _event_of(row)
    role = Role.ACTOR if row.role == "a" else Role.TARGET
    # Each mechanic's rebuild rule: the steps that recreate its state from
    # what the ledger says was paid (no checks, no balance moves).
    planned = app.engine.plan(event, recorded_at_ms=row.recorded_at_ms, restore=True)
    op: CreditOp | None = None
    if isinstance(planned, Plan):
        op = next((o for o in planned.ops if o.role is role), None)
    if op is None:
        # The rule is gone or changed shape: keep exactly-once, nothing else.
        op = CreditOp(
            tenant_id=row.tenant_id,
            user_id=row.user_id,
            role=role,
            event_id=row.event_id,
            fingerprint=fingerprint(event),
            points_per_unit=0,
            quantity=0,
            occurred_at_ms=row.occurred_at_ms,
            recorded_at_ms=row.recorded_at_ms,
            dedup_expires_at_s=(row.occurred_at_ms // 1000 + app.engine.dedup_retention_s),
        )
    steps = _live(op.steps, now_s)
    expires = op.dedup_expires_at_s if op.dedup_expires_at_s > now_s else 0
    if not steps and not expires:
        return None
    held_by = row.flag_id if row.state == STATE_HELD else None
    return RestoreOp(replace(op, steps=steps, dedup_expires_at_s=expires), row.points,
                     row.balance_after, held_by=held_by)  # fmt: skip


def _identity_op(
    app: App, row: LedgerRow, now_s: int, balances: dict[str, dict[str, BalanceView]]
) -> RestoreOp | None:
    planned = app.engine.plan(_event_of(row), recorded_at_ms=row.recorded_at_ms, restore=True)
    if not isinstance(planned, Plan) or planned.ops[0].role is Role.TARGET:
        return None  # the rule is gone, or the target credit is the anchor
    anchor = planned.ops[0]
    shard = app.stores.topology.user_shard(row.tenant_id, anchor.user_id)
    view = balances.get(shard.tag, {}).get(anchor.user_id, BalanceView())
    expires = anchor.dedup_expires_at_s if anchor.dedup_expires_at_s > now_s else 0
    if planned.rule.actor_gates:
        # The target was paid, so the gate let the event through: the
        # actor's credit was awarded (paying nothing, it has no row of its
        # own). Replay its rebuild steps, so its budget stays used.
        steps = _live(anchor.steps, now_s)
        if not steps and not expires:
            return None
        op = replace(anchor, steps=steps, dedup_expires_at_s=expires)
        return RestoreOp(op, 0, view.available)
    if not expires:
        return None
    # Otherwise the actor's credit was refused (capped, throttled).
    return RestoreOp(replace(anchor, steps=()), 0, view.available, code=StoreCode.CAPPED)


async def rebuild(app: App, tenants: list[str] | None = None) -> RebuildReport:
    """Rebuild Redis state of `tenants` (default: all) from the ledger."""
    report = RebuildReport()
    for tenant_id in tenants or sorted(app.rules.tenants):
        await _rebuild_tenant(app, tenant_id, report)
    return report


async def _rebuild_tenant(app: App, tenant_id: str, report: RebuildReport) -> None:
    shards = app.stores.topology.tenant_shards(tenant_id)
    await _refuse_writes(app, shards)
    await _drain_or_allow_writes(app, tenant_id, shards)
    try:
        await _restore_tenant(app, tenant_id, shards, report)
    except Exception as exc:
        # State is half-wiped: writes stay refused (UNAVAILABLE) until a
        # rebuild completes; accepting them now would pay without dedup.
        raise RebuildFailed(
            f"tenant {tenant_id}: rebuild failed after wiping its Redis state ({exc}); "
            "writes stay refused until `pointsd rebuild` completes"
        ) from exc
    for shard in shards:
        await app.stores.balances.set_maintenance(shard, False)


async def _refuse_writes(app: App, shards: list[Shard]) -> None:
    balances = app.stores.balances
    try:
        for shard in shards:
            await balances.set_maintenance(shard, True)
    except StorageError:
        for shard in shards:  # nothing was changed: let writes go on
            with contextlib.suppress(StorageError):
                await balances.set_maintenance(shard, False)
        raise


async def _drain_or_allow_writes(app: App, tenant_id: str, shards: list[Shard]) -> None:
    # This tenant's streams only: other tenants' traffic goes on meanwhile.
    drained = False
    try:
        drained = await app.flusher.drain(300, shards)
    finally:
        if not drained:
            # Not drained, failed or cancelled, and nothing touched yet:
            # writes may go on, the rebuild waits.
            for shard in shards:
                with contextlib.suppress(StorageError):
                    await app.stores.balances.set_maintenance(shard, False)
    if not drained:
        raise RebuildFailed(
            f"tenant {tenant_id}: the outbox could not be drained into PostgreSQL; "
            "rebuilding now would lose its entries. Nothing was changed."
        )


async def _restore_tenant(
    app: App, tenant_id: str, shards: list[Shard], report: RebuildReport
) -> None:
    """Wipe the tenant's Redis state and recreate it from the ledger."""
    stores = app.stores
    for shard in shards:
        report.keys_deleted += await stores.balances.wipe_state(shard)
    sums = await stores.ledger.sums(tenant_id)
    per_shard: dict[str, dict[str, BalanceView]] = {}
    for user, s in sums.items():
        shard = stores.topology.user_shard(tenant_id, user)
        per_shard.setdefault(shard.tag, {})[user] = BalanceView(
            s.net, s.earned, s.spent, held=s.held
        )
    for shard in shards:
        await stores.balances.set_balances(shard, per_shard.get(shard.tag, {}))
    await _restore_holds(app, tenant_id)
    report.users += len(sums)
    now_s = app.clock() // 1000
    bonus_rows = await stores.ledger.bonuses(tenant_id)
    earned: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
    for row in bonus_rows:
        tag = row.attributes.get("bonus", "")
        if tag:
            earned.setdefault((row.event_id, row.role, row.user_id), []).append((tag, row.points))
    # Covered days first: the replay's runs (best streak) read them.
    freezes = await _restore_covers(app, tenant_id, bonus_rows)
    await _replay_entries(app, tenant_id, now_s, report, earned)
    await _restore_identities(app, tenant_id, now_s, per_shard)
    await _restore_progress(app, tenant_id, bonus_rows, now_s, freezes)
    report.tenants += 1
    log.info("rebuilt tenant %s: %d users, %d entries", tenant_id, len(sums), report.entries)


async def _restore_holds(app: App, tenant_id: str) -> None:
    """The farming holds, from PostgreSQL: who each open flag holds; what
    each flag holds of each user (the ledger's held rows by flag, so that a
    decided flag the pass has yet to settle moves exactly its own); and the
    settlement records of the flags the ledger shows settled (a settlement
    never runs twice, a settled flag never holds again)."""
    stores = app.stores
    shard_of = stores.topology.user_shard
    holds: dict[str, dict[str, int]] = {}
    for flag_id, user in await stores.farming.holding(tenant_id):
        holds.setdefault(shard_of(tenant_id, user).tag, {}).setdefault(user, flag_id)
    shares: dict[str, dict[tuple[str, int], int]] = {}
    for (user, flag_id), points in (await stores.ledger.held_by_flag(tenant_id)).items():
        shares.setdefault(shard_of(tenant_id, user).tag, {})[(user, flag_id)] = points
    # Settled: as PostgreSQL recorded it, and as the ledger shows it (a
    # settlement that ran in Redis but was not recorded yet).
    settled: dict[str, dict[tuple[str, int], int]] = {}
    recorded = {(u, f): p for f, u, p in await stores.farming.settled_flags(tenant_id)}
    recorded.update(await stores.ledger.settlements(tenant_id))
    for (user, flag_id), points in recorded.items():
        settled.setdefault(shard_of(tenant_id, user).tag, {})[(user, flag_id)] = points
    for shard in stores.topology.tenant_shards(tenant_id):
        await stores.holds.restore(shard, holds.get(shard.tag, {}), shares.get(shard.tag, {}),
                                   settled.get(shard.tag, {}))  # fmt: skip


async def _replay_entries(
    app: App,
    tenant_id: str,
    now_s: int,
    report: RebuildReport,
    earned: dict[tuple[str, str, str], list[tuple[str, int]]],
) -> None:
    stores = app.stores
    chunk: list[RestoreOp] = []
    async for row in stores.ledger.entries(tenant_id):
        report.entries += 1
        change = restoring_change(row, now_s)
        if change is not None:
            await stores.balances.change(change, restore=True)
            continue
        restore = _restore_op(app, row, now_s)
        if restore is not None:
            bonuses = earned.get((row.event_id, row.role, row.user_id))
            if bonuses:
                # The dedup record names them: a replay answers with them.
                restore = replace(restore, bonuses=tuple(bonuses))
            chunk.append(restore)
        if len(chunk) >= _RESTORE_CHUNK:
            await stores.awards.restore(chunk)
            chunk = []
    if chunk:
        await stores.awards.restore(chunk)


async def _restore_covers(app: App, tenant_id: str, bonus_rows: list[LedgerRow]) -> dict[str, int]:
    """Streak days a freeze covered (bonus rows "freeze.<day>" not given back
    by a "freeze-back.<day>"), set in the cover bitmaps; returns the freezes
    each user holds, replaying grants (capped at the most held), uses and
    returns in ledger order."""
    tenant = app.engine.tenant(tenant_id)
    rule = tenant.part(STREAK) if tenant is not None else None
    if rule is None:
        return {}
    calendar = tenant.calendar if tenant is not None else None
    covered: dict[str, set[int]] = {}
    held: dict[str, int] = {}
    for row in bonus_rows:
        tag, user = row.attributes.get("bonus", ""), row.user_id
        kind, _, text = tag.partition(".")
        day = freeze_day(text) if kind in ("freeze", "freeze-back") else None
        # Tags name dates: numbered by today's calendar, even if it was edited.
        ordinal = calendar.ordinal(day) if calendar is not None and day is not None else None
        if kind == "freeze" and day is not None:
            if ordinal is not None:
                covered.setdefault(user, set()).add(ordinal)
            held[user] = max(0, held.get(user, 0) - 1)
        elif kind == "freeze-back" and day is not None:
            if ordinal is not None:
                covered.get(user, set()).discard(ordinal)
            held[user] = min(rule.freezes_max, held.get(user, 0) + 1)
        if granted := row.attributes.get("freezes"):
            held[user] = min(rule.freezes_max, held.get(user, 0) + int(granted))
    by_shard: dict[Shard, list[tuple[str, str, int]]] = {}
    for user, days in covered.items():
        shard = app.stores.topology.user_shard(tenant_id, user)
        by_shard.setdefault(shard, []).extend((user, COVER, d) for d in sorted(days))
    for shard, bits in by_shard.items():
        await app.stores.balances.restore_bits(shard, bits, STREAK_KEEP_S)
    return held


async def _restore_progress(
    app: App,
    tenant_id: str,
    bonus_rows: list[LedgerRow],
    now_s: int,
    freezes: dict[str, int],
) -> None:
    """Badges from the bonus rows that granted them, and every task the ledger
    shows done in a period still open counted as done: its progress may not
    come back from award rows (a peak's feeds pay nothing, a target raised
    since), and the reward must never be paid again."""
    tenant = app.engine.tenant(tenant_id)
    if tenant is None:
        return
    tasks = tenant.part(TASKS)
    stores = app.stores
    badges: dict[Shard, dict[str, dict[str, int]]] = {}
    floors: dict[Shard, list[tuple[PeriodRef, str, str, int]]] = {}
    for row in bonus_rows:
        shard = stores.topology.user_shard(tenant_id, row.user_id)
        if badge := row.attributes.get("badge"):
            owned = badges.setdefault(shard, {}).setdefault(row.user_id, {})
            owned[badge] = min(owned.get(badge, row.occurred_at_ms), row.occurred_at_ms)
        tag = row.attributes.get("bonus", "")
        task = tasks.get(tag.split(".")[1]) if tag.startswith("task.") else None
        # Once-bonuses paid stay marked (a threshold crossed again pays
        # nothing): a task's in its period, a level's or a streak's ever.
        if tag.startswith(("task.", "level.", "streak.")):
            ref = app.engine.period(
                tenant, task.period if task else Period.EVER, row.occurred_at_ms
            )
            floors.setdefault(shard, []).append((ref, row.user_id, f"!{tag}", 1))
        if task is None or task.per_attribute:
            continue
        ref = app.engine.period(tenant, task.period, row.occurred_at_ms)
        if tag == task_tag(task, ref.key):
            # A peak's completing report is on the row (its quantity).
            floor = max(task.at_least, row.quantity if task.measure is Measure.PEAK else 0)
            floors.setdefault(shard, []).append((ref, row.user_id, task_counter(task.id), floor))
    ever = app.engine.period(tenant, Period.EVER, now_s * 1000)
    for user, n in freezes.items():
        if n:
            shard = stores.topology.user_shard(tenant_id, user)
            floors.setdefault(shard, []).append((ever, user, FREEZES, n))
    for shard in set(badges) | set(floors):
        await stores.balances.restore_progress(
            shard, badges.get(shard, {}), floors.get(shard, []), now_s
        )


async def _restore_identities(
    app: App, tenant_id: str, now_s: int, per_shard: dict[str, dict[str, BalanceView]]
) -> None:
    # An event whose first credit was not paid (capped) but whose
    # second was has no ledger row for its identity record: restore
    # that record as CAPPED, so replays stay duplicates. For an
    # `actor_gates` action the actor's credit was awarded and paid
    # nothing (a thanks card's sender): restore it as AWARDED with its
    # counters, so the sender's budget stays used.
    stores = app.stores
    identities = [
        r for row in await stores.ledger.target_only(tenant_id)
        if (r := _identity_op(app, row, now_s, per_shard)) is not None
    ]  # fmt: skip
    for start in range(0, len(identities), _RESTORE_CHUNK):
        await stores.awards.restore(identities[start : start + _RESTORE_CHUNK])
