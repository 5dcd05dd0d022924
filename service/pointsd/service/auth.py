"""API tokens, roles and tenant scopes: who may call what, for which tenants.

`Gate.admit` runs before every handler (service/pointsd/service/rpc.py):
the caller from a client certificate or the bearer token, then its role for
the method and its scope for every tenant the request names.

A token is `pt_<token_id>_<secret>`: the token id is public (it names the
token in `pointsd tokens list` and in logs), the secret is 32 random bytes
in urlsafe base64 and is stored only as a salted scrypt hash. A caller is a
name, a set of roles and a tenant scope (a set of tenant ids, or all).

Pure parts (format, hashing, `Caller`, `ROLE_OF`, `tenants_of`, `authorize`)
touch no store. `Authenticator` keeps a snapshot of every token, refreshed
from PostgreSQL in the background, so a call never waits on PostgreSQL and
ingest goes on with the last known snapshot while it is down.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.clock import Clock
from pointsd.service.errors import InvalidArgument, PermissionDenied, Unauthenticated, clip
from pointsd.storage.errors import StorageError, StorageUnavailable
from pointsd.storage.postgres.audit import AuditRow
from pointsd.storage.postgres.tokens import ApiToken, TokenStore

__all__ = [
    "AUTH_OFF",
    "CALLER",
    "ROLES",
    "ROLE_OF",
    "SCOPED_BY_HANDLER",
    "Authenticator",
    "Caller",
    "Gate",
    "authorize",
    "check_grant",
    "current_caller",
    "hash_secret",
    "issue_token",
    "new_token",
    "parse_token",
    "rotate_token",
    "tenants_of",
    "verify_secret",
]

log = logging.getLogger(__name__)

ROLES = ("ingest", "read", "redeem", "admin")

PREFIX = "pt_"
_ID_BYTES = 8  # 16 hex characters: public, unique by primary key
_SECRET_BYTES = 32
_SECRET_CHARS = 43  # urlsafe base64 of 32 bytes, no padding
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
# The longest well-formed token; anything longer is refused before parsing.
TOKEN_CHARS = len(PREFIX) + 2 * _ID_BYTES + 1 + _SECRET_CHARS
NAME_CHARS_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@:/-]{0,63}")

# -- token format -----------------------------------------------------------


def new_token() -> tuple[str, str, str]:
    """A fresh token: (token, token_id, secret). Show the token once."""
    token_id = secrets.token_hex(_ID_BYTES)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()
    return f"{PREFIX}{token_id}_{secret}", token_id, secret


def parse_token(text: str) -> tuple[str, str]:
    """(token_id, secret) of a presented token. Messages never quote the
    input: it may be a real secret pasted in the wrong place."""
    if len(text) != TOKEN_CHARS:
        raise Unauthenticated(
            f"malformed token: expected {TOKEN_CHARS} characters "
            f"'{PREFIX}<16 hex>_<43 base64url>', got {min(len(text), 10_000)}"
            + ("+" if len(text) > 10_000 else "")
        )
    if not text.startswith(PREFIX):
        raise Unauthenticated(f"malformed token: it must start with {PREFIX!r}")
    token_id, sep, secret = text[len(PREFIX) :].partition("_")
    if not sep or not _TOKEN_ID.fullmatch(token_id) or not _SECRET.fullmatch(secret):
        raise Unauthenticated(f"malformed token: expected '{PREFIX}<16 hex>_<43 base64url>'")
    return token_id, secret


# -- hashing ----------------------------------------------------------------

# scrypt (stdlib, memory-hard) rather than a fast hash: whoever reads the
# table (a backup, a replica) must not be able to test guesses quickly. The
# secrets are 256 random bits, so this is defence in depth; it costs ~50 ms
# once per token and process, as verified tokens are cached (Authenticator).
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
_SALT_BYTES = 16


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, *, salt: bytes | None = None) -> str:
    """A self-describing hash: `scrypt$<n>$<r>$<p>$<salt>$<hash>`, so the
    parameters can be raised later without breaking stored tokens."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether `secret` matches `stored` (constant-time compare). A stored
    string this code cannot read matches nothing."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


