"""pointsd_client: the typed Python client of the pointsd activity points
service (`points.v1`), for IM servers and other callers.

    from pointsd_client import Batcher, PointsClient, pb

docs/client.md in the pointsd repository: usage, retries and deadlines.
The generated messages and stubs are `pointsd_client.v1.points_pb2` (here as
`pb`) and `pointsd_client.v1.points_pb2_grpc` (AdminService, raw stubs).
"""

from pointsd_client.batcher import Batcher, OnError
from pointsd_client.client import DEFAULT_TIMEOUT_S, PointsClient, SyncPointsClient
from pointsd_client.events import (
    BATCH_EVENTS_MAX,
    REQUEST_BYTES_MAX,
    EventDetails,
    EventFields,
    chunk_events,
    ensure_event_id,
    make_event,
    new_event_id,
)
from pointsd_client.retry import DEFAULT_RETRY, NO_RETRY, RETRYABLE_CODES, RetryPolicy
from pointsd_client.stream import ActivityStream
from pointsd_client.v1 import points_pb2 as pb

__version__ = "0.1.0"

__all__ = [
    "BATCH_EVENTS_MAX",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT_S",
    "NO_RETRY",
    "REQUEST_BYTES_MAX",
    "RETRYABLE_CODES",
    "ActivityStream",
    "Batcher",
    "EventDetails",
    "EventFields",
    "OnError",
    "PointsClient",
    "RetryPolicy",
    "SyncPointsClient",
    "chunk_events",
    "ensure_event_id",
    "make_event",
    "new_event_id",
    "pb",
]
