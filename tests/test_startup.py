"""The first hour: a start-up failure a user can cause ends in a line or two
that say what to fix and an exit code of its own, never a traceback (that
is logged at DEBUG only); the CLI's small tools behave in a pipe."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.config import Settings
from pointsd.service.startup import ExitCode
from scripts.procs import ROOT, free_port, run_cli
from tests.conftest import ApiFactory, Servers, new_tenant
from tests.helpers import child_env, ev, rules_file


@contextmanager
def _taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


@pytest.fixture
def env(servers: Servers, tmp_path: Path) -> dict[str, str]:
    rules = rules_file(tmp_path / "r.yaml", {new_tenant(): {}})
    base = child_env(servers.redis_url, servers.database_url, rules, tmp_path)
    return {**base, "POINTS_LISTEN": f"127.0.0.1:{free_port()}"}


def _serve(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["serve"], {**env, **extra}, timeout=90)


# A log record ("2026-12-02 01:17:16,869 WARNING …"): the child may log before
# it fails (the test clock's notice); the failure message is the other lines.
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def _message(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in done.stderr.strip().splitlines() if not _LOG_RECORD.match(ln)]


def _assert_clear(done: subprocess.CompletedProcess[str], code: ExitCode, *words: str) -> None:
    said = done.stderr.strip()
    assert done.returncode == code, said
    assert "Traceback" not in said and "Traceback" not in done.stdout
    for word in words:
        assert word in said, said


@pytest.mark.subprocess
def test_a_taken_port_says_which_setting_to_change(env: dict[str, str]) -> None:
    with _taken_port() as port:
        done = _serve(env, POINTS_LISTEN=f"127.0.0.1:{port}")
        _assert_clear(done, ExitCode.LISTEN, f"127.0.0.1:{port} is in use", "POINTS_LISTEN")
        assert len(_message(done)) == 1
        done = _serve(env, POINTS_METRICS_PORT=str(port))
        _assert_clear(done, ExitCode.LISTEN, "is in use", "POINTS_METRICS_PORT")


@pytest.mark.subprocess
def test_an_address_of_another_host_is_named(env: dict[str, str]) -> None:
    # TEST-NET-1 (RFC 5737): never an address of this machine.
    done = _serve(env, POINTS_LISTEN="192.0.2.1:50051")
    _assert_clear(done, ExitCode.LISTEN, "not an address of this host", "POINTS_LISTEN")


@pytest.mark.subprocess
def test_unreachable_stores_name_the_variable_to_check(env: dict[str, str]) -> None:
    done = _serve(env, REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0")
    _assert_clear(done, ExitCode.REDIS, "cannot reach Redis", "REDIS_URL")
    assert len(_message(done)) == 2
    done = _serve(
        env,
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{_closed_port()}/test",
        POINTS_MIGRATE_ON_START="true",
    )
    _assert_clear(done, ExitCode.POSTGRES, "cannot reach PostgreSQL", "DATABASE_URL")
    assert len(_message(done)) == 2


@pytest.mark.parametrize(
    ("name", "url"),
    [("REDIS_URL", "http://127.0.0.1:6379"), ("DATABASE_URL", "mysql://u:secret@db/points")],
)
def test_a_url_with_the_wrong_scheme_is_a_configuration_error(
    env: dict[str, str], name: str, url: str
) -> None:
    done = _serve(env, **{name: url})
    _assert_clear(done, ExitCode.CONFIG, name, "must start with")
    assert "secret" not in done.stderr  # a URL may hold a password: never echoed


def test_a_bad_rule_file_is_named_with_its_problems(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants: []\n")
    done = _serve(env, POINTS_RULES_FILE=str(bad))
    _assert_clear(done, ExitCode.RULES, f"rule file {bad} is invalid", "$.tenants")
    done = _serve(env, POINTS_RULES_FILE=str(tmp_path / "missing.yaml"))
    _assert_clear(done, ExitCode.RULES, "missing.yaml: cannot read: No such file")


def test_the_traceback_is_there_at_debug_level(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants: []\n")
    done = _serve(env, POINTS_RULES_FILE=str(bad), POINTS_LOG_LEVEL="DEBUG")
    assert done.returncode == ExitCode.RULES
    assert "Traceback" in done.stderr and "start-up failed" in done.stderr


def test_yaml_errors_name_the_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("tenants:\n  - id: a\n   timezone: [\n")
    done = run_cli(["rules", "check", str(bad)], child_env("", "", bad, tmp_path))
    assert done.returncode == ExitCode.RULES
    assert f"{bad}:3:" in done.stdout and "not valid YAML" in done.stdout
    assert "<unicode string>" not in done.stdout


def test_rules_check_in_a_pipe_that_closes_early() -> None:
    """`pointsd rules check | head -1`: no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pointsd.service.cli", "rules", "check"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    with proc.stdout, proc.stderr:
        assert proc.stdout.readline().startswith(b"tenant ")
        proc.stdout.close()  # the reader leaves, as head does
        err = proc.stderr.read().decode()
    proc.wait(30)
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_help_lists_the_settings_and_version_exists() -> None:
    helped = run_cli(["serve", "--help"], {})
    assert helped.returncode == 0
    assert "docs/configuration.md" in helped.stdout
    for name in ("POINTS_LISTEN", "REDIS_URL", "DATABASE_URL", "POINTS_DATA_DIR"):
        assert name in helped.stdout
    assert "127.0.0.1:50051" in helped.stdout  # defaults are shown
    assert len([ln for ln in helped.stdout.splitlines() if "POINTS_" in ln]) >= len(
        [n for n in Settings.__dataclass_fields__ if n not in ("redis_url", "database_url")]
    )
    version = run_cli(["--version"], {})
    assert version.returncode == 0 and version.stdout.startswith("pointsd ")


