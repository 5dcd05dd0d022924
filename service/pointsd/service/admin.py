"""points.v1.AdminService handlers (operators: the catalog, redemptions,
refunds, manual adjustments; tokens and the audit trail in admin_tokens.py,
farming flags in admin_flags.py): validate, call, convert. Errors map to
statuses through service/pointsd/service/rpc.py like every handler's; every
handler that acts is `@audit.audited` (service/pointsd/service/audit.py)."""

from __future__ import annotations

from pointsd.service import audit, catalog, queries
from pointsd.service.admin_flags import FlagAdmin
from pointsd.service.admin_tokens import TokenAdmin
from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.app import App
from pointsd.service.convert import item_to_pb, redemption_to_pb
from pointsd.service.rpc import Ctx, unary
from pointsd.service.validation import (
    ADJUST_MAX,
    InvalidField,
    check_id,
    check_tenant,
    check_text,
    item_from_pb,
    page_size,
    timestamp_of,
)

__all__ = ["AdminServicer"]


class AdminServicer(TokenAdmin, FlagAdmin, pb_grpc.AdminServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    @unary
    @audit.audited
    async def CreateItem(self, request: pb.CreateItemRequest, context: Ctx) -> pb.Item:
        item = item_from_pb(request.item, self.app.engine)
        return item_to_pb(await catalog.create_item(self.app, item))

    @unary
    @audit.audited
    async def UpdateItem(self, request: pb.UpdateItemRequest, context: Ctx) -> pb.Item:
        item = item_from_pb(request.item, self.app.engine)
        expected = (
            timestamp_of(request.item.updated_at, "item.updated_at")
            if request.item.HasField("updated_at")
            else None
        )
        return item_to_pb(await catalog.update_item(self.app, item, expected))

    @unary
    @audit.audited
    async def DisableItem(self, request: pb.DisableItemRequest, context: Ctx) -> pb.Item:
        check_tenant(self.app.engine, request.tenant_id)
        check_id("item_id", request.item_id)
        return item_to_pb(await catalog.disable_item(self.app, request.tenant_id, request.item_id))

    @unary
    async def ListItems(self, request: pb.ListItemsRequest, context: Ctx) -> pb.ListItemsResponse:
        check_tenant(self.app.engine, request.tenant_id)
        items = await queries.items(
            self.app, request.tenant_id, include_disabled=request.include_disabled
        )
        return pb.ListItemsResponse(items=[item_to_pb(i) for i in items])

    @unary
    async def ListRedemptions(
        self, request: pb.AdminListRedemptionsRequest, context: Ctx
    ) -> pb.ListRedemptionsResponse:
        check_tenant(self.app.engine, request.tenant_id)
        check_id("item_id", request.item_id, required=False)
        check_id("user_id", request.user_id, required=False)
        page = await queries.redemptions(
            self.app, request.tenant_id, request.user_id, request.item_id,
            page_size(request.page_size), request.page_token,
        )  # fmt: skip
        return pb.ListRedemptionsResponse(
            redemptions=[redemption_to_pb(r) for r in page.rows], next_page_token=page.next_token
        )

    @unary
    @audit.audited
    async def RefundRedemption(
        self, request: pb.RefundRedemptionRequest, context: Ctx
    ) -> pb.Redemption:
        check_tenant(self.app.engine, request.tenant_id)
        check_id("redemption_id", request.redemption_id)
        check_text("reason", request.reason, max_chars=500)
        r = await self.app.redemptions.refund(
            request.tenant_id, request.redemption_id, request.reason
        )
        return redemption_to_pb(r)

    @unary
    @audit.audited
    async def AdjustPoints(
        self, request: pb.AdjustPointsRequest, context: Ctx
    ) -> pb.AdjustPointsResponse:
        check_tenant(self.app.engine, request.tenant_id)
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
