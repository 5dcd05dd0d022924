"""Settings: one frozen object, every field an environment variable with a
default. docs/configuration.md lists them all (tests/test_docs.py checks)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pointsd.service.clock import Clock, StartedClock, parse_instant, system_clock

__all__ = ["ConfigError", "Settings"]


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Settings:
    # Where the gRPC server listens.
    listen: str = "127.0.0.1:50051"
    # Server processes sharing the port (SO_REUSEPORT); 1 = this process serves.
    workers: int = 1
    # Let other processes bind the same port (set for workers by the parent).
    reuse_port: bool = False
    # Real servers; when unset, embedded ones are started in data_dir.
    redis_url: str = ""
    database_url: str = ""
    # REDIS_URL names a node of a Redis Cluster.
    redis_cluster: bool = False
    data_dir: Path = Path(".pointsd")
    # Rule book YAML; empty = the packaged default
    # (service/pointsd/service/rules/default_rules.yaml).
    rules_file: str = ""
    # Prefix of every Redis key, so deployments can share a Redis.
    redis_prefix: str = "pts"
    # Shards per tenant unless the rule file says otherwise.
    shards: int = 1
    # Accepted event time window relative to the server clock.
    event_max_age_s: int = 72 * 3600
    event_future_skew_s: int = 300
    # Request limits.
    batch_events_max: int = 1000
    request_bytes_max: int = 4 * 1024 * 1024
    attributes_max: int = 16
    quantity_max: int = 100_000
    ledger_page_size_max: int = 500
    # Hot path batching (see storage/pointsd/storage/redis/awards.py).
    ingest_ops_per_call_max: int = 500
    ingest_ops_per_round_trip_max: int = 2000
    ingest_inflight_max: int = 1
    ingest_coalesce_us: int = 2000
    ingest_coalesce_ops: int = 64
    stream_inflight_max: int = 512
    # Outbox entries per shard above which awards are refused (RESOURCE_EXHAUSTED).
    outbox_entries_max: int = 2_000_000
    # Ledger flusher.
    # Where the ledger flusher runs under `serve`: "process" (a child process,
    # the default), "inline" (in the server's event loop) or "off".
    flusher: str = "process"
    flush_interval_ms: int = 200
    flush_batch_rows_max: int = 5000
    flush_claim_idle_ms: int = 30_000
    flush_backoff_max_ms: int = 5000
    # Hall of fame: how often to look for closed weeks/months, and how long
    # after a period ends its winners are recorded (-1: POINTS_EVENT_MAX_AGE_S
    # + POINTS_EVENT_FUTURE_SKEW_S, when no late event can change it anymore).
    winners_interval_s: float = 60.0
    winners_delay_s: int = -1
    # How often the flusher role's farming pass judges the ledger, settles
    # decided flags and holds flagged users (docs/farming.md).
    farming_interval_s: float = 60.0
    # Redemptions a process left half-way (it died) are finished by a sweep
    # every interval, once idle this long.
    redeem_recovery_interval_s: float = 10.0
    redeem_recovery_after_s: float = 30.0
    # Start-up and shutdown.
    migrate_on_start: bool = True
    shutdown_grace_s: float = 10.0
    # Pools and timeouts.
    redis_pool_max: int = 64
    redis_timeout_s: float = 5.0
    # When an answer may be given (docs/configuration.md#durability):
    # "always", Redis fsyncs its AOF before it answers; "everysec", once a
    # second (a host crash may lose the last second of acknowledged awards).
    # Unset: the embedded Redis runs "always"; a REDIS_URL's is not checked.
    redis_fsync: str = ""
    db_pool_size: int = 5
    db_timeout_s: float = 5.0
    # Authentication and authorisation of every call (docs/security.md):
    # "on" (the default) or "off" (development only: logged loudly).
    auth: str = "on"
    # How often each process re-reads the token table (changes are seen
    # within this plus a PostgreSQL round trip; the bound promised is 5 s).
    auth_refresh_s: float = 2.0
    # Server TLS: certificate chain and private key (PEM); both or neither.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Mutual TLS: CA bundle client certificates must chain to.
    tls_client_ca_file: str = ""
    # With a client CA: "optional" (a certificate stands for a caller, else a
    # bearer token) or "require" (no connection without a valid certificate).
    tls_client_auth: str = "optional"
    # YAML mapping client certificate subjects to callers (roles, tenants).
    tls_client_callers_file: str = ""
    # Prometheus metrics on this port; 0 = off.
    metrics_port: int = 0
    log_level: str = "INFO"
    # "text" lines or "json" objects, one a line (service/pointsd/service/logs.py).
    log_format: str = "text"
    # For tests, demos and simulations only: the service clock starts at this
    # instant (ISO-8601 with a UTC offset) and runs at real speed. Empty = the
    # system clock.
    clock_start: str = ""
    # The same, as a shift of the system clock in ms: what serve passes to its
    # child processes, so that they (and one restarted later) share its time.
    clock_offset_ms: int = 0

    def clock(self) -> Clock:
        if self.clock_start:
            return StartedClock(parse_instant(self.clock_start))
        if self.clock_offset_ms:
            return StartedClock(offset_ms=self.clock_offset_ms)
        return system_clock

    @property
    def winners_delay(self) -> int:
        if self.winners_delay_s >= 0:
            return self.winners_delay_s
        return self.event_max_age_s + self.event_future_skew_s

    @classmethod
    def env_name(cls, field_name: str) -> str:
        if field_name in ("redis_url", "database_url"):
            return field_name.upper()
        return "POINTS_" + field_name.upper()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = cls.env_name(f.name)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, raw, type(getattr(cls(), f.name)))
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        # The order of the checks decides which error a bad environment reports.
        self._check_positive()
        if self.redeem_recovery_after_s < 0:
            raise ConfigError(
                f"POINTS_REDEEM_RECOVERY_AFTER_S must be >= 0, got {self.redeem_recovery_after_s}"
            )
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(
                f"POINTS_LOG_LEVEL: must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"POINTS_LOG_FORMAT: must be text or json, got {self.log_format!r}")
        self._check_ports()
        self._check_urls()
        if self.event_future_skew_s < 0 or self.outbox_entries_max < 0:
            raise ConfigError(
                "POINTS_EVENT_FUTURE_SKEW_S and POINTS_OUTBOX_ENTRIES_MAX must be >= 0"
            )
        self._check_clock_start()
        self._check_security()
        self._check_durability()
        if not 1 <= self.farming_interval_s <= 3600:
            raise ConfigError(
                "POINTS_FARMING_INTERVAL_S must be between 1 and 3600, "
                f"got {self.farming_interval_s}"
            )
        if self.flusher not in ("process", "inline", "off"):
            raise ConfigError(
                f"POINTS_FLUSHER: must be process, inline or off, got {self.flusher!r}"
            )

    def _check_durability(self) -> None:
        if self.redis_fsync not in ("", "always", "everysec"):
            raise ConfigError(
                f"POINTS_REDIS_FSYNC: must be always or everysec (or unset), "
                f"got {self.redis_fsync!r}"
            )

    def _check_security(self) -> None:
        if self.auth not in ("on", "off"):
            raise ConfigError(f"POINTS_AUTH: must be on or off, got {self.auth!r}")
        if not 0 < self.auth_refresh_s <= 4:
            raise ConfigError(
                f"POINTS_AUTH_REFRESH_S must be > 0 and <= 4 (changes must reach every "
                f"process within 5 s), got {self.auth_refresh_s}"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("set POINTS_TLS_CERT_FILE and POINTS_TLS_KEY_FILE together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError(
                "POINTS_TLS_CLIENT_CA_FILE needs server TLS: set POINTS_TLS_CERT_FILE "
                "and POINTS_TLS_KEY_FILE"
            )
        if self.tls_client_auth not in ("optional", "require"):
            raise ConfigError(
                f"POINTS_TLS_CLIENT_AUTH: must be optional or require, got {self.tls_client_auth!r}"
            )
        if self.tls_client_callers_file and not self.tls_client_ca_file:
            raise ConfigError(
                "POINTS_TLS_CLIENT_CALLERS_FILE needs POINTS_TLS_CLIENT_CA_FILE (mutual TLS)"
            )

    def _check_positive(self) -> None:
        positive = [
            "workers",
            "shards",
            "event_max_age_s",
            "batch_events_max",
            "request_bytes_max",
            "attributes_max",
            "quantity_max",
            "ledger_page_size_max",
            "ingest_ops_per_call_max",
            "ingest_ops_per_round_trip_max",
            "ingest_inflight_max",
            "ingest_coalesce_ops",
            "stream_inflight_max",
            "flush_interval_ms",
            "flush_batch_rows_max",
            "flush_claim_idle_ms",
            "flush_backoff_max_ms",
            "redis_pool_max",
            "db_pool_size",
            "redis_timeout_s",
            "db_timeout_s",
            "shutdown_grace_s",
            "winners_interval_s",
            "redeem_recovery_interval_s",
        ]
        for name in positive:
            value = getattr(self, name)
            # "not >" also catches NaN.
            if not value > 0:
                raise ConfigError(f"{self.env_name(name)} must be > 0, got {value}")

    def _check_ports(self) -> None:
        _host, colon, port = self.listen.rpartition(":")
        # host:port, or a gRPC unix: address.
        if not self.listen.startswith("unix:") and (
            not colon or not port.isdigit() or not 0 <= int(port) <= 65535
        ):
            raise ConfigError(f"POINTS_LISTEN must be host:port, got {self.listen!r}")
        # Workers and the flusher take the ports after it (see server.py).
        if self.metrics_port and not 0 < self.metrics_port + self.workers <= 65535:
            raise ConfigError(
                f"POINTS_METRICS_PORT must leave room for {self.workers} more port(s) "
                f"below 65536, got {self.metrics_port}"
            )

    def _check_urls(self) -> None:
        # A wrong scheme would otherwise surface as a driver traceback at the
        # first connection; the URL itself is not echoed (it may hold a password).
        for name, url, schemes in (
            ("REDIS_URL", self.redis_url, _REDIS_SCHEMES),
            ("DATABASE_URL", self.database_url, _DATABASE_SCHEMES),
        ):
            scheme = url.partition("://")[0].lower() if "://" in url else ""
            if url and scheme not in schemes:
                given = f"{scheme}://" if scheme else "no scheme"
                raise ConfigError(
                    f"{name} must start with {', '.join(s + '://' for s in schemes)} "
                    f"(got {given}); unset it to use the embedded server"
                )

    def _check_clock_start(self) -> None:
        if self.clock_start and self.clock_offset_ms:
            raise ConfigError("set POINTS_CLOCK_START or POINTS_CLOCK_OFFSET_MS, not both")
        if self.clock_start:
            try:
                parse_instant(self.clock_start)
            except ValueError as exc:
                raise ConfigError(f"POINTS_CLOCK_START: {exc}") from None


_REDIS_SCHEMES = ("redis", "rediss", "unix")
_DATABASE_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL")


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw.replace("_", ""))
        if kind is float:
            return float(raw)
        if issubclass(kind, Path):
            return Path(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{name}: cannot read {raw!r} as {kind.__name__}") from None
