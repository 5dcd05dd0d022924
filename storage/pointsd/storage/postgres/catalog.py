"""Reward catalog and redemption records (PostgreSQL).

Stock and redemption state live here, durable and serialized per item: the
first step of a redemption locks the item row, checks the active window, the
per-user limit and the stock, takes the stock and inserts the redemption as
`pending`, all in one transaction. Points are spent afterwards in Redis (the
user's balance lives there); `complete` or `fail` (which returns the stock)
closes the record. A refund walks `completed -> refunding -> refunded`, the
stock coming back in the same transaction as the final status. See
service/pointsd/service/redeem.py for the whole saga and its recovery.

Admin changes (items, the start of a refund) take the call's audit row
(`audit`, postgres/audit.py) and write it in their own transaction: the
change and its record commit together or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from pointsd.storage.errors import RecordChanged, RecordExists, RecordMissing
from pointsd.storage.postgres.audit import AuditRow, record
from pointsd.storage.postgres.db import EngineStore

__all__ = ["CatalogStore", "Item", "Redemption"]

ACTIVE_STATUSES = ("pending", "completed", "refunding")


@dataclass(frozen=True, slots=True)
class Item:
    tenant_id: str
    item_id: str
    name: str
    description: str
    kind: str
    cost: int
    stock: int | None
    per_user_limit: int | None
    limit_period: str | None
    starts_at: datetime | None
    ends_at: datetime | None
    enabled: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # A level id of the tenant's rules the user must have reached ("" = anyone).
    min_level: str = ""

    def inactive_reason(self, now: datetime) -> str:
        """Why the item cannot be redeemed at `now`, or "" if it can."""
        if not self.enabled:
            return f"item {self.item_id!r} is disabled"
        if self.starts_at is not None and now < self.starts_at:
            return f"item {self.item_id!r} can be redeemed from {self.starts_at.isoformat()}"
        if self.ends_at is not None and now >= self.ends_at:
            return f"item {self.item_id!r} could be redeemed until {self.ends_at.isoformat()}"
        return ""


@dataclass(frozen=True, slots=True)
class Redemption:
    redemption_id: str
    tenant_id: str
    request_id: str
    user_id: str
    item_id: str
    item_name: str
    quantity: int
    points: int
    status: str
    reason: str
    balance_after: int | None
    limit_period_key: str | None
    refund_reason: str
    created_at: datetime
    updated_at: datetime
    # Stock units step 1 took (0: none, the item was unlimited or the
    # redemption failed at once); None for records older than migration 0004.
    stock_taken: int | None = None


_ITEM_COLUMNS = (
    "tenant_id, item_id, name, description, kind, cost, stock, per_user_limit, limit_period, "
    "starts_at, ends_at, enabled, created_at, updated_at, min_level"
)
_REDEMPTION_COLUMNS = (
    "redemption_id, tenant_id, request_id, user_id, item_id, item_name, quantity, points, "
    "status, reason, balance_after, limit_period_key, refund_reason, created_at, updated_at, "
    "stock_taken"
)


def _item(row: Any) -> Item:
    return Item(*row)


def _redemption(row: Any) -> Redemption:
    return Redemption(*row)


class CatalogStore(EngineStore):
    # -- items -------------------------------------------------------------

    async def create_item(self, item: Item, audit: AuditRow | None = None) -> Item:
        async def work(conn: AsyncConnection) -> Item:
            row = (
                await conn.execute(
                    text(
                        f"INSERT INTO catalog_items ({_ITEM_COLUMNS}) VALUES (:tenant_id, "
                        ":item_id, :name, :description, :kind, :cost, :stock, :per_user_limit, "
                        ":limit_period, :starts_at, :ends_at, :enabled, now(), now(), :min_level) "
                        f"ON CONFLICT DO NOTHING RETURNING {_ITEM_COLUMNS}"
                    ),
                    _item_params(item),
                )
            ).first()
            if row is None:
                raise RecordExists(f"item {item.item_id!r} already exists")
            if audit is not None:
                await record(conn, audit)
            return _item(row)

        result: Item = await self._run(work)
        return result

    async def update_item(
        self, item: Item, expected_updated_at: datetime | None = None, audit: AuditRow | None = None
    ) -> Item:
        """Replace an item's definition. With `expected_updated_at` (the value
        the caller read), only if nobody changed it since: an absolute stock
        written from a stale read would undo redemptions made meanwhile."""

        async def work(conn: AsyncConnection) -> Item:
            row = (
                await conn.execute(
                    text(
                        "UPDATE catalog_items SET name = :name, description = :description, "
                        "kind = :kind, cost = :cost, stock = :stock, "
                        "per_user_limit = :per_user_limit, limit_period = :limit_period, "
                        "starts_at = :starts_at, ends_at = :ends_at, enabled = :enabled, "
                        "min_level = :min_level, updated_at = now() "
                        "WHERE tenant_id = :tenant_id AND item_id = :item_id "
                        "AND (CAST(:expected AS timestamptz) IS NULL OR updated_at = :expected) "
                        f"RETURNING {_ITEM_COLUMNS}"
                    ),
                    {**_item_params(item), "expected": expected_updated_at},
                )
            ).first()
            if row is None:
                exists = (
                    await conn.execute(
                        text("SELECT 1 FROM catalog_items WHERE tenant_id = :t AND item_id = :i"),
                        {"t": item.tenant_id, "i": item.item_id},
                    )
                ).first()
                if exists:
                    raise RecordChanged(f"item {item.item_id!r} changed since it was read")
                raise RecordMissing(f"no item {item.item_id!r}")
            if audit is not None:
                await record(conn, audit)
            return _item(row)

        result: Item = await self._run(work)
        return result

    async def set_enabled(
        self, tenant_id: str, item_id: str, enabled: bool, audit: AuditRow | None = None
    ) -> Item:
        async def work(conn: AsyncConnection) -> Item:
            row = (
                await conn.execute(
                    text(
                        "UPDATE catalog_items SET enabled = :e, updated_at = now() "
                        "WHERE tenant_id = :t AND item_id = :i "
                        f"RETURNING {_ITEM_COLUMNS}"
                    ),
                    {"t": tenant_id, "i": item_id, "e": enabled},
                )
            ).first()
            if row is None:
                raise RecordMissing(f"no item {item_id!r}")
            if audit is not None:
                await record(conn, audit)
            return _item(row)

        result: Item = await self._run(work)
        return result

    async def get_item(self, tenant_id: str, item_id: str) -> Item | None:
        async def work(conn: AsyncConnection) -> Item | None:
            row = (
                await conn.execute(
                    text(
                        f"SELECT {_ITEM_COLUMNS} FROM catalog_items "
                        "WHERE tenant_id = :t AND item_id = :i"
                    ),
                    {"t": tenant_id, "i": item_id},
                )
            ).first()
            return _item(row) if row else None

        result: Item | None = await self._run(work, write=False)
        return result

    async def list_items(self, tenant_id: str, *, include_disabled: bool) -> list[Item]:
        async def work(conn: AsyncConnection) -> list[Item]:
            rows = await conn.execute(
                text(
                    f"SELECT {_ITEM_COLUMNS} FROM catalog_items WHERE tenant_id = :t "
                    "AND (:all OR enabled) ORDER BY cost, item_id"
                ),
                {"t": tenant_id, "all": include_disabled},
            )
            return [_item(r) for r in rows]

        result: list[Item] = await self._run(work, write=False)
        return result

    async def used_quantities(
        self, tenant_id: str, user_id: str, keys: dict[str, str]
    ) -> dict[str, int]:
        """Quantity the user holds per item in the period each item's limit uses
        (`keys`: item id -> period key)."""
        if not keys:
            return {}

        async def work(conn: AsyncConnection) -> dict[str, int]:
            rows = await conn.execute(
                text(
                    "SELECT item_id, limit_period_key, SUM(quantity) FROM redemptions "
                    "WHERE tenant_id = :t AND user_id = :u AND item_id = ANY(:items) "
                    "AND status IN ('pending', 'completed', 'refunding') "
                    "GROUP BY item_id, limit_period_key"
                ),
                {"t": tenant_id, "u": user_id, "items": list(keys)},
            )
            return {str(i): int(n) for i, pk, n in rows if keys.get(str(i)) == pk}

        result: dict[str, int] = await self._run(work, write=False)
        return result

    # -- redemptions -------------------------------------------------------

    async def begin_redemption(
        self,
        tenant_id: str,
        request_id: str,
        user_id: str,
        item_id: str,
        quantity: int,
        now: datetime,
        limit_period_key: Callable[[str], str],
        refusal: Callable[[Item, int], Awaitable[str]] | None = None,
    ) -> tuple[Redemption, bool]:
        """The record for `request_id`: created now (True) as `pending` with the
        stock taken, or as `failed` with the reason; or the existing one (False).
        `refusal(item, pending)`: the caller's own reason to refuse the item
        ("" for none), e.g. a level the user has not reached, asked while the
        item is locked; `pending` is what the user has of items of the same
        kind in redemptions not completed yet (streak freezes being given).

        Raises RecordMissing when the item does not exist.
        """

        async def work(conn: AsyncConnection) -> tuple[Redemption, bool]:
            found = await _by_request(conn, tenant_id, request_id)
            if found is not None:
                return found, False
            row = (
                await conn.execute(
                    text(
                        f"SELECT {_ITEM_COLUMNS} FROM catalog_items "
                        "WHERE tenant_id = :t AND item_id = :i FOR UPDATE"
                    ),
                    {"t": tenant_id, "i": item_id},
                )
            ).first()
            if row is None:
                raise RecordMissing(f"no item {item_id!r}")
            item = _item(row)
            reason = item.inactive_reason(now)
            if not reason and refusal is not None:
                reason = await refusal(item, await _pending_of_kind(conn, item, user_id))
            period_key = limit_period_key(item.limit_period) if item.limit_period else None
            if not reason and item.per_user_limit:
                used = int(
                    (
                        await conn.execute(
                            text(
                                "SELECT COALESCE(SUM(quantity), 0) FROM redemptions "
                                "WHERE tenant_id = :t AND item_id = :i AND user_id = :u "
                                "AND limit_period_key = :p "
                                "AND status IN ('pending', 'completed', 'refunding')"
                            ),
                            {"t": tenant_id, "i": item_id, "u": user_id, "p": period_key},
                        )
                    ).scalar_one()
                )
                if used + quantity > item.per_user_limit:
                    per = "ever" if item.limit_period == "ever" else f"per {item.limit_period}"
                    reason = (
                        f"limit reached: at most {item.per_user_limit} of {item.item_id!r} "
                        f"{per}; {used} already redeemed in {period_key}"
                    )
            if not reason and item.stock is not None and item.stock < quantity:
                reason = f"out of stock: {item.stock} left of {item.item_id!r}, {quantity} asked"
            status = "failed" if reason else "pending"
            inserted = (
                await conn.execute(
                    text(
                        f"INSERT INTO redemptions ({_REDEMPTION_COLUMNS}) VALUES (:id, :t, :r, "
                        ":u, :i, :name, :q, :points, :status, :reason, NULL, :pk, '', :now, now(), "
                        ":taken) "
                        f"ON CONFLICT (tenant_id, request_id) DO NOTHING "
                        f"RETURNING {_REDEMPTION_COLUMNS}"
                    ),
                    {
                        "id": uuid.uuid4().hex,
                        "t": tenant_id,
                        "r": request_id,
                        "u": user_id,
                        "i": item_id,
                        "name": item.name,
                        "q": quantity,
                        "points": item.cost * quantity,
                        "status": status,
                        "reason": reason,
                        "pk": period_key,
                        "now": now,
                        "taken": quantity if status == "pending" and item.stock is not None else 0,
                    },
                )
            ).first()
            if inserted is None:
                # The same request, committed while we waited for the item lock;
                # nothing was changed here, and READ COMMITTED lets us see it now.
                again = await _by_request(conn, tenant_id, request_id)
                assert again is not None
                return again, False
            if status == "pending" and item.stock is not None:
                await conn.execute(
                    text(
                        "UPDATE catalog_items SET stock = stock - :q, updated_at = now() "
                        "WHERE tenant_id = :t AND item_id = :i"
                    ),
                    {"q": quantity, "t": tenant_id, "i": item_id},
                )
            return _redemption(inserted), True

        result: tuple[Redemption, bool] = await self._run(work)
        return result

    async def complete(self, r: Redemption, balance_after: int) -> Redemption:
        """pending -> completed (the points are spent)."""
        return await self._move(r, "pending", "completed", balance_after=balance_after)

    async def fail(self, r: Redemption, reason: str) -> Redemption:
        """pending -> failed, the stock given back in the same transaction."""
        return await self._move(r, "pending", "failed", reason=reason, restock=True)

    async def start_refund(
        self, tenant_id: str, redemption_id: str, reason: str, audit: AuditRow | None = None
    ) -> Redemption:
        """completed -> refunding; a record in any other state is returned as
        is. `audit` is written in the same transaction whatever the state (the
        service settles its outcome). Raises RecordMissing for an unknown id."""

        async def work(conn: AsyncConnection) -> Redemption:
            found = await _by_id(conn, tenant_id, redemption_id)
            if found is None:
                raise RecordMissing(f"no redemption {redemption_id!r}")
            if found.status == "completed":
                # Exactly one caller moves it; the others read what it is now.
                row = (
                    await conn.execute(
                        text(
                            "UPDATE redemptions SET status = 'refunding', updated_at = now(), "
                            "refund_reason = :reason WHERE redemption_id = :id "
                            f"AND status = 'completed' RETURNING {_REDEMPTION_COLUMNS}"
                        ),
                        {"id": redemption_id, "reason": reason},
                    )
                ).first()
                moved = _redemption(row) if row else await _by_id(conn, tenant_id, redemption_id)
                assert moved is not None
                found = moved
            if audit is not None:
                await record(conn, audit)
            return found

        result: Redemption = await self._run(work)
        return result

    async def finish_refund(self, r: Redemption) -> Redemption:
        """refunding -> refunded, the stock given back in the same transaction."""
        return await self._move(r, "refunding", "refunded", restock=True)

    async def _move(
        self, r: Redemption, old: str, new: str, *, restock: bool = False, **fields: Any
    ) -> Redemption:
        """Change the status if it still is `old`; exactly one caller wins, the
        others get the record as it now is."""
        sets = ", ".join(f"{k} = :{k}" for k in fields)

        async def work(conn: AsyncConnection) -> Redemption:
            row = (
                await conn.execute(
                    text(
                        f"UPDATE redemptions SET status = :new, updated_at = now()"
                        f"{', ' + sets if sets else ''} WHERE redemption_id = :id "
                        f"AND status = :old RETURNING {_REDEMPTION_COLUMNS}"
                    ),
                    {"new": new, "old": old, "id": r.redemption_id, **fields},
                )
            ).first()
            if row is None:
                current = await _by_id(conn, r.tenant_id, r.redemption_id)
                assert current is not None
                return current
            moved = _redemption(row)
            # Exactly what step 1 took: an item made counted after it took
            # nothing must not gain stock from the give-back.
            taken = moved.quantity if moved.stock_taken is None else moved.stock_taken
            if restock and taken:
                await conn.execute(
                    text(
                        "UPDATE catalog_items SET stock = stock + :q, updated_at = now() "
                        "WHERE tenant_id = :t AND item_id = :i AND stock IS NOT NULL"
                    ),
                    {"q": taken, "t": r.tenant_id, "i": r.item_id},
                )
            return moved

        result: Redemption = await self._run(work)
        return result

    async def get(self, tenant_id: str, redemption_id: str) -> Redemption | None:
        async def work(conn: AsyncConnection) -> Redemption | None:
            return await _by_id(conn, tenant_id, redemption_id)

        result: Redemption | None = await self._run(work, write=False)
        return result

    async def list_redemptions(
        self,
        tenant_id: str,
        *,
        user_id: str = "",
        item_id: str = "",
        limit: int,
        before: tuple[datetime, str] | None,
    ) -> list[Redemption]:
        """Newest first, keyset-paged by (created_at, redemption_id)."""
        before_at, before_id = before or (datetime(9999, 1, 1, tzinfo=UTC), "")

        async def work(conn: AsyncConnection) -> list[Redemption]:
            rows = await conn.execute(
                text(
                    f"SELECT {_REDEMPTION_COLUMNS} FROM redemptions WHERE tenant_id = :t "
                    "AND (:u = '' OR user_id = :u) AND (:i = '' OR item_id = :i) "
                    "AND (created_at, redemption_id) < (:at, :rid) "
                    "ORDER BY created_at DESC, redemption_id DESC LIMIT :n"
                ),
                {
                    "t": tenant_id,
                    "u": user_id,
                    "i": item_id,
                    "at": before_at,
                    "rid": before_id or "\uffff",
                    "n": limit,
                },
            )
            return [_redemption(r) for r in rows]

        result: list[Redemption] = await self._run(work, write=False)
        return result

    async def unfinished(
        self, tenants: Sequence[str], idle_s: float, limit: int = 500
    ) -> list[Redemption]:
        """Pending and refunding records of `tenants` not touched for `idle_s`
        seconds (a process died mid-way), oldest first: the recovery sweep
        drives them to the end. Other tenants' records (a shared database)
        never fill the page. Idleness is elapsed time on PostgreSQL's clock,
        the clock every `updated_at` is written with."""

        async def work(conn: AsyncConnection) -> list[Redemption]:
            rows = await conn.execute(
                text(
                    f"SELECT {_REDEMPTION_COLUMNS} FROM redemptions "
                    "WHERE status IN ('pending', 'refunding') "
                    "AND updated_at < now() - make_interval(secs => :idle) "
                    "AND tenant_id = ANY(:ts) ORDER BY updated_at LIMIT :n"
                ),
                {"idle": idle_s, "ts": list(tenants), "n": limit},
            )
            return [_redemption(r) for r in rows]

        result: list[Redemption] = await self._run(work, write=False)
        return result

    async def postpone(self, r: Redemption) -> None:
        """Send a record the sweep could not finish to the back of its queue,
        so records behind it are not starved."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(
                text(
                    "UPDATE redemptions SET updated_at = now() "
                    "WHERE redemption_id = :id AND status = :s"
                ),
                {"id": r.redemption_id, "s": r.status},
            )

        await self._run(work)


