"""StreamActivities as an async context manager that sends events and yields
their results, resuming on a new stream after a failure that is safe to retry.

The protocol (docs/api.md): one result per event, in the order sent; a stream
that ends with an error status has answered every event it sent a result
for, and the rest may be sent again (the same ids: what the server had
recorded comes back DUPLICATE with its first result).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Self

import grpc
import grpc.aio

from pointsd_client.events import ensure_event_id
from pointsd_client.retry import RetryPolicy
from pointsd_client.v1 import points_pb2 as pb

__all__ = ["ActivityStream", "OpenStream"]

OpenStream = Callable[
    [AsyncIterator[pb.ActivityEvent]],
    grpc.aio.StreamStreamCall[pb.ActivityEvent, pb.ActivityResult],
]


class _Done:
    """The end of the results: after the last one, or the error that ended them."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class ActivityStream:
    """One logical StreamActivities pipe (made by `PointsClient.stream()`).

        async with points.stream() as stream:
            await stream.send(event)            # waits while max_inflight are unanswered
            ...
            stream.end()                        # no more events (leaving the block ends too)
            async for result in stream:         # one per event, in the order sent
                ...

    Sending and reading may run in different tasks. Leaving the block without
    an error ends sending and waits until every event is answered; results
    not read by then stay readable. After a retryable failure (the policy's
    codes, e.g. the server restarting) a new stream resends the unanswered
    events first; when the policy gives up, reading (and `send`, and leaving
    the block) raises the error and `unanswered` lists what to send again."""

    def __init__(
        self,
        open_call: OpenStream,
        *,
        retry: RetryPolicy,
        max_inflight: int = 1000,
        events: Iterable[pb.ActivityEvent] | AsyncIterable[pb.ActivityEvent] | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self._open = open_call
        self._retry = retry
        self._max_inflight = max_inflight
        self._source = events
        # Sent and not answered yet, in order: what a new stream resends.
        self._pending: deque[pb.ActivityEvent] = deque()
        self._outbox: asyncio.Queue[pb.ActivityEvent | None] = asyncio.Queue()
        self._results: asyncio.Queue[pb.ActivityResult | _Done] = asyncio.Queue()
        self._room = asyncio.Event()
        self._ended = False
        self._error: BaseException | None = None
        self._done = False
        self._call: grpc.aio.StreamStreamCall[pb.ActivityEvent, pb.ActivityResult] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._feeder: asyncio.Task[None] | None = None
        self.reconnects = 0

    @property
    def unanswered(self) -> list[pb.ActivityEvent]:
        """Events sent that have no result yet."""
        return list(self._pending)

    # The context manager ---------------------------------------------------

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self._run())
        if self._source is not None:
            self._feeder = asyncio.create_task(self._feed(self._source))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            await self._abandon()
            return
        try:
            if self._feeder is not None:
                await self._feeder
            self.end()
            await self.wait()
        except BaseException:
            await self._abandon()
            raise

    async def wait(self) -> None:
        """Until every event sent is answered and the stream is over; raises
        the error that ended it, if any. Call `end()` first."""
        if self._runner is not None:
            await asyncio.shield(self._runner)
        if self._error is not None:
            raise self._error

    async def _abandon(self) -> None:
        for task in (self._feeder, self._runner):
            if task is not None:
                task.cancel()
        if self._call is not None:
            self._call.cancel()
        for task in (self._feeder, self._runner):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        # A reader in another task must not wait for results that never come.
        self._finish(RuntimeError("the stream was abandoned"))

    # Sending ---------------------------------------------------------------

    async def send(self, event: pb.ActivityEvent) -> str:
        """Queue `event` (an id is given first if it has none) and return its id."""
        self._check_entered()
        ensure_event_id(event)
        while len(self._pending) >= self._max_inflight and self._error is None:
            self._room.clear()
            await self._room.wait()
        if self._error is not None:
            raise self._error
        if self._ended:
            raise RuntimeError("the stream was ended: no more events")
        self._pending.append(event)
        self._outbox.put_nowait(event)
        return event.event_id

    def end(self) -> None:
        """No more events: the stream closes once every event is answered."""
        if not self._ended:
            self._ended = True
            self._outbox.put_nowait(None)

    async def _feed(
        self, events: Iterable[pb.ActivityEvent] | AsyncIterable[pb.ActivityEvent]
    ) -> None:
        try:
            if isinstance(events, AsyncIterable):
                async for event in events:
                    await self.send(event)
            else:
                for event in events:
                    await self.send(event)
        finally:
            self.end()

    # Reading ---------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[pb.ActivityResult]:
        return self

    async def __anext__(self) -> pb.ActivityResult:
        self._check_entered()
        item = await self._results.get()
        if isinstance(item, _Done):
            self._results.put_nowait(item)  # every later read ends the same way
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    def _check_entered(self) -> None:
        if self._runner is None:
            raise RuntimeError("use the stream as `async with client.stream() as stream:`")

    # The streams underneath ------------------------------------------------

    def _connect(self) -> grpc.aio.StreamStreamCall[pb.ActivityEvent, pb.ActivityResult]:
        # A fresh queue per stream: the unanswered events first, then what is
        # sent from now on. A queue of a failed stream is never read again.
        self._outbox = asyncio.Queue()
        for event in self._pending:
            self._outbox.put_nowait(event)
        if self._ended:
            self._outbox.put_nowait(None)
        self._call = self._open(_drain(self._outbox))
        return self._call

    async def _run(self) -> None:
        attempt = 1
        while True:
            call = self._connect()
            try:
                async for result in call:
                    self._answer(result)
                    attempt = 1  # progress: the next failure starts a fresh budget
                self._finish(None)
                return
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if not self._retry.retries(code, attempt):
                    self._finish(exc)
                    return
            except Exception as exc:  # a broken protocol: end the results, not hang them
                call.cancel()
                self._finish(exc)
                return
            await asyncio.sleep(self._retry.backoff_s(attempt, code=code))
            attempt += 1
            self.reconnects += 1

    def _answer(self, result: pb.ActivityResult) -> None:
        if not self._pending:
            raise RuntimeError(f"a result for no event sent: {result.event_id!r}")
        self._pending.popleft()
        self._results.put_nowait(result)
        self._room.set()

    def _finish(self, error: BaseException | None) -> None:
        if self._done:
            return
        if error is None and (self._pending or not self._ended):
            error = RuntimeError(
                f"the server ended the stream early ({len(self._pending)} events unanswered)"
            )
        self._done = True
        self._error = error
        self._results.put_nowait(_Done(error))
        self._room.set()


async def _drain(queue: asyncio.Queue[pb.ActivityEvent | None]) -> AsyncIterator[pb.ActivityEvent]:
    while (event := await queue.get()) is not None:
        yield event
