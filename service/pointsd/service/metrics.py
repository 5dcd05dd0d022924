"""Prometheus metrics (served when POINTS_METRICS_PORT is set)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from pointsd.storage.entries import LedgerRow
from pointsd.storage.flusher import FlushStats

__all__ = [
    "EVENTS",
    "FLUSH_LAG",
    "FLUSH_ROWS",
    "OUTBOX_BACKLOG",
    "RPC_ERRORS",
    "observe_flush",
    "serve_metrics",
]

EVENTS = Counter("points_events_total", "Events recorded, by outcome", ["outcome"])
RPC_ERRORS = Counter(
    "points_rpc_errors_total", "RPCs that ended with an error status", ["method", "code"]
)
FLUSH_ROWS = Counter("points_flush_rows_total", "Ledger rows written to PostgreSQL")
FLUSH_LAG = Histogram(
    "points_flush_lag_seconds",
    "From award to ledger row committed",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
OUTBOX_BACKLOG = Gauge("points_outbox_backlog", "Entries in the outbox streams")


def observe_flush(stats: FlushStats, rows: Sequence[LedgerRow]) -> None:
    FLUSH_ROWS.inc(len(rows))
    for lag_ms in stats.lag_ms_last:
        FLUSH_LAG.observe(lag_ms / 1000)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Metrics on host:port (the host gRPC listens on: loopback stays private)."""
    start_http_server(port, addr=host)