# -- callers, roles, scopes ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a token (or a client certificate) stands for. `tenants` None:
    every tenant. `credential` names what was presented: "token <id>",
    "cert <subject>", or "auth off"."""

    name: str
    roles: frozenset[str]
    tenants: frozenset[str] | None
    credential: str = ""

    def may(self, role: str, tenant_id: str) -> bool:
        """A role grants nothing outside the caller's tenants."""
        return role in self.roles and (self.tenants is None or tenant_id in self.tenants)


# With POINTS_AUTH=off every call runs as this caller (and the audit trail says so).
AUTH_OFF = Caller("anonymous", frozenset(ROLES), None, "auth off")

# The caller of the RPC being served: set by the RPC layer (service/rpc.py)
# once the call is authorised, read by the audit trail.
CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=AUTH_OFF)


def current_caller() -> Caller:
    return CALLER.get()


def check_grant(
    name: str, roles: Iterable[str], tenants: Iterable[str] | None
) -> tuple[str, tuple[str, ...], tuple[str, ...] | None]:
    """A token's name, roles and tenants as given by an operator, checked:
    InvalidArgument says what to fix."""
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"token name {clip(name)!r}: 1-{NAME_CHARS_MAX} characters, letters, digits "
            "and ' ._@:/-', starting with a letter or digit"
        )
    chosen = tuple(dict.fromkeys(r.strip() for r in roles if r.strip()))
    if not chosen:
        raise InvalidArgument(f"a token needs at least one role of {', '.join(ROLES)}")
    unknown = [r for r in chosen if r not in ROLES]
    if unknown:
        raise InvalidArgument(f"unknown role {clip(unknown[0])!r}: use {', '.join(ROLES)}")
    if tenants is None:
        return name, chosen, None
    scope = tuple(dict.fromkeys(t.strip() for t in tenants if t.strip()))
    if not scope:
        raise InvalidArgument("a token needs at least one tenant id, or 'all'")
    for t in scope:
        if len(t.encode()) > 128 or any(c in t for c in "{}") or not t.isprintable():
            raise InvalidArgument(
                f"tenant id {clip(t)!r}: 1-128 bytes, no '{{', '}}' or control characters"
            )
    return name, chosen, scope


def _role_table() -> dict[str, str]:
    points = "/points.v1.PointsService/"
    roles = {f"{points}{m}": "ingest" for m in ("RecordActivity", "RecordActivities")}
    roles[f"{points}StreamActivities"] = "ingest"
    for m in (
        "GetBalance",
        "ListLedger",
        "Leaderboard",
        "GetRank",
        "ListWinners",
        "ListRewards",
        "ListRedemptions",
        "GetProgress",
        "ListThanks",
    ):
        roles[f"{points}{m}"] = "read"
    roles[f"{points}Redeem"] = "redeem"
    admin = pb.DESCRIPTOR.services_by_name["AdminService"]
    for method in admin.methods:
        roles[f"/points.v1.AdminService/{method.name}"] = "admin"
    return roles


# Full gRPC method name -> the role it needs. Every AdminService method,
# present and future, needs `admin`; tests/test_auth.py checks that every
# PointsService method has an entry.
ROLE_OF: Mapping[str, str] = _role_table()

# Methods whose request names no tenant the gate can check: their handlers
# check the caller's scope against what they act on (the token's tenants,
# service/pointsd/service/api_tokens.py).
SCOPED_BY_HANDLER = frozenset(
    f"/points.v1.AdminService/{m}"
    for m in ("CreateToken", "ListTokens", "RotateToken", "RevokeToken")
)


# Per message type: does it carry tenant_id, item.tenant_id, events[]?
_SHAPES: dict[str, tuple[bool, bool, bool]] = {}


def _has_tenant(message_type: Any) -> bool:
    return message_type is not None and "tenant_id" in message_type.fields_by_name


