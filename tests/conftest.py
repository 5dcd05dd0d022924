"""Shared fixtures: real Redis and PostgreSQL, real in-process gRPC servers.

Servers: REDIS_URL / DATABASE_URL when set (e.g. this machine's services),
else embedded ones started once per session in a temporary folder, exactly
as `pointsd serve` would. Every test works in its own fresh tenant(s), so
tests never see each other's keys or ledger rows.

Clock: every test runs at an instant (tests/clock.py): the real time, or
with `--at NAME|ISO` (or POINTS_TEST_AT) the one given; tests marked
`calendar` run at every standard instant unless `--at` pins one. The apps a
test starts read that clock.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
import redis as sync_redis
from sqlalchemy import create_engine, text

from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.app import App
from pointsd.service.config import Settings
from pointsd.service.rules import RuleBook, load_rule_file, parse_rule_book
from pointsd.service.rules.loader import without_progression
from pointsd.service.server import Running, start_server
from pointsd.storage.embedded import EmbeddedPostgres, EmbeddedRedis
from pointsd.storage.postgres import migrate, sqlalchemy_url
from scripts.tokens import aio_channel, service_token
from tests import clock as test_clock
from tests.clock import INSTANTS, NOW, Instant, TestClock, instant_named


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("clock", "the instant tests run at (tests/clock.py)")
    group.addoption(
        "--at",
        default=os.environ.get("POINTS_TEST_AT", ""),
        help="run every test at this instant: a name from tests/clock.py INSTANTS "
        "(e.g. w53-jan1) or ISO-8601 with offset; default: the real time, and "
        "calendar tests at every standard instant",
    )
    group.addoption(
        "--zone",
        default=os.environ.get("POINTS_TEST_ZONE", ""),
        help="IANA zone of the test tenants with --at (default: the instant's own)",
    )


def _pinned(config: pytest.Config) -> Instant | None:
    at = config.getoption("--at")
    return instant_named(at, config.getoption("--zone")) if at else None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the image's wheel build (a venv and a mypyc compile: minutes)
    now, in the background, when a selected test needs it: it is done by
    the time tests/test_containers.py runs. A failure to start it is the
    image_wheel fixture's, not the session's."""
    if session.config.option.collectonly:
        return
    if any("image_wheel" in getattr(item, "fixturenames", ()) for item in session.items):
        from tests import test_containers

        folder = Path(tempfile.mkdtemp(prefix="pointsd-image-"))
        session.config.add_cleanup(lambda: _stop_image_build(folder))
        try:
            test_containers.STARTED.append(test_containers.WheelBuild(folder))
        except Exception as exc:  # reported by the tests that need the wheel
            _IMAGE_BUILD_FAILED.append(exc)


_IMAGE_BUILD_FAILED: list[BaseException] = []


@pytest.fixture(scope="session")
def image_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's wheel (hot path compiled: tests/test_containers.py's
    WheelBuild), built once per session."""
    from tests import test_containers

    if _IMAGE_BUILD_FAILED:
        raise _IMAGE_BUILD_FAILED[0]
    if not test_containers.STARTED:
        test_containers.STARTED.append(test_containers.WheelBuild(tmp_path_factory.mktemp("image")))
    return test_containers.STARTED[0].wheel()


@pytest.fixture(scope="session")
def compiled_tree(image_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's wheel unpacked: PYTHONPATH=<it> runs its compiled modules."""
    folder = tmp_path_factory.mktemp("compiled")
    with zipfile.ZipFile(image_wheel) as wheel:
        wheel.extractall(folder)
    return folder


