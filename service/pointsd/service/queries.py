"""Reads behind the read RPCs: validated arguments in, domain values out.

Handlers validate requests and convert results; these functions are the
only path from a read RPC to a store, and the only users of page tokens
(signed and bound to their query, service/pointsd/service/tokens.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from pointsd.service.app import App
from pointsd.service.boards import BoardQuery
from pointsd.service.domain import TIME_MS_MAX, Period
from pointsd.service.rules import EARNED, TenantRules
from pointsd.service.validation import InvalidField
from pointsd.storage.entries import LedgerRow
from pointsd.storage.postgres.catalog import Item, Redemption
from pointsd.storage.postgres.winners import WinnersRecord
from pointsd.storage.redis import BalanceView
from pointsd.storage.redis.boards import Around, Ranking

T = TypeVar("T")

__all__ = [
    "BalanceNow",
    "Page",
    "around",
    "balance",
    "item",
    "items",
    "ledger",
    "redemptions",
    "rewards",
    "thanks",
    "top",
    "winners",
]


@dataclass(frozen=True, slots=True)
class BalanceNow:
    view: BalanceView
    # The tenant's day (YYYY-MM-DD) earned_in_period counts.
    day: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    rows: list[T]
    next_token: str


async def balance(app: App, tenant: TenantRules, user_id: str) -> BalanceNow:
    today = app.engine.period(tenant, Period.DAY, app.clock())
    view = await app.stores.balances.get(tenant.tenant_id, user_id, today, EARNED)
    return BalanceNow(view, today.key)


async def ledger(app: App, tenant_id: str, user_id: str, size: int, token: str) -> Page[LedgerRow]:
    """The user's entries, newest first."""
    query = (tenant_id, user_id)
    cursor = await _row_cursor(app, "ListLedger", query, token)
    page = await app.stores.ledger.page(tenant_id, user_id, size, cursor)
    return Page(page.rows, _row_token(app, "ListLedger", query, page.next_cursor))


async def thanks(
    app: App, tenant_id: str, department_id: str, user_id: str, size: int, token: str
) -> Page[LedgerRow]:
    """Thanks cards (their receivers' award rows), newest first: the
    tenant's, a department's or a user's (at most one of the two)."""
    query = (tenant_id, department_id, user_id)
    cursor = await _row_cursor(app, "ListThanks", query, token)
    page = await app.stores.ledger.thanks(
        tenant_id, size, cursor, department_id=department_id, user_id=user_id
    )
    return Page(page.rows, _row_token(app, "ListThanks", query, page.next_cursor))


async def _row_cursor(
    app: App, kind: str, query: tuple[str, ...], token: str
) -> tuple[int, int] | None:
    """The (occurred_at ms, row id) a ledger page token carries; None without one."""
    if not token:
        return None
    found = await app.tokens.decode(kind, query, token)
    try:
        at, row = int(found["o"]), int(found["i"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise InvalidField("page_token", f"is not a token {kind} returned") from None
    if not (0 <= at <= TIME_MS_MAX and 0 <= row < 2**63):
        raise InvalidField("page_token", f"is not a token {kind} returned")
    return (at, row)


def _row_token(app: App, kind: str, query: tuple[str, ...], cursor: tuple[int, int] | None) -> str:
    return app.tokens.encode(kind, query, {"o": cursor[0], "i": cursor[1]}) if cursor else ""


async def top(app: App, q: BoardQuery, offset: int, limit: int) -> Ranking:
    return await app.stores.boards.top(q.tenant.tenant_id, q.ref, offset, limit, q.summed)


async def around(app: App, q: BoardQuery, member: str, neighbours: int) -> Around | None:
    return await app.stores.boards.around(q.tenant.tenant_id, q.ref, member, neighbours, q.summed)


async def winners(
    app: App, q: BoardQuery, period_key: str, size: int, token: str
) -> Page[WinnersRecord]:
    """Recorded winners of the board's closed periods, newest first."""
    query = (q.tenant.tenant_id, q.board.name, q.ref.kind.value, q.ref.scope)
    before = ""
    if token:
        cursor = await app.tokens.decode("ListWinners", query, token)
        key = cursor.get("k")
        if not isinstance(key, str):
            raise InvalidField("page_token", "is not a token ListWinners returned")
        before = key
    records = await app.stores.hall_of_fame.list(
        *query, only_key=period_key, before_key=before, limit=size + 1
    )
    more = len(records) > size
    records = records[:size]
    next_token = (
        app.tokens.encode("ListWinners", query, {"k": records[-1].period_key}) if more else ""
    )
    return Page(records, next_token)


async def item(app: App, tenant_id: str, item_id: str) -> Item | None:
    return await app.stores.catalog.get_item(tenant_id, item_id)


async def items(app: App, tenant_id: str, *, include_disabled: bool) -> list[Item]:
    return await app.stores.catalog.list_items(tenant_id, include_disabled=include_disabled)


async def rewards(app: App, tenant_id: str, user_id: str) -> list[tuple[Item, int | None]]:
    """What can be redeemed now, and (for a user) how many more of each the
    user's limit allows (None: no limit, or no user asked about)."""
    now = datetime.fromtimestamp(app.clock() / 1000, tz=UTC)
    found = [
        i for i in await app.stores.catalog.list_items(tenant_id, include_disabled=False)
        if not i.inactive_reason(now) and (i.stock is None or i.stock > 0)
    ]  # fmt: skip
    if not user_id:
        return [(i, None) for i in found]
    keys = {
        i.item_id: key for i in found if (key := app.redemptions.limit_period_key(tenant_id, i))
    }
    used = await app.stores.catalog.used_quantities(tenant_id, user_id, keys)
    return [
        (i, None if i.per_user_limit is None else max(0, i.per_user_limit - used.get(i.item_id, 0)))
        for i in found
    ]


async def redemptions(
    app: App, tenant_id: str, user_id: str, item_id: str, size: int, token: str
) -> Page[Redemption]:
    """Redemptions of a user and/or an item, newest first."""
    query = (tenant_id, user_id, item_id)
    before: tuple[datetime, str] | None = None
    if token:
        cursor = await app.tokens.decode("ListRedemptions", query, token)
        try:
            before = (datetime.fromisoformat(cursor["at"]), str(cursor["id"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidField("page_token", "is not a token ListRedemptions returned") from None
    rows = await app.stores.catalog.list_redemptions(
        tenant_id, user_id=user_id, item_id=item_id, limit=size + 1, before=before
    )
    more = len(rows) > size
    rows = rows[:size]
    next_token = ""
    if more:
        last = rows[-1]
        next_token = app.tokens.encode(
            "ListRedemptions", query, {"at": last.created_at.isoformat(), "id": last.redemption_id}
        )
    return Page(rows, next_token)
