"""The audit trail of admin actions (docs/security.md#audit-trail).

Every audited call gets one row in PostgreSQL (storage/pointsd/storage/
postgres/audit.py): who (the current caller, auth.current_caller), when (the
service clock, when the call began), which RPC, the tenant, the request as
JSON without secrets, and the outcome. Where the row is written depends on
the effect, so that no effect can exist without its row:

- an effect in PostgreSQL (items, tokens, the start of a refund): the
  store writes `effect_row()` in the transaction that makes the effect;
- an effect in Redis (AdjustPoints): `started()` writes the row with the
  outcome STARTED before the effect, and the end of the call settles it;
- a refusal before any effect: one row with the status code name and its
  message, written after the refusal; except PERMISSION_DENIED and
  UNAUTHENTICATED, which leave no trace in any store.

`audited` (a handler decorator, under `@unary`) and `calling` (the CLI's
token commands) open the call and settle its row at the end, whatever
happened: the store's one `settle` statement finishes a STARTED row or
writes the row of a call that has none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.auth import Caller, current_caller, tenants_of
from pointsd.service.errors import (
    MESSAGE_CHARS_MAX,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    clip,
    status_of,
)
from pointsd.storage.postgres.audit import STARTED, AuditEntry, AuditFilter, AuditRow, AuditStore

if TYPE_CHECKING:
    from pointsd.service.app import App

__all__ = [
    "ADMIN_RPCS",
    "OK",
    "STARTED",
    "audited",
    "calling",
    "effect_row",
    "list_audit",
    "outcome_of",
    "request_json",
    "scope",
    "started",
]

log = logging.getLogger("pointsd.audit")

OK = "OK"
# What ListAudit's `rpc` filter accepts: the AdminService method names.
ADMIN_RPCS = frozenset(m.name for m in pb.DESCRIPTOR.services_by_name["AdminService"].methods)

# Bounds of a request's JSON: strings cut, lists shortened, the whole at most
# REQUEST_BYTES_MAX (a tighter second pass, then a stub, if still over).
REQUEST_BYTES_MAX = 8192
_PASSES = ((256, 50), (32, 8))
REDACTED = "[redacted]"
# Fields whose value is never recorded, whichever message carries them.
_SECRET_FIELDS = frozenset(
    {"token", "secret", "password", "authorization", "api_key", "secret_hash", "credentials"}
)
_SECRET_SUFFIXES = ("_secret", "_password")
_NAME_CHARS_MAX = 256  # caller names and credentials (certificate subjects may be long)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_US_MAX = 253_402_300_799 * 1_000_000  # 9999-12-31

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


# -- the request as JSON ---------------------------------------------------------


def _is_secret(name: str) -> bool:
    return name.lower() in _SECRET_FIELDS or name.lower().endswith(_SECRET_SUFFIXES)


def _bounded(value: Any, chars: int, items: int) -> Any:
    if isinstance(value, dict):
        return {
            clip(str(k), chars): REDACTED if _is_secret(str(k)) else _bounded(v, chars, items)
            for k, v in value.items()
        }
    if isinstance(value, list):
        kept = [_bounded(v, chars, items) for v in value[:items]]
        if len(value) > items:
            kept.append(f"… {len(value) - items} more")
        return kept
    if isinstance(value, str):
        return clip(value, chars)
    return value


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return _as_dict(value)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _as_dict(msg: Message) -> dict[str, Any]:
    """MessageToDict, or field by field where it refuses (a Timestamp out of
    its range: a refused request is recorded as sent)."""
    try:
        return MessageToDict(msg, preserving_proto_field_name=True)
    except Exception:
        out: dict[str, Any] = {}
        for field, value in msg.ListFields():
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                entry = field.message_type.fields_by_name["value"]
                out[field.name] = {str(k): _scalar(entry, v) for k, v in value.items()}
            elif field.is_repeated:
                out[field.name] = [_scalar(field, v) for v in value]
            else:
                out[field.name] = _scalar(field, value)
        return out


def request_json(request: Message) -> str:
    """`request` as a JSON object (proto field names): secret fields
    redacted, strings and lists cut, at most REQUEST_BYTES_MAX bytes."""
    raw = _as_dict(request)
    for chars, items in _PASSES:
        text = json.dumps(_bounded(raw, chars, items), ensure_ascii=False, separators=(",", ":"))
        # PostgreSQL's jsonb refuses \u0000: a NUL in a request (refused or
        # not) must not cost the call its audit row.
        text = text.replace("\\u0000", "\\ufffd")
        if len(text.encode()) <= REQUEST_BYTES_MAX:
            return text
    return json.dumps({"_truncated": True, "_message": request.DESCRIPTOR.name})


def outcome_of(exc: BaseException) -> tuple[str, str]:
    """The status code name and message a call ending with `exc` answers."""
    mapped = status_of(exc)
    if mapped is None:
        return "INTERNAL", "internal error"
    code, message = mapped
    return code.name, clip(message, MESSAGE_CHARS_MAX)


# -- the call being audited --------------------------------------------------------


@dataclass
class _Call:
    store: AuditStore
    row: AuditRow
    # A final row handed to the store of the effect: settled with its commit.
    final_issued: bool = False


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("audit_call", default=None)
# Settlements of cancelled calls, kept referenced until they finish.
_PENDING: set[asyncio.Task[None]] = set()


def _tenant_of(tenants: Sequence[str] | None) -> str:
    """A row names one tenant: the only one, else '' (every tenant, or several:
    such rows are listed to callers of every tenant only)."""
    return tenants[0] if tenants is not None and len(set(tenants)) == 1 else ""


def _new_row(caller: Caller, rpc: str, request: Message, now_ms: int) -> AuditRow:
    return AuditRow(
        call_id=str(uuid.uuid4()),
        occurred_at=datetime.fromtimestamp(now_ms / 1000, UTC),
        caller=clip(caller.name, _NAME_CHARS_MAX),
        credential=clip(caller.credential, _NAME_CHARS_MAX),
        rpc=rpc,
        tenant_id=_tenant_of(sorted(tenants_of(request))),
        request_json=request_json(request),
        outcome=STARTED,
    )


def scope(tenants: Sequence[str] | None) -> None:
    """Name the tenants the current call acts on when the request does not
    (a token's scope; None: every tenant)."""
    call = _CALL.get()
    if call is not None:
        call.row = replace(call.row, tenant_id=_tenant_of(tenants))


def effect_row(*, started: bool = False) -> AuditRow | None:
    """The current call's row, for the store whose transaction makes the
    call's effect (None outside an audited call: the recovery sweep, a
    script). `started`: the call goes on after that transaction (a refund's
    give-back), and the end of the call settles the outcome."""
    call = _CALL.get()
    if call is None:
        return None
    if started:
        return call.row
    call.final_issued = True
    return replace(call.row, outcome=OK)


async def started() -> None:
    """Write the current call's row as STARTED, before an effect outside
    PostgreSQL: if this fails, the call fails and nothing happens."""
    call = _CALL.get()
    if call is not None:
        await call.store.record_alone(call.row)


async def _settle(call: _Call, outcome: str, message: str) -> None:
    try:
        await call.store.settle(replace(call.row, outcome=outcome, message=message))
    except Exception as exc:  # the call's own answer stands; the row says STARTED or is missing
        log.warning(
            "audit row of %s (call %s) not settled as %s: %s",
            call.row.rpc, call.row.call_id, outcome, clip(str(exc), 200),
        )  # fmt: skip


@contextlib.asynccontextmanager
async def calling(
    store: AuditStore, now_ms: int, rpc: str, request: Message
) -> AsyncIterator[None]:
    """Audit the call inside: the current caller, `rpc`, `request`; its row
    settled at the end with OK or the code and message of the error."""
    call = _Call(store, _new_row(current_caller(), rpc, request, now_ms))
    token = _CALL.set(call)
    try:
        yield
    except asyncio.CancelledError:
        # The caller went away; the effect may have happened. Settle in the
        # background: this task must not wait on PostgreSQL any more.
        task = asyncio.create_task(_settle(call, "CANCELLED", "the call was cancelled"))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)
        raise
    except (PermissionDenied, Unauthenticated):
        # A caller without the right leaves no trace, wherever it is found
        # out (the gate, or a token command's scope check); nothing happened.
        raise
    except Exception as exc:
        await _settle(call, *outcome_of(exc))
        raise
    else:
        if not call.final_issued:  # a final row committed with the effect needs nothing
            await _settle(call, OK, "")
    finally:
        _CALL.reset(token)


