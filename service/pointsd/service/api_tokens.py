"""API token commands behind AdminService (CreateToken, ListTokens,
RotateToken, RevokeToken) and `pointsd tokens`: the caller's rights checked,
the store's refusals turned into errors that say what to fix, and every
change written with its audit row in the store's transaction.

The rules (docs/security.md#commands): a token grants at most what its
maker holds. A caller limited to some tenants sees, creates, rotates and
revokes only tokens whose every tenant is within its own, and never a token
of every tenant; a new or rotated token has only roles its maker holds.
The current caller is `auth.current_caller()` (the RPC's, or the CLI's).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pointsd.service import audit
from pointsd.service.auth import Caller, check_grant, current_caller, issue_token, rotate_token
from pointsd.service.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from pointsd.service.errors import clip as _clip
from pointsd.storage.errors import RecordChanged, RecordMissing
from pointsd.storage.postgres.tokens import ApiToken, TokenStore

if TYPE_CHECKING:
    from pointsd.service.app import App

__all__ = ["GRACE_S_MAX", "TokenCommands", "check_token_id", "commands", "now_of", "state_of"]

GRACE_S_MAX = 30 * 86_400
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")


def check_token_id(token_id: str, field: str = "token_id") -> str:
    if not _TOKEN_ID.fullmatch(token_id):
        raise InvalidArgument(
            f"{field}: a token id is 16 lowercase hex characters (the part after 'pt_' "
            f"in pointsd tokens list), got {_clip(token_id, 40)!r}"
        )
    return token_id


def state_of(t: ApiToken, now: datetime) -> str:
    """The state at `now`: "revoked", "expired" or "active"."""
    if t.revoked_at is not None:
        return "revoked"
    if t.expires_at is not None and t.expires_at <= now:
        return "expired"
    return "active"


def _within(caller: Caller, tenants: Sequence[str] | None) -> bool:
    """Whether a token of `tenants` (None: every tenant) lies in the caller's scope."""
    if caller.tenants is None:
        return True
    return tenants is not None and set(tenants) <= caller.tenants


def _check_scope(caller: Caller, t: ApiToken, verb: str) -> None:
    if not _within(caller, t.tenants):
        raise PermissionDenied(
            f"token {caller.name!r} may not {verb} token {t.token_id}: its tenants are not "
            "all within the caller's"
        )


def _check_roles(caller: Caller, roles: Sequence[str], verb: str) -> None:
    missing = [r for r in roles if r not in caller.roles]
    if missing:
        raise PermissionDenied(
            f"token {caller.name!r} may not {verb} a token with role {missing[0]!r}, "
            "which it does not hold"
        )


@dataclass(frozen=True, slots=True)
class TokenCommands:
    store: TokenStore

    async def _get(self, token_id: str) -> ApiToken:
        try:
            return await self.store.get(token_id)
        except RecordMissing:
            raise NotFound(f"token_id: no token {token_id}") from None

    async def create(
        self,
        *,
        name: str,
        roles: Sequence[str],
        tenants: Sequence[str] | None,
        expires_at: datetime | None,
        now: datetime,
    ) -> tuple[str, ApiToken]:
        """(the token, shown once; its row). `tenants` None: every tenant."""
        caller = current_caller()
        name, chosen, scope = check_grant(name, roles, tenants)
        audit.scope(scope)  # a refusal below is recorded under the tenant asked for
        if expires_at is not None and expires_at <= now:
            raise InvalidArgument(
                f"expires_at: {expires_at.isoformat()} has passed; a token's expiry must lie "
                "in the future"
            )
        if scope is None and caller.tenants is not None:
            raise PermissionDenied(
                f"token {caller.name!r} is limited to some tenants and may not create a token "
                "of every tenant"
            )
        if scope is not None and caller.tenants is not None:
            foreign = sorted(set(scope) - caller.tenants)
            if foreign:
                raise PermissionDenied(
                    f"token {caller.name!r} may not create a token for tenant {_clip(foreign[0])!r}"
                )
        _check_roles(caller, chosen, "create")
        return await issue_token(
            self.store, name=name, roles=chosen, tenants=scope, now=now, expires_at=expires_at,
            audit=audit.effect_row(),
        )  # fmt: skip

    async def list_tokens(self, *, include_inactive: bool, now: datetime) -> list[ApiToken]:
        """The tokens within the caller's scope, oldest first; active ones
        only unless `include_inactive`."""
        caller = current_caller()
        return [
            t
            for t in await self.store.list()
            if _within(caller, t.tenants) and (include_inactive or state_of(t, now) == "active")
        ]

    async def rotate(
        self, token_id: str, *, grace: timedelta, now: datetime
    ) -> tuple[str, ApiToken, ApiToken]:
        """(the new token, shown once; the old row, valid until now + grace; the new row)."""
        caller = current_caller()
        check_token_id(token_id)
        if not timedelta(0) <= grace <= timedelta(seconds=GRACE_S_MAX):
            raise InvalidArgument(
                f"grace_s: must be between 0 and {GRACE_S_MAX} (30 days), "
                f"got {int(grace.total_seconds())}"
            )
        t = await self._get(token_id)
        audit.scope(t.tenants)
        _check_scope(caller, t, "rotate")
        _check_roles(caller, t.roles, "rotate")
        try:
            return await rotate_token(
                self.store, token_id, now=now, grace=grace, audit=audit.effect_row()
            )
        except RecordMissing:
            raise NotFound(f"token_id: no token {token_id}") from None
        except RecordChanged as exc:
            raise FailedPrecondition(f"token_id: {exc}") from None

    async def revoke(self, token_id: str, *, now: datetime) -> ApiToken:
        """Revoked at `now` (a revoked token stays as it was)."""
        caller = current_caller()
        check_token_id(token_id)
        t = await self._get(token_id)
        audit.scope(t.tenants)
        _check_scope(caller, t, "revoke")
        try:
            return await self.store.revoke(token_id, now, audit=audit.effect_row())
        except RecordMissing:
            raise NotFound(f"token_id: no token {token_id}") from None


def commands(app: App) -> TokenCommands:
    return TokenCommands(app.stores.tokens)


def now_of(app: App) -> datetime:
    """The service clock's now, as token times are written."""
    return datetime.fromtimestamp(app.clock() / 1000, UTC)
