"""Collect events from many callers and send them as RecordActivities batches,
when a batch is full or its first event has waited `max_delay_s`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

from pointsd_client.events import ensure_event_id, wire_size
from pointsd_client.retry import RetryPolicy
from pointsd_client.v1 import points_pb2 as pb

if TYPE_CHECKING:
    from pointsd_client.client import PointsClient

__all__ = ["Batcher", "OnError"]

log = logging.getLogger("pointsd_client")

# Told once per batch that failed for good: its events and the error.
OnError = Callable[[Sequence[pb.ActivityEvent], BaseException], None]
_Entry = tuple[pb.ActivityEvent, "asyncio.Future[pb.ActivityResult]"]


def _log_error(events: Sequence[pb.ActivityEvent], error: BaseException) -> None:
    log.error("%d events not recorded (send them again, same ids): %s", len(events), error)


class Batcher:
    """Batches for a busy server (asyncio):

        async with Batcher(points, max_events=500, max_delay_s=0.02) as batcher:
            future = await batcher.add(points.event(event_id=msg.id, user_id=msg.sender,
                                                    action="message.text"))
            # await future for the result, or let it go

    A batch goes out when it holds `max_events` events or the client's
    `request_bytes_max` bytes, or `max_delay_s` after its first event; up to
    `concurrency` batches are in flight at once, each retried by the
    client's policy (or `retry`). `add` waits while `max_pending` events are
    queued or in flight, so a slow or absent service slows the callers down
    instead of filling memory. A batch that fails for good fails the futures
    of its events and is reported once to `on_error` (default: logged).
    Leaving the block (or `close()`) sends what is queued and waits for it."""

    def __init__(
        self,
        client: PointsClient,
        *,
        max_events: int = 500,
        max_delay_s: float = 0.02,
        max_pending: int = 10_000,
        concurrency: int = 4,
        retry: RetryPolicy | None = None,
        on_error: OnError | None = None,
    ) -> None:
        if not 1 <= max_events <= client.batch_events_max:
            raise ValueError(f"max_events must be 1..{client.batch_events_max}, got {max_events}")
        if max_delay_s < 0 or max_pending < max_events or concurrency < 1:
            raise ValueError("need max_delay_s >= 0, max_pending >= max_events, concurrency >= 1")
        self._client = client
        self._max_events = max_events
        self._max_delay_s = max_delay_s
        self._retry = retry
        self._on_error = on_error or _log_error
        self._room = asyncio.Semaphore(max_pending)
        self._slots = asyncio.Semaphore(concurrency)
        self._queue: list[_Entry] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def add(self, event: pb.ActivityEvent) -> asyncio.Future[pb.ActivityResult]:
        """Queue `event` (given an id first if it has none); the future gets its result."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        ensure_event_id(event)
        await self._room.acquire()
        size = wire_size(event)
        if self._queue and self._bytes + size > self._client.request_bytes_max:
            self._cut()
        future: asyncio.Future[pb.ActivityResult] = asyncio.get_running_loop().create_future()
        self._queue.append((event, future))
        self._bytes += size
        if len(self._queue) >= self._max_events:
            self._cut()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_delay_s, self._cut)
        return future

    async def flush(self) -> None:
        """Send what is queued now and wait until every batch in flight is answered."""
        self._cut()
        # What was queued before this call, not what others add meanwhile.
        if sending := list(self._sending):
            await asyncio.gather(*sending)

    async def close(self) -> None:
        self._closed = True
        await self.flush()

    def _cut(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._queue:
            return
        batch, self._queue, self._bytes = self._queue, [], 0
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Entry]) -> None:
        events = [event for event, _ in batch]
        try:
            async with self._slots:
                results = await self._client.record_many(
                    events, batch_size=len(events), retry=self._retry
                )
        except Exception as exc:
            self._fail(batch, exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            for _, future in batch:
                future.cancel()  # only those still open: cancelled with the batcher
                self._room.release()

    def _fail(self, batch: list[_Entry], error: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(error)
                # Reported once below: no "exception never retrieved" per event.
                future.exception()
        self._on_error([event for event, _ in batch], error)
