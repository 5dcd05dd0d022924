"""Move ledger entries from the Redis outbox streams into PostgreSQL.

Loop: read a batch (new entries, or entries a dead flusher left pending) ->
write it in one idempotent INSERT -> acknowledge and delete it. While
PostgreSQL is unreachable the same batch is retried with capped exponential
backoff; entries wait in Redis and ingest goes on. An entry is acknowledged
only after its row is committed, so a crash at any point re-delivers it and
the unique entry key turns the second write into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pointsd.storage.entries import LedgerRow, decode_entry
from pointsd.storage.errors import LedgerDataError, StorageError, StorageUnavailable
from pointsd.storage.keys import Shard
from pointsd.storage.postgres.ledger import Ledger
from pointsd.storage.redis.outbox import Outbox, OutboxEntry

__all__ = ["FlushObserver", "FlushStats", "Flusher"]

log = logging.getLogger("pointsd.flusher")

# How often a running flusher drops the group's consumers of dead processes.
_TIDY_INTERVAL_S = 600.0


@dataclass(slots=True)
class FlushStats:
    rows_written: int = 0
    rows_redelivered: int = 0
    entries_dead: int = 0
    conflicts: int = 0
    batches: int = 0
    failures: int = 0
    # recorded_at -> committed, of the entries of the last batch, in ms.
    lag_ms_last: list[int] = field(default_factory=list)
    last_error: str = ""


class FlushObserver(Protocol):
    """Told what the flusher does (metrics; the service injects one)."""

    def flushed(self, inserted: int, duplicates: int, lag_ms: Sequence[int]) -> None:
        """A batch committed: rows new to the ledger, rows it had already,
        and each row's recorded_at -> committed lag."""

    def parked(self, reason: str, count: int) -> None:
        """Entries parked in dead letters: "malformed", "refused", "conflict"."""

    def failed(self, exc: StorageError) -> None:
        """A flush attempt failed; it is retried."""


