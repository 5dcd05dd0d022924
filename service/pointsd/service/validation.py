"""Request validation: protobuf messages in, domain values out, or an
InvalidField naming the field and what to fix. Nothing here touches a store."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.convert import ITEM_KINDS, PERIODS
from pointsd.service.domain import TIME_MS_MAX, Event
from pointsd.service.errors import InvalidArgument
from pointsd.service.redeem import QUANTITY_MAX
from pointsd.service.rules import LEVELS, RulesEngine, TenantRules
from pointsd.storage.postgres.catalog import Item

__all__ = [
    "ADJUST_MAX",
    "COST_MAX",
    "ID_BYTES_MAX",
    "PAGE_MAX",
    "STOCK_MAX",
    "InvalidField",
    "Limits",
    "check_id",
    "check_tenant",
    "check_text",
    "event_from_pb",
    "item_from_pb",
    "page_size",
    "quantity_of",
    "timestamp_of",
]

ID_BYTES_MAX = 128
COST_MAX = 1_000_000_000
# Far below bigint: stock given back by refunds can never overflow it.
STOCK_MAX = 1_000_000_000
ADJUST_MAX = 1_000_000
PAGE_MAX = 200
ATTRIBUTE_KEY_BYTES_MAX = 64
ATTRIBUTE_VALUE_BYTES_MAX = 256
# C0 and C1 control characters and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BAD_ID = re.compile("[{}\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The same over "|"-joined ids, plus whitespace at either end of any of them.
_BAD_IDS = re.compile("[{}\x00-\x1f\x7f-\x9f\u2028\u2029]|(?:^|\\|)\\s|\\s(?:\\||$)")
_ID_FIELDS = ("tenant_id", "event_id", "user_id", "action", "target_user_id", "group_id",
              "department_id")  # fmt: skip
_ID_REQUIRED = (True, True, True, True, False, False, False)


class InvalidField(InvalidArgument):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True, slots=True)
class Limits:
    event_max_age_s: int
    event_future_skew_s: int
    attributes_max: int
    quantity_max: int


def check_id(field: str, value: str, *, required: bool = True) -> str:
    if not value:
        if required:
            raise InvalidField(field, "is required")
        return value
    # Checked for every id of every event: one regex for the common case,
    # the precise complaint only when something is wrong.
    too_long = len(value) * 4 > ID_BYTES_MAX and len(value.encode()) > ID_BYTES_MAX
    if too_long or _BAD_ID.search(value) or value[0].isspace() or value[-1].isspace():
        _explain_id(field, value)
    return value


def _explain_id(field: str, value: str) -> None:
    size = len(value.encode())
    if size > ID_BYTES_MAX:
        raise InvalidField(field, f"is {size} bytes; at most {ID_BYTES_MAX} are allowed")
    if "{" in value or "}" in value:
        raise InvalidField(field, "must not contain '{' or '}'")
    if _CONTROL.search(value):
        raise InvalidField(field, "must not contain control characters")
    raise InvalidField(field, "must not start or end with whitespace")


_LINE_BREAKS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def check_text(
    field: str, value: str, *, max_chars: int, required: bool = False, multiline: bool = False
) -> str:
    """Free text (names, reasons): bounded, and without control characters
    (PostgreSQL refuses NUL; the ledger and logs want single lines)."""
    if required and not value.strip():
        raise InvalidField(field, "is required")
    if len(value) > max_chars:
        raise InvalidField(field, f"must be at most {max_chars} characters, got {len(value)}")
    if (_LINE_BREAKS if multiline else _CONTROL).search(value):
        allowed = " (line breaks and tabs are fine)" if multiline else ""
        raise InvalidField(field, f"must not contain control characters{allowed}")
    return value


def _duration(seconds: int) -> str:
    if seconds >= 7200:
        return f"{seconds // 3600}h"
    if seconds >= 120:
        return f"{seconds // 60}min"
    return f"{seconds}s"


def event_from_pb(msg: pb.ActivityEvent, now_ms: int, limits: Limits) -> Event:
    """Validate one event. Unset occurred_at means now."""
    ids = (msg.tenant_id, msg.event_id, msg.user_id, msg.action, msg.target_user_id,
           msg.group_id, msg.department_id)  # fmt: skip
    tenant_id, event_id, user_id, action, target, group, department = ids
    # Every id of every event: one scan of all of them in the common case; the
    # per-field checks (and their precise messages) only when one looks wrong.
    if (
        not (tenant_id and event_id and user_id and action)
        or max(map(len, ids)) * 4 > ID_BYTES_MAX
        or _BAD_IDS.search("|".join(ids))
    ):
        _explain_ids(ids)

    if msg.HasField("occurred_at"):
        occurred_ms = _occurred_ms(msg.occurred_at, now_ms, limits)
    else:
        occurred_ms = now_ms

    quantity = msg.quantity
    if quantity < 0:
        raise InvalidField("quantity", f"must be >= 0, got {quantity}")
    if quantity > limits.quantity_max:
        raise InvalidField("quantity", f"must be <= {limits.quantity_max}, got {quantity}")

    attrs = msg.attributes
    count = len(attrs)
    if count > limits.attributes_max:
        raise InvalidField("attributes", f"has {count} entries; at most {limits.attributes_max}")
    if count:
        _check_attributes(attrs)

    return Event(
        tenant_id=tenant_id,
        event_id=event_id,
        user_id=user_id,
        action=action,
        occurred_at_ms=occurred_ms,
        target_user_id=target,
        group_id=group,
        department_id=department,
        quantity=quantity or 1,
        attributes=dict(attrs) if count else {},
    )


def _explain_ids(ids: tuple[str, ...]) -> None:
    """Raise the precise complaint about the first wrong id of an event."""
    for name, value, required in zip(_ID_FIELDS, ids, _ID_REQUIRED, strict=True):
        check_id(name, value, required=required)


def _occurred_ms(ts: Timestamp, now_ms: int, limits: Limits) -> int:
    """An event's occurred_at in ms, if within the accepted time window."""
    if not 0 <= ts.nanos < 1_000_000_000 or ts.seconds <= 0:
        raise InvalidField("occurred_at", "is not a valid timestamp")
    occurred_ms = ts.seconds * 1000 + ts.nanos // 1_000_000
    age_s = (now_ms - occurred_ms) // 1000
    if age_s > limits.event_max_age_s:
        raise InvalidField(
            "occurred_at",
            f"is {_duration(age_s)} in the past; events older than "
            f"{_duration(limits.event_max_age_s)} are refused",
        )
    if -age_s > limits.event_future_skew_s:
        raise InvalidField(
            "occurred_at",
            f"is {_duration(-age_s)} in the future; at most "
            f"{_duration(limits.event_future_skew_s)} of clock skew is accepted",
        )
    return occurred_ms


