"""AdminService: farming flags held for review (ListFlags, ReleaseFlag,
VoidFlag). Validate, call the decision (service/pointsd/service/farming.py)
or the flag store's page, convert. The two decisions are audited; the read
is not.

A flag's `held_points` is what a person judging it wants to see: while its
settlement has not run, the points held under it now (read from Redis,
where awards are held); once it ran, what it moved (from PostgreSQL).
"""

from __future__ import annotations

from pointsd.service import audit, farming
from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.app import App
from pointsd.service.auth import current_caller
from pointsd.service.convert import timestamp
from pointsd.service.rpc import Ctx, admin_mixin, unary
from pointsd.service.validation import InvalidField, check_id, check_tenant, check_text
from pointsd.storage.postgres.farming import (
    NOTE_CHARS_MAX,
    OPEN,
    RELEASED,
    VOIDED,
    FindingRecord,
    FlagRecord,
)

__all__ = ["FLAG_PAGE_MAX", "FlagAdmin", "flag_to_pb", "flags_to_pb"]

FLAG_PAGE_MAX = 500

_STATES = {pb.FLAG_OPEN: OPEN, pb.FLAG_RELEASED: RELEASED, pb.FLAG_VOIDED: VOIDED}
_STATE_PB = {v: k for k, v in _STATES.items()}


def _finding_to_pb(f: FindingRecord) -> pb.FlagFinding:
    return pb.FlagFinding(
        signal=f.signal, period_key=f.period_key, counterparts=list(f.counterparts),
        evidence=f.evidence, found_at=timestamp(f.found_at_ms),
    )  # fmt: skip


def flag_to_pb(flag: FlagRecord, held_points: int) -> pb.Flag:
    msg = pb.Flag(
        flag_id=flag.flag_id, tenant_id=flag.tenant_id, user_id=flag.user_id,
        state=_STATE_PB.get(flag.state, pb.FLAG_STATE_UNSPECIFIED),
        opened_at=timestamp(flag.opened_at_ms),
        findings=[_finding_to_pb(f) for f in flag.findings], held_points=held_points,
        settled=flag.settled_at_ms is not None, decided_by=flag.decided_by, note=flag.note,
    )  # fmt: skip
    if flag.decided_at_ms is not None:
        msg.decided_at.CopyFrom(timestamp(flag.decided_at_ms))
    return msg


async def flags_to_pb(app: App, flags: list[FlagRecord]) -> list[pb.Flag]:
    """Flags as the API shows them: one not settled yet with the points held
    under it now (Redis, one round trip), a settled one with what its
    settlement moved."""
    pending = [(f.user_id, f.flag_id) for f in flags if f.settled_at_ms is None]
    held = await app.stores.holds.shares(flags[0].tenant_id, pending) if pending else {}
    return [flag_to_pb(f, held.get((f.user_id, f.flag_id), f.settled_points or 0)) for f in flags]


def _refused_token() -> InvalidField:
    return InvalidField("page_token", "is not a token ListFlags returned for this query")


async def _page(
    app: App, tenant_id: str, state: str | None, user_id: str, size: int, token: str
) -> tuple[list[FlagRecord], str]:
    """A page of flags, newest first, and the next page's token (signed and
    bound to the filters, like every page token of this service)."""
    query = (tenant_id, state or "", user_id)
    after: int | None = None
    if token:
        cursor = await app.tokens.decode("ListFlags", query, token)
        try:
            after = int(cursor["i"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise _refused_token() from None
        if not 0 < after < 2**63:
            raise _refused_token()
    rows, next_after = await app.stores.farming.page(
        tenant_id, state=state, user_id=user_id or None, limit=size, after_flag_id=after
    )
    next_token = (
        "" if next_after is None else app.tokens.encode("ListFlags", query, {"i": next_after})
    )
    return rows, next_token


class FlagAdmin:
    app: App

    @unary
    @admin_mixin
    async def ListFlags(self, request: pb.ListFlagsRequest, context: Ctx) -> pb.ListFlagsResponse:
        tenant = check_tenant(self.app.engine, request.tenant_id)
        user_id = check_id("user_id", request.user_id, required=False)
        state: str | None = None
        if request.state != pb.FLAG_STATE_UNSPECIFIED:
            state = _STATES.get(request.state)
            if state is None:
                raise InvalidField(
                    "state",
                    f"unknown value {request.state}: FLAG_OPEN, FLAG_RELEASED, FLAG_VOIDED, "
                    "or unset for every state",
                )
        size = request.page_size or 50
        if not 1 <= size <= FLAG_PAGE_MAX:
            raise InvalidField("page_size", f"must be between 1 and {FLAG_PAGE_MAX}, got {size}")
        rows, next_token = await _page(
            self.app, tenant.tenant_id, state, user_id, size, request.page_token
        )
        return pb.ListFlagsResponse(
            flags=await flags_to_pb(self.app, rows), next_page_token=next_token
        )

    @unary
    @admin_mixin
    @audit.audited
    async def ReleaseFlag(self, request: pb.ResolveFlagRequest, context: Ctx) -> pb.Flag:
        return await self._decide(request, release=True)

    @unary
    @admin_mixin
    @audit.audited
    async def VoidFlag(self, request: pb.ResolveFlagRequest, context: Ctx) -> pb.Flag:
        return await self._decide(request, release=False)

    async def _decide(self, request: pb.ResolveFlagRequest, *, release: bool) -> pb.Flag:
        tenant = check_tenant(self.app.engine, request.tenant_id)
        if request.flag_id <= 0:
            raise InvalidField(
                "flag_id", f"must be a Flag.flag_id from ListFlags (> 0), got {request.flag_id}"
            )
        if not request.note.strip():
            raise InvalidField("note", "is required: say why, for the audit trail")
        note = check_text("note", request.note, max_chars=NOTE_CHARS_MAX, multiline=True)
        flag = await farming.decide(
            self.app, tenant.tenant_id, request.flag_id, release=release, note=note,
            decided_by=current_caller().name,
            # STARTED in the decision's transaction; the end of the call
            # settles it (the settlement in Redis comes after that commit).
            audit_row=audit.effect_row(started=True),
        )  # fmt: skip
        return (await flags_to_pb(self.app, [flag]))[0]