class Flusher:
    def __init__(
        self,
        outbox: Outbox,
        ledger: Ledger,
        shards: Callable[[], Sequence[Shard]],
        *,
        batch_rows_max: int = 5000,
        interval_ms: int = 50,
        claim_idle_ms: int = 30_000,
        backoff_max_ms: int = 5_000,
        observer: FlushObserver | None = None,
        clock: Callable[[], int],
    ) -> None:
        self.outbox = outbox
        self.ledger = ledger
        self.shards = shards
        self.batch_rows_max = batch_rows_max
        self.interval_ms = interval_ms
        self.claim_idle_ms = claim_idle_ms
        self.backoff_max_ms = backoff_max_ms
        self.observer = observer
        # Keys of the batch in hand that clash with ledger rows (for metrics).
        self._batch_conflict_keys: set[tuple[str, str]] = set()
        # The service clock (ms), which stamped recorded_at: lag is read on it.
        self.clock = clock
        self.stats = FlushStats()
        self._groups_ready = False
        self._next_claim = 0.0
        # Since when writes have failed in a row (valid while stats.failures > 0).
        self._failing_since = 0.0
        self._last_failure_at = 0.0
        # One batch at a time: drain() and run() share this consumer's pending
        # entries and must not both write (and park) the same ones.
        self._batch_lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush until `stop` is set; the batch in hand is finished first."""
        log.info("flusher %s started", self.outbox.consumer)
        tidy_at = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= tidy_at:
                    tidy_at = time.monotonic() + _TIDY_INTERVAL_S
                    removed = await self.outbox.forget_stale_consumers(list(self.shards()))
                    if removed:
                        log.info("removed %d idle consumer(s) of dead processes", removed)
                moved = await self.flush_once(stop)
            except StorageError as exc:
                self._failed(exc)
                await self._sleep(stop, self._backoff_s(self.stats.failures))
                continue
            # Loop at once only after a full batch; otherwise wait an interval
            # so rows accumulate: a few big transactions instead of many tiny
            # ones (flush lag grows by at most one interval).
            if moved < self.batch_rows_max:
                await self._sleep(stop, self.interval_ms / 1000)
        log.info("flusher %s stopped: %s", self.outbox.consumer, self.summary())

    async def drain(
        self,
        timeout_s: float,
        shards: Sequence[Shard] | None = None,
        *,
        unreachable_s: float | None = None,
    ) -> bool:
        """Flush until every outbox stream (or those of `shards`) is empty;
        False on timeout, or once a store has been unreachable for
        `unreachable_s` in a row (a shutdown need not wait out its grace for a
        server that is down: the entries stay in the outbox for the next flusher)."""
        deadline = time.monotonic() + timeout_s
        # Set at the deadline: a write retrying while PostgreSQL is down gives
        # up then (its entries stay pending) instead of outliving the timeout.
        stop = asyncio.Event()
        timer = asyncio.get_running_loop().call_later(timeout_s, stop.set)
        watch = (
            asyncio.create_task(self._stop_when_unreachable(stop, unreachable_s))
            if unreachable_s is not None
            else None
        )
        try:
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    await self.flush_once(stop, claim_idle_ms=0)
                    if await self.outbox.backlog(shards or self.shards()) == 0:
                        return True
                except StorageError as exc:
                    self._failed(exc)
                    await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            return False
        finally:
            timer.cancel()
            if watch is not None:
                watch.cancel()

    async def _stop_when_unreachable(self, stop: asyncio.Event, seconds: float) -> None:
        # Only failures of this drain count: the run loop may have left a
        # stale count behind (a blip hours ago, or a backoff cut short).
        started = time.monotonic()
        while not stop.is_set():
            failing_since = max(self._failing_since, started)
            if (
                self.stats.failures
                and self._last_failure_at >= started
                and time.monotonic() - failing_since >= seconds
            ):
                log.warning(
                    "giving up the drain: %s for %.0f s; the outbox keeps the rest",
                    self.stats.last_error,
                    seconds,
                )
                stop.set()
            await asyncio.sleep(0.1)

    async def flush_once(self, stop: asyncio.Event, claim_idle_ms: int | None = None) -> int:
        """Move one batch; returns how many stream entries it handled."""
        async with self._batch_lock:
            return await self._flush_once(stop, claim_idle_ms)

    async def _flush_once(self, stop: asyncio.Event, claim_idle_ms: int | None) -> int:
        shards = list(self.shards())
        if not shards:
            return 0
        if not self._groups_ready:
            await self.outbox.ensure_groups(shards)
            self._groups_ready = True
        entries = await self._next_batch(shards, claim_idle_ms)
        if not entries:
            return 0
        rows, kept, dead = self._decode(entries)
        malformed = len(dead)
        refused_keys = await self._write(rows, stop)
        if refused_keys is None:
            return 0  # stopping while the database is down: entries stay pending
        if refused_keys:
            for entry, row in zip(kept, rows, strict=True):
                if (row.tenant_id, row.entry_key) in refused_keys:
                    dead.append(entry)
        await self.outbox.ack(kept, dead)
        self.stats.entries_dead += len(dead)
        if self.observer is not None and dead:
            # Counted once parked: a failed ack re-delivers (and re-parks) them.
            keys = refused_keys or set()
            self._observe_parked(malformed, [r for r in rows if (r.tenant_id, r.entry_key) in keys])
        return len(entries)

    def _observe_parked(self, malformed: int, parked: list[LedgerRow]) -> None:
        assert self.observer is not None
        clash = self._batch_conflict_keys
        conflicts = sum((r.tenant_id, r.entry_key) in clash for r in parked)
        self.observer.parked("malformed", malformed)
        self.observer.parked("conflict", conflicts)
        self.observer.parked("refused", len(parked) - conflicts)

    async def _next_batch(
        self, shards: list[Shard], claim_idle_ms: int | None
    ) -> list[OutboxEntry]:
        per_shard = max(1, self.batch_rows_max // len(shards))
        entries: list[OutboxEntry] = []
        idle = self.claim_idle_ms if claim_idle_ms is None else claim_idle_ms
        if claim_idle_ms is not None or time.monotonic() >= self._next_claim:
            # Own pending entries first (a write that failed before a restart
            # of this loop), then those of consumers that went quiet.
            entries = await self.outbox.pending_own(shards, per_shard)
            if not entries:
                entries = await self.outbox.claim(shards, idle, per_shard)
            if not entries:
                self._next_claim = time.monotonic() + self.claim_idle_ms / 2000
        if not entries:
            entries = await self.outbox.read(shards, per_shard)
        return entries

    @staticmethod
    def _decode(
        entries: list[OutboxEntry],
    ) -> tuple[list[LedgerRow], list[OutboxEntry], list[OutboxEntry]]:
        """The rows of the well-formed entries, those entries, and the
        malformed ones (to park)."""
        rows: list[LedgerRow] = []
        kept: list[OutboxEntry] = []
        dead: list[OutboxEntry] = []
        for entry in entries:
            try:
                rows.append(decode_entry(entry.shard.tenant_id, entry.fields))
                kept.append(entry)
            except (KeyError, ValueError, TypeError) as exc:
                log.error(
                    "outbox entry %s on %s is malformed (%s); parked in %s",
                    entry.entry_id,
                    entry.shard.outbox,
                    exc,
                    entry.shard.dead_letters,
                )
                dead.append(entry)
        return rows, kept, dead

    async def _write(
        self, rows: list[LedgerRow], stop: asyncio.Event
    ) -> set[tuple[str, str]] | None:
        """Write rows, retrying while PostgreSQL is unreachable. Returns the
        keys of rows PostgreSQL refused, or None if stopped before writing."""
        attempt = 0
        while True:
            try:
                result = await self.ledger.write(rows)
                refused: list[LedgerRow] = []
                break
            except LedgerDataError as exc:
                log.error(
                    "ledger refused a batch of %d rows (%s); writing one by one", len(rows), exc
                )
                result, refused = await self.ledger.write_each(rows)
                break
            except StorageUnavailable as exc:
                attempt += 1
                self._failed(exc)
                if stop.is_set():
                    return None
                await self._sleep(stop, self._backoff_s(attempt))
        now_ms = self.clock()
        written = result.inserted
        self.stats.batches += 1
        self.stats.rows_written += written
        duplicates = len(rows) - written - len(refused) - len(result.conflicts)
        self.stats.rows_redelivered += duplicates
        self.stats.failures = 0
        self.stats.lag_ms_last = [max(0, now_ms - r.recorded_at_ms) for r in rows]
        self._batch_conflict_keys = {(r.tenant_id, r.entry_key) for r in result.conflicts}
        if self.observer is not None:
            self.observer.flushed(written, duplicates, self.stats.lag_ms_last)
        for row in refused:
            log.error("ledger refused entry %s of tenant %s: parked", row.entry_key, row.tenant_id)
        for row in result.conflicts:
            self.stats.conflicts += 1
            # What is known here: the ledger keeps its row and Redis applied
            # this entry. Whether Redis still counts the ledger's row too is
            # not known (it may have lost it), so neither is whether the
            # balances now differ.
            log.error(
                "entry %s of tenant %s (user %s, %+d points) differs from the ledger row "
                "already under that key: the ledger keeps its row, this entry is parked in "
                "the shard's dead letters. Redis applied this entry: if it also still counts "
                "the ledger's row, user %s is %+d points off the ledger and `pointsd "
                "reconcile` shows it; if Redis had lost that row, they agree",
                row.entry_key,
                row.tenant_id,
                row.user_id,
                row.points,
                row.user_id,
                row.points,
            )
        return {(r.tenant_id, r.entry_key) for r in [*refused, *result.conflicts]}

    def _failed(self, exc: StorageError) -> None:
        self._last_failure_at = time.monotonic()
        if not self.stats.failures:
            self._failing_since = self._last_failure_at
        self.stats.failures += 1
        self.stats.last_error = str(exc)
        if self.observer is not None:
            self.observer.failed(exc)
        level = logging.WARNING if self.stats.failures in (1, 10, 100) else logging.DEBUG
        log.log(level, "flush failed (attempt %d): %s", self.stats.failures, exc)

    def _backoff_s(self, attempt: int) -> float:
        cap = self.backoff_max_ms / 1000
        return random.uniform(0, min(cap, 0.05 * 2 ** min(attempt, 16)))

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    def summary(self) -> str:
        s = self.stats
        return (
            f"{s.rows_written} rows written, {s.rows_redelivered} redelivered, "
            f"{s.entries_dead} parked"
        )
