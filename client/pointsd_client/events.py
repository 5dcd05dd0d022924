"""ActivityEvents from keyword arguments, their ids, and RecordActivities chunks."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TypedDict, Unpack

from google.protobuf.timestamp_pb2 import Timestamp

from pointsd_client.v1 import points_pb2 as pb

__all__ = [
    "BATCH_EVENTS_MAX",
    "REQUEST_BYTES_MAX",
    "EventDetails",
    "EventFields",
    "chunk_events",
    "ensure_event_id",
    "make_event",
    "new_event_id",
    "wire_size",
]

# The server's limits per RecordActivities call (points.proto; the defaults of
# POINTS_BATCH_EVENTS_MAX and POINTS_REQUEST_BYTES_MAX): a bigger request is
# refused whole with INVALID_ARGUMENT, so record_many never sends one.
BATCH_EVENTS_MAX = 1000
REQUEST_BYTES_MAX = 4 * 1024 * 1024


class EventDetails(TypedDict, total=False):
    """The optional fields of an ActivityEvent but its id, as keyword
    arguments (docs/api.md). `occurred_at` unset means "when the server
    receives it"; pass the message's own time when events may wait (a
    batcher, retries through an outage)."""

    tenant_id: str
    occurred_at: datetime | Timestamp
    target_user_id: str
    group_id: str
    department_id: str
    quantity: int
    attributes: Mapping[str, str]


class EventFields(EventDetails, total=False):
    """EventDetails and `event_id`, the idempotency key (1-128 bytes, unique
    per tenant): pass the id of what happened (the message id), so a
    redelivered message never pays twice. Absent, a random one is generated
    once into the event, before the first attempt, so the event itself can be
    resent."""

    event_id: str


def new_event_id() -> str:
    return uuid.uuid4().hex


def ensure_event_id(event: pb.ActivityEvent) -> pb.ActivityEvent:
    """Give `event` a random id if it has none, in place, so that every
    attempt (and the caller, who may resend it later) uses that same id."""
    if not event.event_id:
        event.event_id = new_event_id()
    return event


def _timestamp(value: datetime | Timestamp) -> Timestamp:
    if isinstance(value, Timestamp):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time would silently be taken as UTC and land in the wrong day.
        raise ValueError(f"occurred_at needs a time zone: {value!r}")
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def make_event(*, user_id: str, action: str, **fields: Unpack[EventFields]) -> pb.ActivityEvent:
    """An ActivityEvent from keyword arguments; `tenant_id` is required here."""
    tenant_id = fields.get("tenant_id", "")
    if not tenant_id:
        raise ValueError("tenant_id is required (or give the client a default tenant_id)")
    event = pb.ActivityEvent(
        tenant_id=tenant_id,
        event_id=fields.get("event_id") or new_event_id(),
        user_id=user_id,
        action=action,
        target_user_id=fields.get("target_user_id", ""),
        group_id=fields.get("group_id", ""),
        department_id=fields.get("department_id", ""),
        quantity=fields.get("quantity", 0),
        attributes=dict(fields.get("attributes", {})),
    )
    occurred_at = fields.get("occurred_at")
    if occurred_at is not None:
        event.occurred_at.CopyFrom(_timestamp(occurred_at))
    return event


def wire_size(event: pb.ActivityEvent) -> int:
    """Bytes `event` adds to a RecordActivitiesRequest: tag, length, body."""
    size = event.ByteSize()
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


def chunk_events(
    events: Sequence[pb.ActivityEvent], max_events: int, max_bytes: int
) -> list[list[pb.ActivityEvent]]:
    """Consecutive chunks of at most `max_events` events and `max_bytes`
    serialized request bytes each (an event bigger than that alone is a chunk
    of its own, for the server to refuse)."""
    chunks: list[list[pb.ActivityEvent]] = []
    current: list[pb.ActivityEvent] = []
    size = 0
    for event in events:
        n = wire_size(event)
        if current and (len(current) >= max_events or size + n > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(event)
        size += n
    if current:
        chunks.append(current)
    return chunks
