"""The embedded Redis on a data folder that takes a while to load."""

from __future__ import annotations

import logging
import shutil
import threading
import time

import psutil
import pytest
import redis as sync_redis

from pointsd.storage.embedded import EmbeddedRedis
from tests.conftest import server_data_dir

KEYS = 3_000_000


def _servers_on(sock: str) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and "redis-server" in p.info["cmdline"][0]
        and any(sock in part for part in p.info["cmdline"])
    ]  # fmt: skip


@pytest.mark.subprocess
def test_a_loading_redis_is_waited_for_and_never_started_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = server_data_dir()
    first = EmbeddedRedis(data)
    try:
        first.start()
        r = sync_redis.Redis(unix_socket_path=str(first.socket))
        r.execute_command("DEBUG", "POPULATE", KEYS, "k", 16)
        r.bgrewriteaof()
        while (
            r.info("persistence")["aof_rewrite_in_progress"]
            or r.info("persistence")["aof_rewrite_scheduled"]
        ):
            time.sleep(0.1)
        r.close()
        first.stop()

        # Two starters at once with a start timeout far below the load time:
        # both wait for the one server while it reads its AOF.
        starters = [EmbeddedRedis(data) for _ in range(2)]
        urls: list[str] = []
        errors: list[BaseException] = []

        def start(er: EmbeddedRedis) -> None:
            try:
                urls.append(er.start(timeout_s=0.2))
            except BaseException as exc:  # reported below
                errors.append(exc)

        with caplog.at_level(logging.INFO, logger="pointsd.embedded"):
            threads = [threading.Thread(target=start, args=(er,)) for er in starters]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        assert not errors, errors
        assert len(urls) == 2 and urls[0] == urls[1]
        assert "embedded redis is loading its data" in caplog.text
        assert sum(er.owned for er in starters) == 1
        assert len(_servers_on(str(first.socket))) == 1
        r = sync_redis.Redis(unix_socket_path=str(first.socket))
        assert r.dbsize() == KEYS
        r.close()
        next(er for er in starters if er.owned).stop()
        assert _servers_on(str(first.socket)) == []
    finally:
        for p in _servers_on(str(first.socket)):
            p.kill()
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.subprocess
def test_postgres_stops_by_signal_when_pg_ctl_cannot_run() -> None:
    """As root, pg_ctl runs as user pgserver, who cannot enter a root-only
    folder holding the binaries (a virtualenv under pytest's tmp): the
    fast shutdown then goes by SIGINT to the postmaster."""
    from pointsd.storage.embedded import EmbeddedPostgres

    data = server_data_dir()
    pg = EmbeddedPostgres(data)
    try:
        pg.start()
        assert pg.running_pid() is not None
        pg._interrupt()
        assert pg.running_pid() is None
        pg.restart()  # its data survived the fast shutdown
        assert pg.running_pid() is not None
    finally:
        pg.stop()
        shutil.rmtree(data, ignore_errors=True)