def _stop_image_build(folder: Path) -> None:
    from tests import test_containers

    for build in test_containers.STARTED:
        build.stop()
    test_containers.STARTED.clear()
    shutil.rmtree(folder, ignore_errors=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "instant" not in metafunc.fixturenames or _pinned(metafunc.config) is not None:
        return
    if metafunc.definition.get_closest_marker("calendar"):
        chosen = [NOW, *INSTANTS]
        metafunc.parametrize("instant", chosen, indirect=True, ids=[i.name for i in chosen])


@pytest.fixture
def instant(request: pytest.FixtureRequest) -> Instant:
    param: Instant | None = getattr(request, "param", None)
    return param or _pinned(request.config) or NOW


@pytest.fixture(autouse=True)
def clock(instant: Instant) -> TestClock:
    """The current test's clock, started at its instant."""
    return test_clock.use(instant)


@pytest.fixture
def zone(clock: TestClock) -> ZoneInfo:
    """The zone test tenants live in unless a test names one."""
    return test_clock.zone()


@dataclass
class Servers:
    redis_url: str
    database_url: str
    embedded_pg: EmbeddedPostgres | None = None
    embedded_redis: EmbeddedRedis | None = None

    @property
    def embedded(self) -> bool:
        return self.embedded_pg is not None


def server_data_dir() -> Path:
    """A folder for embedded servers outside pytest's private (0700) tree:
    PostgreSQL runs as another user when the tests run as root."""
    return Path(tempfile.mkdtemp(prefix="pointsd-test-"))


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    redis_url = os.environ.get("REDIS_URL", "")
    database_url = os.environ.get("DATABASE_URL", "")
    er = ep = None
    data = server_data_dir()
    if not redis_url:
        er = EmbeddedRedis(data)
        redis_url = er.start()
    if not database_url:
        ep = EmbeddedPostgres(data)
        database_url = ep.start()
    migrate.upgrade(database_url)
    yield Servers(redis_url, database_url, ep, er)
    if er is not None:
        er.stop()
    if ep is not None:
        ep.stop()
    shutil.rmtree(data, ignore_errors=True)


def new_tenant(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def tenant() -> str:
    return new_tenant()


def rule_book(
    tenants: dict[str, dict[str, Any]] | list[str],
    *,
    actions: dict[str, Any] | None = None,
    boards: dict[str, Any] | None = None,
    progression: bool = False,
) -> RuleBook:
    """The default rule set for `tenants` (id -> {timezone, shards}; the zone
    defaults to the current instant's), with `actions` and `boards` added to
    or replacing the default ones. Without levels, badges and tasks unless
    `progression` (their bonuses would change the core tests' balances)."""
    doc = load_rule_file(None)
    if not progression:
        without_progression(doc)
    if actions:
        doc["rule_sets"]["default"]["actions"].update(actions)
    if boards:
        doc["rule_sets"]["default"]["boards"].update(boards)
    if isinstance(tenants, list):
        tenants = {t: {} for t in tenants}
    doc["tenants"] = [
        {
            "id": t,
            "timezone": o.get("timezone", test_clock.zone().key),
            "shards": o.get("shards", 1),
        }
        for t, o in tenants.items()
    ]
    return parse_rule_book(doc)


def settings_for(servers: Servers, tmp: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": servers.redis_url,
        "database_url": servers.database_url,
        "data_dir": tmp,
        "migrate_on_start": False,
        "flush_interval_ms": 20,
        "flusher": "inline",
        "shutdown_grace_s": 5.0,
    }
    base.update(overrides)
    return Settings(**base)


@dataclass
class Api:
    app: App
    running: Running
    channel: grpc.aio.Channel
    stub: pb_grpc.PointsServiceStub
    tenant: str
    tenants: list[str] = field(default_factory=list)
    # The all-roles, all-tenants token `channel` sends (scripts/tokens.py).
    token: str = ""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"


ApiFactory = Callable[..., Awaitable[Api]]


def _cleanup_tenants(servers: Servers, tenants: list[str], prefix: str = "pts") -> None:
    r = sync_redis.Redis.from_url(servers.redis_url)
    try:
        for t in tenants:
            # One UNLINK per thousand keys: a load test's tenant has tens of
            # thousands (one round trip each took seconds per test).
            keys: list[bytes] = []
            for key in r.scan_iter(match=f"{prefix}:{{{t}:*", count=1000):
                keys.append(key)
                if len(keys) >= 1000:
                    r.unlink(*keys)
                    keys.clear()
            if keys:
                r.unlink(*keys)
    finally:
        r.close()


@pytest.fixture
async def make_api(servers: Servers, tmp_path: Path) -> AsyncIterator[ApiFactory]:
    """Start apps + in-process gRPC servers on port 0; all stopped after the test."""
    started: list[Api] = []

    async def factory(
        tenants: dict[str, dict[str, Any]] | list[str] | None = None,
        *,
        actions: dict[str, Any] | None = None,
        boards: dict[str, Any] | None = None,
        book: RuleBook | None = None,
        progression: bool = False,
        **overrides: Any,
    ) -> Api:
        if book is None:
            book = rule_book(
                tenants or [new_tenant()], actions=actions, boards=boards, progression=progression
            )
        # Every call of the test carries a token of every role and tenant
        # (auth is on, as in production); tests of refusals open their own.
        token = service_token(servers.database_url, "tests")
        app = await App.open(
            settings_for(servers, tmp_path, **overrides), rules=book, clock=test_clock.current()
        )
        running = await start_server(app, "127.0.0.1:0")
        channel = aio_channel(f"127.0.0.1:{running.port}", token)
        names = sorted(book.tenants)
        api = Api(
            app, running, channel, pb_grpc.PointsServiceStub(channel), names[0], names, token=token
        )
        started.append(api)
        return api

    yield factory
    for api in reversed(started):
        await api.channel.close()
        await api.running.stop(grace_s=2)
    _cleanup_tenants(servers, [t for api in started for t in api.tenants])


@pytest.fixture
async def api(make_api: ApiFactory, tenant: str) -> Api:
    return await make_api([tenant])


@pytest.fixture(scope="session")
def sql(servers: Servers) -> Iterator[Callable[..., list[Any]]]:
    """Run a query on the test database synchronously (assertions only)."""
    engine = create_engine(sqlalchemy_url(servers.database_url), pool_pre_ping=True)

    def run(query: str, **params: Any) -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(text(query), params).all())

    yield run
    engine.dispose()


@pytest.fixture(scope="session")
def rds(servers: Servers) -> Iterator[sync_redis.Redis]:
    r = sync_redis.Redis.from_url(servers.redis_url)
    yield r
    r.close()


LoseRedisData = Callable[..., None]


@pytest.fixture
def lose_redis_data(servers: Servers, rds: sync_redis.Redis) -> LoseRedisData:
    """Redis data loss, for rebuild tests. On the suite's own embedded Redis:
    FLUSHALL. On a server named by REDIS_URL, which may hold data that is not
    the suite's (a developer's keys, another run's tenants): every key of the
    given tenants, which is all the state a rebuild of them has to restore."""

    def lose(*tenants: str) -> None:
        assert tenants, "name the tenants whose data is lost"
        if servers.embedded_redis is not None:
            rds.flushall()
        else:
            _cleanup_tenants(servers, list(tenants))

    return lose


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float = 30.0, step_s: float = 0.05
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step_s)
