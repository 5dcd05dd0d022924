"""Reward catalog and redemption messages: validation and conversion, and the
operator-facing points.v1.AdminService handlers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from service.api.points.v1 import points_pb2 as pb
from service.api.points.v1 import points_pb2_grpc as pb_grpc
from service.app import App
from service.boards import PERIODS
from service.domain import TIME_MS_MAX
from service.errors import AlreadyExists, Conflict, NotFound
from service.redeem import QUANTITY_MAX
from service.rpc import Ctx, unary
from service.validation import InvalidField, check_id, check_text
from storage.errors import RecordChanged, RecordExists, RecordMissing
from storage.postgres.catalog import Item, Redemption

__all__ = [
    "AdminServicer",
    "item_to_pb",
    "redemption_to_pb",
]

_KINDS = {pb.VIRTUAL: "virtual", pb.PHYSICAL: "physical", pb.BENEFIT: "benefit",
          pb.DONATION: "donation"}  # fmt: skip
_KIND_PB = {v: k for k, v in _KINDS.items()}
_PERIOD_PB = {v.value: k for k, v in PERIODS.items()}
_STATUS = {"pending": pb.PENDING, "completed": pb.COMPLETED, "failed": pb.FAILED,
           "refunding": pb.REFUNDING, "refunded": pb.REFUNDED}  # fmt: skip
COST_MAX = 1_000_000_000
# Far below bigint: stock given back by refunds can never overflow it.
STOCK_MAX = 1_000_000_000
ADJUST_MAX = 1_000_000
PAGE_MAX = 200


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def _dt(ts: Timestamp, field: str) -> datetime:
    # Item windows from 1970 to the year 9999.
    if not (0 <= ts.seconds <= TIME_MS_MAX // 1000 and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidField(field, "is not a valid timestamp between 1970 and 9999")
    return ts.ToDatetime(tzinfo=UTC)


def item_to_pb(item: Item) -> pb.Item:
    msg = pb.Item(
        tenant_id=item.tenant_id,
        item_id=item.item_id,
        name=item.name,
        description=item.description,
        kind=_KIND_PB[item.kind],
        cost=item.cost,
        per_user_limit=item.per_user_limit or 0,
        limit_period=_PERIOD_PB[item.limit_period] if item.limit_period else 0,  # type: ignore[arg-type]
        enabled=item.enabled,
    )
    if item.stock is not None:
        msg.stock = item.stock
    for name in ("starts_at", "ends_at", "created_at", "updated_at"):
        ts = _ts(getattr(item, name))
        if ts is not None:
            getattr(msg, name).CopyFrom(ts)
    return msg


def item_from_pb(msg: pb.Item, app: App) -> Item:
    """A validated catalog item; InvalidField names what to fix."""
    check_id("item.tenant_id", msg.tenant_id)
    if app.engine.tenant(msg.tenant_id) is None:
        raise InvalidField("item.tenant_id", f"unknown tenant {msg.tenant_id!r}")
    check_id("item.item_id", msg.item_id)
    check_text("item.name", msg.name, max_chars=200, required=True)
    check_text("item.description", msg.description, max_chars=2000, multiline=True)
    kind = _KINDS.get(msg.kind)
    if kind is None:
        raise InvalidField("item.kind", "is required: VIRTUAL, PHYSICAL, BENEFIT or DONATION")
    if not 1 <= msg.cost <= COST_MAX:
        raise InvalidField("item.cost", f"must be between 1 and {COST_MAX}, got {msg.cost}")
    stock = msg.stock if msg.HasField("stock") else None
    if stock is not None and not 0 <= stock <= STOCK_MAX:
        raise InvalidField(
            "item.stock", f"must be 0..{STOCK_MAX} (or unset for unlimited), got {stock}"
        )
    limit = msg.per_user_limit or None
    period = PERIODS.get(msg.limit_period)
    if limit is not None:
        if limit < 0:
            raise InvalidField("item.per_user_limit", f"must be >= 0, got {limit}")
        if period is None:
            raise InvalidField(
                "item.limit_period",
                "is required with a per_user_limit: DAY, WEEK, MONTH or ALL_TIME",
            )
    elif period is not None:
        raise InvalidField("item.limit_period", "must be unset without a per_user_limit")
    starts = _dt(msg.starts_at, "item.starts_at") if msg.HasField("starts_at") else None
    ends = _dt(msg.ends_at, "item.ends_at") if msg.HasField("ends_at") else None
    if starts is not None and ends is not None and ends <= starts:
        raise InvalidField("item.ends_at", "must be after starts_at")
    return Item(
        tenant_id=msg.tenant_id, item_id=msg.item_id, name=msg.name,
        description=msg.description, kind=kind, cost=msg.cost, stock=stock,
        per_user_limit=limit, limit_period=period.value if period else None,
        starts_at=starts, ends_at=ends, enabled=msg.enabled,
    )  # fmt: skip


def redemption_to_pb(r: Redemption) -> pb.Redemption:
    msg = pb.Redemption(
        redemption_id=r.redemption_id, tenant_id=r.tenant_id, request_id=r.request_id,
        user_id=r.user_id, item_id=r.item_id, item_name=r.item_name, quantity=r.quantity,
        points=r.points, status=_STATUS[r.status], reason=r.reason,
        balance_after=r.balance_after or 0, refund_reason=r.refund_reason,
    )  # fmt: skip
    msg.created_at.FromDatetime(r.created_at.astimezone(UTC))
    msg.updated_at.FromDatetime(r.updated_at.astimezone(UTC))
    return msg


def page_size(value: int) -> int:
    size = value or 50
    if not 1 <= size <= PAGE_MAX:
        raise InvalidField("page_size", f"must be between 1 and {PAGE_MAX}, got {size}")
    return size


def check_tenant(app: App, tenant_id: str) -> None:
    check_id("tenant_id", tenant_id)
    if app.engine.tenant(tenant_id) is None:
        raise InvalidField("tenant_id", f"unknown tenant {tenant_id!r}")


async def list_redemptions(
    app: App, tenant_id: str, user_id: str, item_id: str, size: int, token: str
) -> pb.ListRedemptionsResponse:
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
    return pb.ListRedemptionsResponse(
        redemptions=[redemption_to_pb(r) for r in rows],
        next_page_token=(
            app.tokens.encode(
                "ListRedemptions",
                query,
                {"at": rows[-1].created_at.isoformat(), "id": rows[-1].redemption_id},
            )
            if more
            else ""
        ),
    )


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    @unary
    async def CreateItem(self, request: pb.CreateItemRequest, context: Ctx) -> pb.Item:
        item = item_from_pb(request.item, self.app)
        try:
            return item_to_pb(await self.app.stores.catalog.create_item(item))
        except RecordExists:
            raise AlreadyExists(f"item.item_id: {item.item_id!r} exists already") from None

    @unary
    async def UpdateItem(self, request: pb.UpdateItemRequest, context: Ctx) -> pb.Item:
        item = item_from_pb(request.item, self.app)
        expected = (
            _dt(request.item.updated_at, "item.updated_at")
            if request.item.HasField("updated_at")
            else None
        )
        try:
            return item_to_pb(await self.app.stores.catalog.update_item(item, expected))
        except RecordMissing:
            raise NotFound(f"item.item_id: no item {item.item_id!r}") from None
        except RecordChanged:
            raise Conflict(
                f"item.updated_at: {item.item_id!r} changed since it was read (a redemption "
                "or another update); read it again and reapply the change"
            ) from None

    @unary
    async def DisableItem(self, request: pb.DisableItemRequest, context: Ctx) -> pb.Item:
        check_tenant(self.app, request.tenant_id)
        check_id("item_id", request.item_id)
        try:
            item = await self.app.stores.catalog.set_enabled(
                request.tenant_id, request.item_id, False
            )
        except RecordMissing:
            raise NotFound(f"item_id: no item {request.item_id!r}") from None
        return item_to_pb(item)

    @unary
    async def ListItems(self, request: pb.ListItemsRequest, context: Ctx) -> pb.ListItemsResponse:
        check_tenant(self.app, request.tenant_id)
        items = await self.app.stores.catalog.list_items(
            request.tenant_id, include_disabled=request.include_disabled
        )
        return pb.ListItemsResponse(items=[item_to_pb(i) for i in items])

    @unary
    async def ListRedemptions(
        self, request: pb.AdminListRedemptionsRequest, context: Ctx
    ) -> pb.ListRedemptionsResponse:
        check_tenant(self.app, request.tenant_id)
        check_id("item_id", request.item_id, required=False)
        check_id("user_id", request.user_id, required=False)
        return await list_redemptions(
            self.app, request.tenant_id, request.user_id, request.item_id,
            page_size(request.page_size), request.page_token,
        )  # fmt: skip

    @unary
    async def RefundRedemption(
        self, request: pb.RefundRedemptionRequest, context: Ctx
    ) -> pb.Redemption:
        check_tenant(self.app, request.tenant_id)
        check_id("redemption_id", request.redemption_id)
        check_text("reason", request.reason, max_chars=500)
        r = await self.app.redemptions.refund(
            request.tenant_id, request.redemption_id, request.reason
        )
        return redemption_to_pb(r)

    @unary
    async def AdjustPoints(
        self, request: pb.AdjustPointsRequest, context: Ctx
    ) -> pb.AdjustPointsResponse:
        check_tenant(self.app, request.tenant_id)
        check_id("user_id", request.user_id)
        check_id("idempotency_key", request.idempotency_key)
        if request.points == 0 or abs(request.points) > ADJUST_MAX:
            raise InvalidField(
                "points",
                f"must be non-zero and at most {ADJUST_MAX} either way, got {request.points}",
            )
        check_text("reason", request.reason, max_chars=500, required=True)
        done = await self.app.redemptions.adjust(
            request.tenant_id, request.user_id, request.points, request.reason,
            request.idempotency_key,
        )  # fmt: skip
        return pb.AdjustPointsResponse(
            entry_id=done.entry_id, points=done.points, balance=done.balance,
            duplicate=done.duplicate,
        )  # fmt: skip


def quantity_of(value: int) -> int:
    quantity = value or 1
    if not 1 <= quantity <= QUANTITY_MAX:
        raise InvalidField("quantity", f"must be between 1 and {QUANTITY_MAX}, got {quantity}")
    return quantity


def reward_remaining(item: Item, used: dict[str, int]) -> dict[str, Any]:
    if item.per_user_limit is None:
        return {}
    return {"user_remaining": max(0, item.per_user_limit - used.get(item.item_id, 0))}
