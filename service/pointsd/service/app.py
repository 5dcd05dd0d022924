"""The application: settings in, every component wired and started.

Owns the lifecycle of what it opens (embedded servers, stores, the flusher),
so the gRPC server, the CLI commands and the tests share one way to start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pointsd.service.auth import Authenticator, Gate
from pointsd.service.clock import Clock, system_clock
from pointsd.service.config import ConfigError, Settings
from pointsd.service.ingest import Ingestor
from pointsd.service.metrics import FlushMeter, observe_award_round_trip
from pointsd.service.redeem import Redemptions
from pointsd.service.rules import RuleBook, RulesEngine, load_rule_book
from pointsd.service.tokens import PageTokens
from pointsd.service.validation import Limits
from pointsd.storage.embedded import EmbeddedPostgres, EmbeddedRedis
from pointsd.storage.flusher import Flusher
from pointsd.storage.keys import KeySchema, Shard, Topology
from pointsd.storage.postgres import create_engine, migrate
from pointsd.storage.postgres.tokens import TokenStore
from pointsd.storage.redis.secrets import shared_secret
from pointsd.storage.stores import Stores

if TYPE_CHECKING:
    from pointsd.service.farming import FarmingPass
    from pointsd.service.winners import WinnersRecorder

__all__ = ["App", "resolve_urls", "stop_owned"]

log = logging.getLogger("pointsd")

# Dedup records outlive the oldest accepted event by this margin.
_DEDUP_MARGIN_S = 86_400


async def resolve_urls(
    settings: Settings, *, redis: bool = True
) -> tuple[str, str, list[EmbeddedRedis | EmbeddedPostgres]]:
    """The configured URLs, starting embedded servers for the unset ones."""
    embedded: list[EmbeddedRedis | EmbeddedPostgres] = []
    redis_url, database_url = settings.redis_url, settings.database_url
    if not redis_url and redis:
        # Measured at 0.93 (batch) and 0.95 (unary) of everysec on this
        # machine (docs/benchmarks.md): the embedded default promises more.
        er = EmbeddedRedis(settings.data_dir, settings.redis_fsync or "always")
        redis_url = await asyncio.to_thread(er.start)
        embedded.append(er)
    if not database_url:
        ep = EmbeddedPostgres(settings.data_dir)
        try:
            database_url = await asyncio.to_thread(ep.start)
        except BaseException:
            await stop_owned(embedded)
            raise
        embedded.append(ep)
    return redis_url, database_url, embedded


@dataclass
class App:
    settings: Settings
    rules: RuleBook
    engine: RulesEngine
    limits: Limits
    stores: Stores
    ingestor: Ingestor
    redemptions: Redemptions
    flusher: Flusher
    tokens: PageTokens
    # Who may call what (service/pointsd/service/auth.py); started by start_server.
    gate: Gate
    redis_url: str
    database_url: str
    # Every "now" of the service (see service/pointsd/service/clock.py).
    clock: Clock
    embedded: list[EmbeddedRedis | EmbeddedPostgres] = field(default_factory=list)
    tls: Any = None  # ServerTls of the server, set by start_server
    # The token refresh's own connection (closed with the app): a busy
    # shared pool must not delay a revocation past its 5 s.
    auth_engine: Any = None

    @classmethod
    async def open(
        cls, settings: Settings, rules: RuleBook | None = None, *, clock: Clock | None = None
    ) -> App:
        if clock is None:
            clock = settings.clock()
            if clock is not system_clock:
                log.warning(
                    "the service clock reads %s, not the system clock (POINTS_CLOCK_START "
                    "or POINTS_CLOCK_OFFSET_MS): for tests and demos only",
                    datetime.fromtimestamp(clock() / 1000, UTC).isoformat(),
                )
        if rules is None:
            path = Path(settings.rules_file) if settings.rules_file else None
            rules = load_rule_book(path, default_shards=settings.shards)
        redis_url, database_url, embedded = await resolve_urls(settings)
        try:
            return await cls._assemble(settings, rules, clock, redis_url, database_url, embedded)
        except BaseException:
            # A start that fails half-way leaves no embedded server behind.
            await stop_owned(embedded)
            raise

    @classmethod
    async def _assemble(
        cls,
        settings: Settings,
        rules: RuleBook,
        clock: Clock,
        redis_url: str,
        database_url: str,
        embedded: list[EmbeddedRedis | EmbeddedPostgres],
    ) -> App:
        if settings.migrate_on_start:
            await asyncio.to_thread(migrate.upgrade, database_url)
        topology = Topology(
            KeySchema(settings.redis_prefix),
            {t.tenant_id: t.shards for t in rules.tenants.values()},
        )
        stores = await Stores.open(
            redis_url,
            database_url,
            topology,
            clock=clock,
            outbox_entries_max=settings.outbox_entries_max,
            ops_per_call_max=settings.ingest_ops_per_call_max,
            ops_per_round_trip_max=settings.ingest_ops_per_round_trip_max,
            inflight_max=settings.ingest_inflight_max,
            coalesce_us=settings.ingest_coalesce_us,
            coalesce_ops=settings.ingest_coalesce_ops,
            redis_cluster=settings.redis_cluster,
            redis_pool_max=settings.redis_pool_max,
            redis_timeout_s=settings.redis_timeout_s,
            db_pool_size=settings.db_pool_size,
            db_timeout_s=settings.db_timeout_s,
        )
        stores.awards.observer = observe_award_round_trip
        if settings.redis_url and settings.redis_fsync == "always":
            try:
                await check_fsync(stores.redis)
            except BaseException:
                await stores.close()
                raise
        retention_s = settings.event_max_age_s + settings.event_future_skew_s
        engine = RulesEngine(
            rules, state_retention_s=retention_s, dedup_retention_s=retention_s + _DEDUP_MARGIN_S
        )
        ingestor = Ingestor(engine, stores.awards, clock)
        tokens = PageTokens(
            lambda held: shared_secret(stores.redis, topology.schema.page_token_secret, held)
        )
        try:
            await tokens.start()
        except BaseException:
            await stores.close()
            raise
        shards = list(topology.all_shards())
        flusher = Flusher(
            stores.outbox,
            stores.ledger,
            lambda: shards,
            batch_rows_max=settings.flush_batch_rows_max,
            interval_ms=settings.flush_interval_ms,
            claim_idle_ms=settings.flush_claim_idle_ms,
            backoff_max_ms=settings.flush_backoff_max_ms,
            observer=FlushMeter(),
            clock=clock,
        )
        auth_engine = (
            create_engine(database_url, pool_size=1, timeout_s=settings.db_timeout_s)
            if settings.auth == "on"
            else None
        )
        return cls(
            settings=settings,
            rules=rules,
            engine=engine,
            limits=Limits(
                event_max_age_s=settings.event_max_age_s,
                event_future_skew_s=settings.event_future_skew_s,
                attributes_max=settings.attributes_max,
                quantity_max=settings.quantity_max,
            ),
            stores=stores,
            ingestor=ingestor,
            redemptions=Redemptions(
                stores,
                engine,
                clock,
                recovery_after_s=settings.redeem_recovery_after_s,
                recovery_interval_s=settings.redeem_recovery_interval_s,
            ),
            flusher=flusher,
            tokens=tokens,
            gate=Gate(
                Authenticator(TokenStore(auth_engine), clock, refresh_s=settings.auth_refresh_s)
                if auth_engine is not None
                else None
            ),
            redis_url=redis_url,
            database_url=database_url,
            clock=clock,
            embedded=embedded,
            auth_engine=auth_engine,
        )

    def winners_recorder(self) -> WinnersRecorder:
        from pointsd.service.winners import WinnersRecorder

        return WinnersRecorder(self, self.settings.winners_delay, self.settings.winners_interval_s)

    def farming_pass(self) -> FarmingPass:
        from pointsd.service.farming import FarmingPass

        return FarmingPass(self, self.settings.farming_interval_s)

    def shards(self) -> list[Shard]:
        return list(self.stores.topology.all_shards())

    async def close(self, *, stop_embedded: bool = True) -> None:
        await self.gate.close()
        if self.auth_engine is not None:
            await self.auth_engine.dispose()
        await self.stores.close()
        if stop_embedded:
            await stop_owned(self.embedded)


async def check_fsync(redis: Any) -> None:
    """POINTS_REDIS_FSYNC=always promises an award survives a host crash: the
    Redis at REDIS_URL must fsync every write. Refuse to start when it says
    it does not; warn when it does not say (CONFIG disabled, a cluster)."""
    try:
        got = await redis.config_get("append*")
    except Exception as exc:  # CONFIG renamed or denied (managed Redis)
        log.warning("POINTS_REDIS_FSYNC=always: cannot read the Redis AOF settings (%s); "
                    "make sure REDIS_URL's server runs appendonly yes, appendfsync always",
                    str(exc)[:120])  # fmt: skip
        return
    if isinstance(got, dict):
        got = {_text(k): _text(v) for k, v in got.items()}
    if not isinstance(got, dict) or "appendfsync" not in got:
        log.warning("POINTS_REDIS_FSYNC=always: the Redis AOF settings could not be read; "
                    "make sure it runs appendonly yes, appendfsync always")  # fmt: skip
        return
    mode, on = got.get("appendfsync"), got.get("appendonly")
    if (mode, on) != ("always", "yes"):
        raise ConfigError(
            f"POINTS_REDIS_FSYNC=always, but the Redis at REDIS_URL runs appendonly {on}, "
            f"appendfsync {mode}: set appendonly yes and appendfsync always there, or unset "
            "POINTS_REDIS_FSYNC"
        )


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


async def stop_owned(servers: Sequence[EmbeddedRedis | EmbeddedPostgres]) -> None:
    """Stop the embedded servers this process started (not reused ones)."""
    for server in servers:
        if server.owned:
            await asyncio.to_thread(server.stop)