def tenants_of(request: Message) -> frozenset[str]:
    """Every tenant id a request names (empty ids left out: validation refuses
    them). One set comprehension for a batch: ~0.1 ms for 1,000 events."""
    name = request.DESCRIPTOR.full_name
    shape = _SHAPES.get(name)
    if shape is None:
        fields = request.DESCRIPTOR.fields_by_name
        item = fields.get("item")
        events = fields.get("events")
        shape = (
            "tenant_id" in fields,
            item is not None and _has_tenant(item.message_type),
            events is not None and _has_tenant(events.message_type),
        )
        _SHAPES[name] = shape
    found: set[str] = set()
    msg: Any = request
    if shape[0]:
        found.add(msg.tenant_id)
    if shape[1] and msg.HasField("item"):
        found.add(msg.item.tenant_id)
    if shape[2]:
        found.update({e.tenant_id for e in msg.events})
    found.discard("")
    return frozenset(found)


def authorize(caller: Caller, method: str, tenants: Iterable[str]) -> None:
    """PermissionDenied naming the missing role or the foreign tenant; one
    foreign tenant anywhere in a batch refuses the whole request."""
    role = ROLE_OF.get(method)
    if role is None:
        raise PermissionDenied(f"no role grants {clip(method, 96)}")
    if role not in caller.roles:
        raise PermissionDenied(
            f"token {caller.name!r} lacks role {role!r}, needed by {method.rsplit('/', 1)[-1]}"
        )
    if caller.tenants is None:
        return
    for tenant_id in sorted(set(tenants)):
        if tenant_id not in caller.tenants:
            raise PermissionDenied(
                f"token {caller.name!r} may not act on tenant {clip(tenant_id)!r}"
            )


# -- issuing (the CLI and, later, admin RPCs) ---------------------------------


async def issue_token(
    store: TokenStore,
    *,
    name: str,
    roles: Iterable[str],
    tenants: Iterable[str] | None,
    now: datetime,
    expires_at: datetime | None = None,
    audit: AuditRow | None = None,
) -> tuple[str, ApiToken]:
    """A new token, checked and stored hashed: (the token, shown once; its
    row). `audit`: the call's audit row, written in the same transaction."""
    name, chosen, scope = check_grant(name, roles, tenants)
    if expires_at is not None and expires_at <= now:
        raise InvalidArgument("a token's expiry must lie in the future")
    token, token_id, secret = new_token()
    row = await store.create(
        token_id=token_id,
        name=name,
        roles=chosen,
        tenants=scope,
        secret_hash=hash_secret(secret),
        now=now,
        expires_at=expires_at,
        audit=audit,
    )
    return token, row


async def rotate_token(
    store: TokenStore,
    token_id: str,
    *,
    now: datetime,
    grace: timedelta,
    audit: AuditRow | None = None,
) -> tuple[str, ApiToken, ApiToken]:
    """(the new token, shown once; the old row, valid until now + grace; the new row)."""
    if grace < timedelta(0):
        raise InvalidArgument("the grace period cannot be negative")
    token, new_id, secret = new_token()
    old, new = await store.rotate(
        token_id, new_token_id=new_id, new_secret_hash=hash_secret(secret), now=now, grace=grace,
        audit=audit,
    )  # fmt: skip
    return token, old, new


# -- the authenticator --------------------------------------------------------

