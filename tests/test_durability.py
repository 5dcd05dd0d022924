"""POINTS_REDIS_FSYNC (docs/configuration.md#durability): the embedded Redis
runs the policy asked for, a reused one is switched to it, and with
`always` the service refuses a Redis at REDIS_URL that does not fsync every
write (an answer would not mean the award survives a host crash)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as sync_redis

from pointsd.service.app import App
from pointsd.service.config import ConfigError, Settings
from pointsd.storage.embedded import EmbeddedRedis
from tests import clock as test_clock
from tests.conftest import Servers, new_tenant, rule_book, server_data_dir, settings_for


def _policy(server: EmbeddedRedis) -> tuple[str, str]:
    r = sync_redis.Redis(unix_socket_path=str(server.socket), decode_responses=True)
    try:
        got = r.config_get("append*")
        return str(got["appendonly"]), str(got["appendfsync"])
    finally:
        r.close()


def test_the_setting_is_checked() -> None:
    Settings(redis_fsync="always").check()
    Settings(redis_fsync="").check()
    with pytest.raises(ConfigError, match="POINTS_REDIS_FSYNC: must be always or everysec"):
        Settings(redis_fsync="sometimes").check()
    with pytest.raises(ValueError, match="fsync must be one of"):
        EmbeddedRedis(Path("x"), "never")


@pytest.mark.subprocess
def test_the_embedded_redis_runs_the_policy_and_a_reused_one_is_switched() -> None:
    data = server_data_dir()
    server = EmbeddedRedis(data, "always")
    try:
        server.start()
        assert _policy(server) == ("yes", "always")
        # Started again by a service configured otherwise: the same server,
        # now with that policy.
        again = EmbeddedRedis(data, "everysec")
        again.start()
        assert not again.owned and _policy(again) == ("yes", "everysec")
    finally:
        server.stop()


@pytest.mark.subprocess
async def test_the_embedded_default_is_always(tmp_path: Path) -> None:
    """POINTS_REDIS_FSYNC unset: the embedded Redis fsyncs before it answers."""
    from pointsd.service.app import resolve_urls, stop_owned

    data = server_data_dir()
    _, _, embedded = await resolve_urls(Settings(data_dir=data, database_url="postgresql://x"))
    try:
        [redis] = embedded
        assert isinstance(redis, EmbeddedRedis) and _policy(redis) == ("yes", "always")
    finally:
        await stop_owned(embedded)


@pytest.mark.subprocess
async def test_always_refuses_a_redis_that_does_not_fsync_every_write(
    servers: Servers, tmp_path: Path
) -> None:
    other = EmbeddedRedis(server_data_dir(), "everysec")
    tenant = new_tenant()
    try:
        url = other.start()
        settings = settings_for(servers, tmp_path, redis_url=url, redis_fsync="always")
        with pytest.raises(ConfigError, match="appendfsync everysec: set appendonly yes"):
            await App.open(settings, rules=rule_book([tenant]), clock=test_clock.current())
        r = sync_redis.Redis(unix_socket_path=str(other.socket))
        r.config_set("appendfsync", "always")
        r.close()
        app = await App.open(settings, rules=rule_book([tenant]), clock=test_clock.current())
        await app.close()
    finally:
        other.stop()