def _check_attributes(attrs: Mapping[str, str]) -> None:
    for key, value in attrs.items():
        if not key or len(key.encode()) > ATTRIBUTE_KEY_BYTES_MAX or _CONTROL.search(key):
            raise InvalidField(
                "attributes",
                f"key {key[:40]!r} must be 1-{ATTRIBUTE_KEY_BYTES_MAX} bytes without control "
                "characters",
            )
        if len(value.encode()) > ATTRIBUTE_VALUE_BYTES_MAX or _CONTROL.search(value):
            raise InvalidField(
                f"attributes[{key}]",
                f"must be at most {ATTRIBUTE_VALUE_BYTES_MAX} bytes without control characters",
            )

    # Attributes that name a leaderboard scope obey the rules of ids, so every
    # scope a board records can be asked for by scope_id.
    if "target_department_id" in attrs:
        check_id("attributes[target_department_id]", attrs["target_department_id"], required=False)


def check_tenant(engine: RulesEngine, tenant_id: str, field: str = "tenant_id") -> TenantRules:
    check_id(field, tenant_id)
    tenant = engine.tenant(tenant_id)
    if tenant is None:
        raise InvalidField(field, f"unknown tenant {tenant_id!r}")
    return tenant


def timestamp_of(ts: Timestamp, field: str) -> datetime:
    # Item windows from 1970 to the year 9999.
    if not (0 <= ts.seconds <= TIME_MS_MAX // 1000 and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidField(field, "is not a valid timestamp between 1970 and 9999")
    return ts.ToDatetime(tzinfo=UTC)


def page_size(value: int) -> int:
    size = value or 50
    if not 1 <= size <= PAGE_MAX:
        raise InvalidField("page_size", f"must be between 1 and {PAGE_MAX}, got {size}")
    return size


def quantity_of(value: int) -> int:
    quantity = value or 1
    if not 1 <= quantity <= QUANTITY_MAX:
        raise InvalidField("quantity", f"must be between 1 and {QUANTITY_MAX}, got {quantity}")
    return quantity


def item_from_pb(msg: pb.Item, engine: RulesEngine) -> Item:
    """A validated catalog item; InvalidField names what to fix."""
    check_tenant(engine, msg.tenant_id, "item.tenant_id")
    check_id("item.item_id", msg.item_id)
    check_text("item.name", msg.name, max_chars=200, required=True)
    check_text("item.description", msg.description, max_chars=2000, multiline=True)
    kind = ITEM_KINDS.get(msg.kind)
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
    starts = timestamp_of(msg.starts_at, "item.starts_at") if msg.HasField("starts_at") else None
    ends = timestamp_of(msg.ends_at, "item.ends_at") if msg.HasField("ends_at") else None
    if starts is not None and ends is not None and ends <= starts:
        raise InvalidField("item.ends_at", "must be after starts_at")
    if msg.min_level:
        _check_level(engine, msg.tenant_id, msg.min_level)
    return Item(
        tenant_id=msg.tenant_id, item_id=msg.item_id, name=msg.name,
        description=msg.description, kind=kind, cost=msg.cost, stock=stock,
        per_user_limit=limit, limit_period=period.value if period else None,
        starts_at=starts, ends_at=ends, enabled=msg.enabled, min_level=msg.min_level,
    )  # fmt: skip


def _check_level(engine: RulesEngine, tenant_id: str, level_id: str) -> None:
    tenant = engine.tenant(tenant_id)
    levels = tenant.part(LEVELS) if tenant is not None else None
    if levels is None:
        raise InvalidField("item.min_level", f"tenant {tenant_id!r} has no levels in its rules")
    if levels.get(level_id) is None:
        known = ", ".join(lv.id for lv in levels.levels)
        raise InvalidField(
            "item.min_level", f"no level {level_id[:64]!r} in the tenant's rules (levels: {known})"
        )
