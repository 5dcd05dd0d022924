"""Spending points: redemptions, refunds and adjustments.

Where state lives. A balance lives on the user's Redis shard (the hot path
changes it); stock, the catalog and redemption records live in PostgreSQL.
No single transaction spans both, so a redemption is a short saga whose every
step is idempotent and whose record, written first, always says what is left
to do:

  1. PostgreSQL, one transaction, item row locked: check the active window,
     the per-user limit and the stock; take the stock; insert the redemption
     as `pending` (or as `failed` with the reason). The request id is unique
     per tenant: a replay finds this record instead of creating another.
  2. Redis, balance.lua on the user's shard: spend the points unless that
     would go below zero, keyed by the redemption id (a replay is a
     duplicate); the spend's ledger entry goes to the outbox atomically.
  3. PostgreSQL: `pending -> completed`, or `pending -> failed` with the
     stock given back in the same transaction.

A crash after 1 leaves a `pending` record holding stock with nothing spent;
after 2, a `pending` record whose points are spent. Either way the record
exists and says `pending`; any caller replaying the request id, or the
recovery sweep (every POINTS_REDEEM_RECOVERY_INTERVAL_S, for records idle
POINTS_REDEEM_RECOVERY_AFTER_S), runs steps 2-3 again: step 2 then either
spends (first time) or reports the earlier spend, so the saga completes
exactly once. Hence: no points spent without a redemption record, no stock
taken without the points spent once the record is closed, never a negative
balance (step 2 is atomic), never oversold stock and never past a per-user
limit (step 1 is serialized per item).

Refunds walk `completed -> refunding -> refunded` the same way: the points
come back through balance.lua keyed by the redemption (once), the stock in the
transaction that closes the record.

Audit (service/pointsd/service/audit.py): a refund's audit row is written in
the transaction of `completed -> refunding`, the step that commits to it, as
STARTED, and settled when the call ends. An adjustment changes only Redis, so
its row is written as STARTED before the balance change: no adjustment
without its row (docs/security.md#audit-trail).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pointsd.service import audit
from pointsd.service.clock import Clock
from pointsd.service.domain import Period, StoreCode, key_part
from pointsd.service.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Overloaded,
    ShardBusy,
)
from pointsd.service.periodic import every
from pointsd.service.rules import LEVELS, LevelRules, RulesEngine
from pointsd.service.rules.mechanics.streaks import FREEZES, STREAK
from pointsd.service.rules.periods import period_key
from pointsd.storage.entries import KIND_ADJUST, KIND_REFUND, KIND_SPEND, LedgerRow, entry_data
from pointsd.storage.errors import RecordMissing, StorageError
from pointsd.storage.postgres.catalog import Item, Redemption
from pointsd.storage.redis.balances import BalanceChange, ChangeResult
from pointsd.storage.stores import Stores

__all__ = ["Adjustment", "Redemptions", "restoring_change"]

log = logging.getLogger("pointsd.redeem")

# Balance-change outcomes are remembered this long (spends, refunds, and the
# idempotency window of AdjustPoints).
CHANGE_RETENTION_S = 30 * 86_400
QUANTITY_MAX = 100


def _fingerprint(*parts: object) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).hexdigest()


def _check(result: ChangeResult) -> None:
    if result.code is StoreCode.BACKPRESSURE:
        raise Overloaded("the ledger outbox is full; retry with backoff")
    if result.code is StoreCode.MAINTENANCE:
        raise ShardBusy("a rebuild of this tenant's state is running; retry shortly")


def restoring_change(row: LedgerRow, now_s: int) -> BalanceChange | None:
    """For `pointsd rebuild`: the change a spend, refund or adjustment ledger row
    came from, so its dedup record can be restored (replays stay no-ops)."""
    if row.kind in (KIND_SPEND, KIND_REFUND):
        fingerprint = _fingerprint(row.event_id, abs(row.points))
    elif row.kind == KIND_ADJUST:
        fingerprint = _fingerprint(row.user_id, row.points, row.reason)
    else:
        return None
    expires = row.recorded_at_ms // 1000 + CHANGE_RETENTION_S
    if expires <= now_s:
        return None
    return BalanceChange(
        tenant_id=row.tenant_id, user_id=row.user_id, entry_key=row.entry_key, kind=row.kind,
        delta=row.points, floor=False, fingerprint=fingerprint, dedup_expires_at_s=expires,
        data="", balance_after=row.balance_after,
    )  # fmt: skip


class Adjustment:
    def __init__(self, entry_id: str, points: int, balance: int, duplicate: bool) -> None:
        self.entry_id = entry_id
        self.points = points
        self.balance = balance
        self.duplicate = duplicate


class Redemptions:
    def __init__(
        self,
        stores: Stores,
        engine: RulesEngine,
        clock_ms: Clock,
        *,
        recovery_after_s: float = 30.0,
        recovery_interval_s: float = 10.0,
    ) -> None:
        self.stores = stores
        self.engine = engine
        self.clock_ms = clock_ms
        self.recovery_after_s = recovery_after_s
        self.recovery_interval_s = recovery_interval_s

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock_ms() / 1000, tz=UTC)

    def _limit_key(self, tenant_id: str) -> Callable[[str], str]:
        tenant = self.engine.tenant(tenant_id)
        assert tenant is not None
        now_ms = self.clock_ms()
        return lambda period: period_key(Period(period), now_ms, tenant.timezone)

    def limit_period_key(self, tenant_id: str, item: Item) -> str | None:
        return self._limit_key(tenant_id)(item.limit_period) if item.limit_period else None

    async def redeem(
        self, tenant_id: str, user_id: str, item_id: str, quantity: int, request_id: str
    ) -> Redemption:
        try:
            record, _created = await self.stores.catalog.begin_redemption(
                tenant_id, request_id, user_id, item_id, quantity, self._now(),
                self._limit_key(tenant_id), await self._refusal(tenant_id, user_id, quantity),
            )  # fmt: skip
        except RecordMissing:
            raise NotFound(f"item_id: tenant {tenant_id!r} has no item {item_id!r}") from None
        if (record.user_id, record.item_id, record.quantity) != (user_id, item_id, quantity):
            # What it was used for only when it was this user's own request.
            what = f" ({record.quantity} x {record.item_id!r})" if record.user_id == user_id else ""
            raise AlreadyExists(
                f"request_id: {request_id!r} was already used for another redemption{what}; "
                "use a new request_id for a new redemption"
            )
        if record.status == "pending":
            try:
                record = await self._spend(record)
            except (Overloaded, ShardBusy) as exc:
                # The record stays pending and the sweep finishes it: the caller
                # must learn the outcome by retrying this request id, not a new one.
                raise type(exc)(
                    f"{exc}; redemption {record.redemption_id} is pending and completes or "
                    "fails exactly once: retry with the same request_id to learn which"
                ) from None
        if record.status == "failed":
            raise FailedPrecondition(record.reason)
        return record

    async def _refusal(
        self, tenant_id: str, user_id: str, quantity: int
    ) -> Callable[[Item, int], Awaitable[str]]:
        """Why the rules refuse this user an item ("" when they do not), asked
        with the item locked: a minimum level not reached, or streak freezes
        past the most a user may hold (those held, read then, plus those
        pending in other redemptions: concurrent redemptions cannot pass it
        together). Levels never drop when points are spent, so a level read
        before the redemption still holds when it completes."""
        tenant = self.engine.tenant(tenant_id)

        async def refusal(item: Item, pending: int) -> str:
            # Most items need neither: no Redis read while the item is locked.
            if tenant is None or not (item.min_level or item.kind == "streak_freeze"):
                return ""
            ever = self.engine.period(tenant, Period.EVER, self.clock_ms())
            view = await self.stores.balances.progress(tenant_id, user_id, [(ever, FREEZES)])
            if item.kind == "streak_freeze":
                streak = tenant.part(STREAK)
                if streak is None or not streak.freezes_max:
                    return (
                        f"item {item.item_id!r} is a streak freeze, and the tenant's rules "
                        "have none"
                    )
                held = view.counters[0] + pending
                if held + quantity > streak.freezes_max:
                    return (
                        f"{user_id!r} holds {held} streak freeze(s); at most "
                        f"{streak.freezes_max} may be held, so {quantity} more cannot be redeemed"
                    )
            return _level_refusal(tenant.part(LEVELS), item, user_id, view.earned)

        return refusal

    async def _give_freezes(self, r: Redemption) -> None:
        """A completed streak-freeze redemption's freezes, once (idempotent by
        the redemption: the recovery sweep may run this again)."""
        item = await self.stores.catalog.get_item(r.tenant_id, r.item_id)
        tenant = self.engine.tenant(r.tenant_id)
        if item is None or item.kind != "streak_freeze" or tenant is None:
            return
        streak = tenant.part(STREAK)
        if streak is None:
            return
        now_ms = self.clock_ms()
        ever = self.engine.period(tenant, Period.EVER, now_ms)
        tag = f"freeze-bought.{r.redemption_id}"
        code, _given = await self.stores.balances.give_freezes(
            r.tenant_id, r.user_id, ever, FREEZES, r.quantity, streak.freezes_max,
            f"fz:{r.redemption_id}",
            entry_data(KIND_SPEND, f"r:{r.redemption_id}", r.user_id, r.redemption_id,
                       r.item_id, "", int(r.created_at.timestamp() * 1000), now_ms),
            f"{tag}\x1f{r.quantity} streak freeze(s) redeemed", CHANGE_RETENTION_S,
        )  # fmt: skip
        if code is StoreCode.MAINTENANCE:
            raise ShardBusy("a rebuild of this tenant's state is running; retry shortly")

    async def _redemption_change(
        self, r: Redemption, kind: str, key: str, delta: int, reason: str, occurred_ms: int
    ) -> ChangeResult:
        """Spend or give back a redemption's points, once per key (balance.lua)."""
        now_ms = self.clock_ms()
        result = await self.stores.balances.change(
            BalanceChange(
                tenant_id=r.tenant_id, user_id=r.user_id, entry_key=key, kind=kind, delta=delta,
                floor=delta < 0, final_refusal=delta < 0,
                fingerprint=_fingerprint(r.redemption_id, r.points),
                dedup_expires_at_s=now_ms // 1000 + CHANGE_RETENTION_S,
                data=entry_data(kind, key, r.user_id, r.redemption_id, r.item_id, reason,
                                occurred_ms or now_ms, now_ms),
            )
        )  # fmt: skip
        _check(result)
        return result

    async def _spend(self, r: Redemption) -> Redemption:
        """Steps 2-3 of the saga; safe to run any number of times."""
        result = await self._redemption_change(
            r, KIND_SPEND, f"r:{r.redemption_id}", -r.points,
            f"Redeemed {r.quantity} x {r.item_name}", int(r.created_at.timestamp() * 1000),
        )  # fmt: skip
        if result.code in (StoreCode.APPLIED, StoreCode.DUPLICATE):
            await self._give_freezes(r)
            return await self.stores.catalog.complete(r, result.balance)
        if result.code is StoreCode.INSUFFICIENT:
            return await self.stores.catalog.fail(
                r,
                f"insufficient points: {r.user_id!r} has {result.available_before}, "
                f"needs {r.points}",
            )
        raise StorageError(f"redemption {r.redemption_id}: unexpected spend result {result.code}")

    async def refund(self, tenant_id: str, redemption_id: str, reason: str) -> Redemption:
        try:
            r = await self.stores.catalog.start_refund(
                tenant_id, redemption_id, reason, audit.effect_row(started=True)
            )
        except RecordMissing:
            raise NotFound(f"redemption_id: no redemption {redemption_id!r}") from None
        if r.status in ("pending", "failed"):
            raise FailedPrecondition(
                f"only completed redemptions can be refunded; {redemption_id!r} is {r.status}"
            )
        if r.status == "refunding":
            r = await self._give_back(r)
        return r

    async def _give_back(self, r: Redemption) -> Redemption:
        await self._redemption_change(
            r, KIND_REFUND, f"rf:{r.redemption_id}", r.points,
            f"Refund of {r.quantity} x {r.item_name}: {r.refund_reason}", 0,
        )  # fmt: skip
        return await self.stores.catalog.finish_refund(r)

    async def adjust(
        self, tenant_id: str, user_id: str, points: int, reason: str, idempotency_key: str
    ) -> Adjustment:
        # Per user: the key is checked on the user's shard, so the same key for
        # two users cannot be told apart atomically; each gets its own entry.
        key = f"adj:{key_part(user_id)}:{key_part(idempotency_key)}"
        now_ms = self.clock_ms()
        # Before the change: if the row cannot be written, nothing happens.
        await audit.started()
        result = await self.stores.balances.change(
            BalanceChange(
                tenant_id=tenant_id, user_id=user_id, entry_key=key, kind=KIND_ADJUST,
                delta=points, floor=points < 0, fingerprint=_fingerprint(user_id, points, reason),
                dedup_expires_at_s=now_ms // 1000 + CHANGE_RETENTION_S,
                data=entry_data(KIND_ADJUST, key, user_id, idempotency_key, "adjustment",
                                reason, now_ms, now_ms),
            )
        )  # fmt: skip
        _check(result)
        if result.code is StoreCode.KEY_REUSED:
            raise AlreadyExists(
                f"idempotency_key: {idempotency_key!r} was already used for another adjustment"
            )
        if result.code is StoreCode.INSUFFICIENT:
            raise FailedPrecondition(
                f"points: deducting {-points} would take {user_id!r} below zero "
                f"(has {result.available_before})"
            )
        return Adjustment(key, points, result.balance, result.code is StoreCode.DUPLICATE)

    async def recover(self) -> int:
        """Finish redemptions and refunds a dead process left half-way."""
        done = 0
        # Only this deployment's tenants: another's records (a shared database)
        # are its own to finish, and must not fill the page.
        tenants = sorted(self.stores.topology.shards_by_tenant)
        for r in await self.stores.catalog.unfinished(tenants, self.recovery_after_s):
            try:
                if r.status == "pending":
                    await self._spend(r)
                elif r.status == "refunding":
                    await self._give_back(r)
                done += 1
            except (StorageError, Overloaded, ShardBusy) as exc:
                log.warning("recovering redemption %s failed, will retry: %s", r.redemption_id, exc)
                with contextlib.suppress(StorageError):
                    await self.stores.catalog.postpone(r)
        if done:
            log.info("recovered %d unfinished redemption(s)", done)
        return done

    async def run_recovery(self, stop: asyncio.Event) -> None:
        await every(self.recovery_interval_s, stop, self.recover, log, "redemption recovery")


def _level_refusal(levels: LevelRules | None, item: Item, user_id: str, earned: int) -> str:
    if not item.min_level:
        return ""
    level = levels.get(item.min_level) if levels is not None else None
    if levels is None or level is None:
        return (
            f"item {item.item_id!r} requires level {item.min_level!r}, which the tenant's "
            "rules do not define"
        )
    if earned >= level.min_points:
        return ""
    return (
        f"item {item.item_id!r} requires level {level.title} ({level.min_points} lifetime "
        f"points); {user_id!r} is {levels.at(earned).title} with {earned}"
    )