def test_install_does_nothing_when_nothing_changed() -> None:
    """scripts/serve runs scripts/install at every start: once .venv holds
    what the lock files say, it must not run pip again."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "install")], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    again = subprocess.run(
        [str(ROOT / "scripts" / "install")], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and again.stdout == again.stderr == ""


async def test_a_clash_with_the_ledger_says_what_is_known(
    make_api: ApiFactory, tenant: str, rds, caplog: pytest.LogCaptureFixture
) -> None:
    """An outbox entry whose key the ledger holds with other content is parked;
    the log says what the ledger kept and what reconcile may or may not show
    (it cannot know whether Redis still counts the ledger's row)."""
    api = await make_api([tenant], flusher="off")
    event = ev(tenant, "u1", "login")
    assert (await api.stub.RecordActivity(event)).outcome == pb.AWARDED
    assert await api.app.flusher.drain(30)
    shard = api.app.shards()[0]
    parts = ["1", "award", f"e:{event.event_id}:a:u1", "u1", event.event_id, "a", "login",
             "", "", "", "1", "1700000000000", "1700000000000", "", "x"]  # fmt: skip
    rds.xadd(shard.outbox, {"p": "7", "b": "7", "d": "\x1f".join(parts)})
    with caplog.at_level(logging.ERROR, logger="pointsd.flusher"):
        assert await api.app.flusher.drain(30)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "the ledger keeps its row" in said and "dead letters" in said
    assert "+7 points off the ledger" in said and "if Redis had lost that row, they agree" in said
    assert "reconcile will show" not in said
    assert rds.xlen(shard.dead_letters) == 1


def test_an_unusable_data_folder_names_the_setting(env: dict[str, str], tmp_path: Path) -> None:
    """Embedded servers in a POINTS_DATA_DIR that is a file: exit 7, one line
    naming the folder and the setting, and a hint at servers of one's own."""
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file")
    done = _serve(env, REDIS_URL="", DATABASE_URL="", POINTS_DATA_DIR=str(not_a_folder))
    _assert_clear(done, ExitCode.EMBEDDED, "embedded redis cannot use", "POINTS_DATA_DIR")
    assert "REDIS_URL and DATABASE_URL" in done.stderr


@pytest.mark.subprocess
def test_a_failed_start_leaves_no_embedded_server_behind(env: dict[str, str]) -> None:
    """The embedded servers start, then the gRPC port turns out taken: exit
    4, and the servers this start launched are stopped again."""
    from pointsd.storage.embedded import EmbeddedPostgres, EmbeddedRedis
    from tests.conftest import server_data_dir

    data = server_data_dir()
    with _taken_port() as port:
        done = _serve(
            env, REDIS_URL="", DATABASE_URL="", POINTS_DATA_DIR=str(data),
            POINTS_MIGRATE_ON_START="true", POINTS_LISTEN=f"127.0.0.1:{port}",
        )  # fmt: skip
    _assert_clear(done, ExitCode.LISTEN, "is in use")
    assert EmbeddedRedis(data).process_pid() is None
    assert EmbeddedPostgres(data).process_pid() is None
