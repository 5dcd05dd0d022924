"""Catalog administration behind AdminService: create, update and disable
items, with the store's refusals turned into errors that say what to fix;
each change is written with the call's audit row in one transaction."""

from __future__ import annotations

from datetime import datetime

from pointsd.service import audit
from pointsd.service.app import App
from pointsd.service.errors import AlreadyExists, Conflict, NotFound
from pointsd.storage.errors import RecordChanged, RecordExists, RecordMissing
from pointsd.storage.postgres.catalog import Item

__all__ = ["create_item", "disable_item", "update_item"]


async def create_item(app: App, item: Item) -> Item:
    try:
        return await app.stores.catalog.create_item(item, audit.effect_row())
    except RecordExists:
        raise AlreadyExists(f"item.item_id: {item.item_id!r} exists already") from None


async def update_item(app: App, item: Item, expected_updated_at: datetime | None) -> Item:
    """Replace an item; with `expected_updated_at`, only if it is unchanged."""
    try:
        return await app.stores.catalog.update_item(item, expected_updated_at, audit.effect_row())
    except RecordMissing:
        raise NotFound(f"item.item_id: no item {item.item_id!r}") from None
    except RecordChanged:
        raise Conflict(
            f"item.updated_at: {item.item_id!r} changed since it was read (a redemption "
            "or another update); read it again and reapply the change"
        ) from None


async def disable_item(app: App, tenant_id: str, item_id: str) -> Item:
    try:
        return await app.stores.catalog.set_enabled(tenant_id, item_id, False, audit.effect_row())
    except RecordMissing:
        raise NotFound(f"item_id: no item {item_id!r}") from None