async def _pending_of_kind(conn: AsyncConnection, item: Item, user_id: str) -> int:
    """Units of the user's pending redemptions of items of this item's kind."""
    if item.kind != "streak_freeze":
        return 0
    found = await conn.execute(
        text(
            "SELECT COALESCE(SUM(r.quantity), 0) FROM redemptions r JOIN catalog_items i "
            "ON i.tenant_id = r.tenant_id AND i.item_id = r.item_id "
            "WHERE r.tenant_id = :t AND r.user_id = :u AND r.status = 'pending' AND i.kind = :k"
        ),
        {"t": item.tenant_id, "u": user_id, "k": item.kind},
    )
    return int(found.scalar_one())


def _item_params(item: Item) -> dict[str, Any]:
    return {
        "tenant_id": item.tenant_id, "item_id": item.item_id, "name": item.name,
        "description": item.description, "kind": item.kind, "cost": item.cost,
        "stock": item.stock, "per_user_limit": item.per_user_limit,
        "limit_period": item.limit_period, "starts_at": item.starts_at,
        "ends_at": item.ends_at, "enabled": item.enabled, "min_level": item.min_level,
    }  # fmt: skip


async def _by_request(conn: AsyncConnection, tenant_id: str, request_id: str) -> Redemption | None:
    return await _redemption_where(conn, tenant_id, "request_id", request_id)


async def _by_id(conn: AsyncConnection, tenant_id: str, redemption_id: str) -> Redemption | None:
    return await _redemption_where(conn, tenant_id, "redemption_id", redemption_id)


async def _redemption_where(
    conn: AsyncConnection, tenant_id: str, column: str, value: str
) -> Redemption | None:
    """The tenant's redemption whose unique `column` (a constant) is `value`."""
    row = (
        await conn.execute(
            text(
                f"SELECT {_REDEMPTION_COLUMNS} FROM redemptions "
                f"WHERE tenant_id = :t AND {column} = :v"
            ),
            {"t": tenant_id, "v": value},
        )
    ).first()
    return _redemption(row) if row else None