_CACHE_MAX = 10_000
# Wrong secrets checked with scrypt per second and process (each ~30 ms of
# the event loop), and how many are remembered so a repeat costs nothing.
WRONG_SECRETS_PER_S = 5
_WRONG_KEPT = 10_000
_BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class _Verified:
    token_id: str
    secret_hash: str
    # The snapshot row it was checked against, that row's caller, and its
    # expiry in µs since the epoch: while the snapshot holds this very row
    # object, a call presenting the token needs no parsing, no scrypt and no
    # new Caller (a refresh that changes the row replaces the object).
    row: ApiToken
    caller: Caller
    expires_us: int | None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class Authenticator:
    """Answers `authenticate(metadata) -> Caller` from a snapshot of the
    tokens, never from PostgreSQL: `refresh_s` after a change every process
    sees it (the issue's 5 s bound holds with the default 2 s); while
    PostgreSQL is down the last snapshot stays in force. A token is checked
    with scrypt once per process; later calls find it in `_verified`, keyed
    by a SHA-256 of the presented token (the token itself is not kept)."""

    def __init__(
        self,
        store: TokenStore,
        clock: Clock,
        *,
        refresh_s: float = 2.0,
        full_every: int = 30,
        overlap_s: float = 10.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.refresh_s = refresh_s
        self.full_every = full_every  # refreshes between full snapshots
        self.overlap_s = overlap_s  # re-read rows changed this long before the cursor
        self._tokens: dict[str, ApiToken] = {}
        self._cursor: datetime | None = None
        self._refreshes = 0
        self._verified: dict[bytes, _Verified] = {}
        # Wrong secrets seen (sha256 of the presented token -> the row it
        # failed against) and when the last ones were checked.
        self._wrong: dict[bytes, tuple[str, str]] = {}
        self._wrong_at: deque[float] = deque()
        self._task: asyncio.Task[None] | None = None
        self.loaded = False
        self.verifications = 0  # scrypt runs, for tests and metrics
        self.refresh_failures = 0

    async def start(self) -> None:
        """Load once (a failure is logged; calls get UNAVAILABLE until a
        load succeeds), then refresh in the background."""
        with contextlib.suppress(StorageError):
            await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="auth-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        # Nothing may end this loop but close(): a process that stopped
        # refreshing would admit a revoked token for ever.
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except StorageError:
                pass  # logged by refresh
            except Exception:
                self.refresh_failures += 1
                log.exception("token refresh failed unexpectedly, keeping the last snapshot")

    async def refresh(self) -> None:
        """One refresh: the rows changed since the last one (a full snapshot
        at first and every `full_every` times). Keeps the snapshot and
        re-raises StorageUnavailable when PostgreSQL cannot be read."""
        try:
            if self._cursor is None or self._refreshes % self.full_every == 0:
                rows, as_of = await self.store.snapshot()
                tokens = {t.token_id: t for t in rows}
            else:
                since = self._cursor - timedelta(seconds=self.overlap_s)
                rows, as_of = await self.store.changed_since(since)
                tokens = dict(self._tokens)
                tokens.update({t.token_id: t for t in rows})
        except StorageError as exc:
            self.refresh_failures += 1
            log.warning("token refresh failed, keeping the last snapshot: %s", clip(str(exc), 200))
            raise
        self._tokens = tokens
        self._cursor = as_of
        self._refreshes += 1
        self.loaded = True

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller:
        """The caller of a call's invocation metadata, or Unauthenticated
        saying what is wrong (never the secret)."""
        header = _authorization(metadata)
        if header is None:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        if len(header) > TOKEN_CHARS + 64 or not header[: len(_BEARER)].lower() == _BEARER:
            raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
        presented = header[len(_BEARER) :].strip()
        key = hashlib.sha256(presented.encode()).digest()
        seen = self._verified.get(key)
        if seen is not None and (known := self._still_valid(seen)) is not None:
            return known
        token_id, secret = parse_token(presented)
        if not self.loaded:
            raise StorageUnavailable("tokens not loaded yet; retry shortly", "postgresql")
        row = self._tokens.get(token_id)
        if row is None:
            raise Unauthenticated(f"unknown token {token_id}")
        now = datetime.fromtimestamp(self.clock() / 1000, UTC)
        if row.revoked_at is not None:
            raise Unauthenticated(f"token {token_id} was revoked")
        if row.expires_at is not None and now >= row.expires_at:
            raise Unauthenticated(f"token {token_id} expired at {row.expires_at.isoformat()}")
        if seen is None or seen.token_id != token_id or seen.secret_hash != row.secret_hash:
            self._verify(key, token_id, secret, row)
        return self._remember(key, token_id, row)

    def _verify(self, key: bytes, token_id: str, secret: str, row: ApiToken) -> None:
        """scrypt costs ~30 ms of this event loop: a wrong secret is checked
        once (then remembered), and at most WRONG_SECRETS_PER_S wrong
        secrets a second are checked at all; past that, calls with a token
        not verified before are refused until the second is over."""
        wrong = (row.token_id, row.secret_hash)
        if self._wrong.get(key) == wrong:
            raise Unauthenticated(f"wrong secret for token {token_id}")
        now = time.monotonic()
        while self._wrong_at and now - self._wrong_at[0] > 1.0:
            self._wrong_at.popleft()
        if len(self._wrong_at) >= WRONG_SECRETS_PER_S:
            raise Unauthenticated(
                f"too many wrong token secrets in the last second; token {token_id} was not "
                "checked: retry in a second"
            )
        self.verifications += 1
        if not verify_secret(secret, row.secret_hash):
            self._wrong_at.append(now)
            if len(self._wrong) >= _WRONG_KEPT:
                self._wrong.clear()
            self._wrong[key] = wrong
            raise Unauthenticated(f"wrong secret for token {token_id}")

    def _remember(self, key: bytes, token_id: str, row: ApiToken) -> Caller:
        """The caller of a verified token, cached for its next calls."""
        caller = Caller(
            row.name,
            frozenset(row.roles),
            None if row.tenants is None else frozenset(row.tenants),
            f"token {token_id}",
        )
        if len(self._verified) >= _CACHE_MAX and key not in self._verified:
            self._verified.clear()  # rare; the next calls verify again
        expires_us = None if row.expires_at is None else (row.expires_at - _EPOCH) // _US
        self._verified[key] = _Verified(token_id, row.secret_hash, row, caller, expires_us)
        return caller

    def _still_valid(self, seen: _Verified) -> Caller | None:
        """The hot path: the caller of a token verified against the row the
        snapshot still holds, unrevoked and unexpired; else None (the full
        path decides, and says why)."""
        row = self._tokens.get(seen.token_id)
        if row is None or row is not seen.row or row.revoked_at is not None:
            return None
        if seen.expires_us is not None and self.clock() * 1000 >= seen.expires_us:
            return None
        return seen.caller


def _authorization(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


# -- the gate every RPC passes ------------------------------------------------

# A client certificate's caller, or None (then the bearer token decides).
CertCallers = Callable[[Any], "Caller | None"]


class Gate:
    """Admits a call or refuses it before its handler runs: UNAUTHENTICATED
    without a usable credential, PERMISSION_DENIED without the role or the
    tenants. With `authenticator` None (POINTS_AUTH=off) every call is
    admitted as AUTH_OFF."""

    def __init__(
        self, authenticator: Authenticator | None, certificates: CertCallers | None = None
    ) -> None:
        self.authenticator = authenticator
        self.certificates = certificates

    @property
    def enabled(self) -> bool:
        return self.authenticator is not None

    async def start(self) -> None:
        if self.authenticator is not None:
            await self.authenticator.start()

    async def close(self) -> None:
        if self.authenticator is not None:
            await self.authenticator.close()

    def caller(self, context: Any) -> Caller:
        """Who is calling (the call's context: metadata, TLS peer)."""
        if self.authenticator is None:
            return AUTH_OFF
        if self.certificates is not None:
            by_cert = self.certificates(context)
            if by_cert is not None:
                return by_cert
        return self.authenticator.authenticate(context.invocation_metadata())

    def check(self, caller: Caller, method: str, request: Message | None) -> None:
        """The caller's role for `method` and scope for every tenant of
        `request` (None: the role alone, as for a stream's start)."""
        if self.authenticator is None:
            return
        if caller.tenants is None or request is None:
            authorize(caller, method, ())
        else:
            authorize(caller, method, tenants_of(request))

    def check_events(self, caller: Caller, context: Any, method: str, events: Any) -> Caller:
        """For a stream's batch: the credential again (a token revoked
        mid-stream ends it) and the tenant of every event."""
        if self.authenticator is None:
            return caller
        caller = self.caller(context)
        if caller.tenants is None:
            authorize(caller, method, ())
        else:
            authorize(caller, method, {e.tenant_id for e in events} - {""})
        return caller
