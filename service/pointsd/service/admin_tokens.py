"""AdminService: API tokens and the audit trail (CreateToken, ListTokens,
RotateToken, RevokeToken, ListAudit). Validate, call the commands
(service/pointsd/service/api_tokens.py) or the audit reads
(service/pointsd/service/audit.py), convert. Token changes are audited;
the two reads are not."""

from __future__ import annotations

from datetime import datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from pointsd.service import api_tokens, audit
from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.app import App
from pointsd.service.auth import current_caller
from pointsd.service.errors import PermissionDenied, clip
from pointsd.service.rpc import Ctx, admin_mixin, unary
from pointsd.service.validation import InvalidField, check_id, check_text, timestamp_of
from pointsd.storage.postgres.audit import AuditEntry, AuditFilter
from pointsd.storage.postgres.tokens import ApiToken

__all__ = ["AUDIT_PAGE_MAX", "TokenAdmin", "audit_record_to_pb", "token_info_to_pb"]

AUDIT_PAGE_MAX = 500
_CALLER_CHARS_MAX = 256


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def token_info_to_pb(t: ApiToken, now: datetime) -> pb.TokenInfo:
    return pb.TokenInfo(
        token_id=t.token_id, name=t.name, roles=list(t.roles), tenants=list(t.tenants or ()),
        all_tenants=t.tenants is None, created_at=_ts(t.created_at), expires_at=_ts(t.expires_at),
        revoked_at=_ts(t.revoked_at), replaced_by=t.replaced_by or "",
        state=api_tokens.state_of(t, now),
    )  # fmt: skip


def audit_record_to_pb(e: AuditEntry) -> pb.AuditRecord:
    return pb.AuditRecord(
        audit_id=e.audit_id, occurred_at=_ts(e.occurred_at), caller=e.caller,
        credential=e.credential, rpc=e.rpc, tenant_id=e.tenant_id, request_json=e.request_json,
        outcome=e.outcome, message=e.message,
    )  # fmt: skip


class TokenAdmin:
    app: App

    @unary
    @admin_mixin
    @audit.audited
    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Ctx
    ) -> pb.CreateTokenResponse:
        if request.all_tenants and request.tenants:
            raise InvalidField("tenants", "leave empty with all_tenants set, or unset all_tenants")
        if not request.all_tenants and not request.tenants:
            raise InvalidField("tenants", "name at least one tenant, or set all_tenants")
        expires = (
            timestamp_of(request.expires_at, "expires_at")
            if request.HasField("expires_at")
            else None
        )
        now = api_tokens.now_of(self.app)
        token, row = await api_tokens.commands(self.app).create(
            name=request.name, roles=list(request.roles),
            tenants=None if request.all_tenants else list(request.tenants),
            expires_at=expires, now=now,
        )  # fmt: skip
        return pb.CreateTokenResponse(token=token, info=token_info_to_pb(row, now))

    @unary
    @admin_mixin
    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Ctx
    ) -> pb.ListTokensResponse:
        now = api_tokens.now_of(self.app)
        rows = await api_tokens.commands(self.app).list_tokens(
            include_inactive=request.include_inactive, now=now
        )
        return pb.ListTokensResponse(tokens=[token_info_to_pb(t, now) for t in rows])

    @unary
    @admin_mixin
    @audit.audited
    async def RotateToken(
        self, request: pb.RotateTokenRequest, context: Ctx
    ) -> pb.RotateTokenResponse:
        api_tokens.check_token_id(request.token_id)
        if not 0 <= request.grace_s <= api_tokens.GRACE_S_MAX:
            raise InvalidField(
                "grace_s",
                f"must be between 0 and {api_tokens.GRACE_S_MAX} (30 days), got {request.grace_s}",
            )
        now = api_tokens.now_of(self.app)
        token, old, new = await api_tokens.commands(self.app).rotate(
            request.token_id, grace=timedelta(seconds=request.grace_s), now=now
        )
        return pb.RotateTokenResponse(
            token=token, old=token_info_to_pb(old, now), new=token_info_to_pb(new, now)
        )

    @unary
    @admin_mixin
    @audit.audited
    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Ctx) -> pb.TokenInfo:
        api_tokens.check_token_id(request.token_id)
        now = api_tokens.now_of(self.app)
        row = await api_tokens.commands(self.app).revoke(request.token_id, now=now)
        return token_info_to_pb(row, now)

    @unary
    @admin_mixin
    async def ListAudit(self, request: pb.ListAuditRequest, context: Ctx) -> pb.ListAuditResponse:
        check_text("caller", request.caller, max_chars=_CALLER_CHARS_MAX)
        check_id("tenant_id", request.tenant_id, required=False)
        if request.rpc and request.rpc not in audit.ADMIN_RPCS:
            raise InvalidField(
                "rpc", f"{clip(request.rpc)!r} is not an AdminService method, e.g. AdjustPoints"
            )
        since = timestamp_of(request.since, "since") if request.HasField("since") else None
        until = timestamp_of(request.until, "until") if request.HasField("until") else None
        if since is not None and until is not None and until <= since:
            raise InvalidField("until", "must lie after since")
        size = request.page_size or 50
        if not 1 <= size <= AUDIT_PAGE_MAX:
            raise InvalidField("page_size", f"must be between 1 and {AUDIT_PAGE_MAX}, got {size}")
        scope = current_caller().tenants
        if scope is not None and request.tenant_id and request.tenant_id not in scope:
            raise PermissionDenied(
                f"token {current_caller().name!r} may not read the audit trail of tenant "
                f"{clip(request.tenant_id)!r}"
            )
        where = AuditFilter(
            caller=request.caller, tenant_id=request.tenant_id, rpc=request.rpc,
            since=since, until=until, tenants=scope,
        )  # fmt: skip
        rows, next_token = await audit.list_audit(self.app, where, size, request.page_token)
        return pb.ListAuditResponse(
            records=[audit_record_to_pb(e) for e in rows], next_page_token=next_token
        )