def audited(method: F) -> F:
    """For AdminService handlers that act (put it under `@unary`): one audit
    row per call, whatever its outcome."""
    rpc = method.__name__
    assert rpc in ADMIN_RPCS, f"{rpc} is not an AdminService method"

    @functools.wraps(method)
    async def wrapper(self: Any, request: Message, context: Any) -> Any:
        app = self.app
        async with calling(app.stores.audit, app.clock(), rpc, request):
            return await method(self, request, context)

    # Copied onto `@unary`'s wrapper by functools.wraps: tests find audited handlers by it.
    wrapper.__audited__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# -- reading -----------------------------------------------------------------------


def _refused() -> InvalidArgument:
    return InvalidArgument("page_token: is not a token ListAudit returned for this query")


async def list_audit(
    app: App, where: AuditFilter, size: int, token: str
) -> tuple[list[AuditEntry], str]:
    """A page of audit rows, newest first, and the next page's token."""

    def us(at: datetime | None) -> str:
        return "" if at is None else str((at - _EPOCH) // _US)

    # The token is bound to the filters (not to the caller's scope: the scope
    # applies to every page anyway).
    query = (where.caller, where.tenant_id, where.rpc, us(where.since), us(where.until))
    cursor: tuple[datetime, int] | None = None
    if token:
        found = await app.tokens.decode("ListAudit", query, token)
        try:
            at, audit_id = int(found["o"]), int(found["i"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise _refused() from None
        if not (0 <= at <= _US_MAX and 0 < audit_id < 2**63):
            raise _refused()
        cursor = (_EPOCH + at * _US, audit_id)
    rows, after = await app.stores.audit.page(where, size, cursor)
    next_token = ""
    if after is not None:
        next_token = app.tokens.encode("ListAudit", query, {"o": us(after[0]), "i": after[1]})
    return rows, next_token
