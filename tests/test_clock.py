"""The clock rules (G11): the standard instants are what they claim, pinned
clocks reach the service, and only the clock modules read the wall clock."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pointsd.service.clock import StartedClock, parse_instant
from pointsd.service.config import ConfigError, Settings
from scripts.procs import ROOT
from tests.clock import INSTANTS, TestClock, instant_named
from tests.conftest import Api

BY_NAME = {i.name: i for i in INSTANTS}


def _local(name: str) -> datetime:
    i = BY_NAME[name]
    return datetime.fromtimestamp(parse_instant(i.at) / 1000, ZoneInfo(i.zone))


def test_standard_instants_are_the_days_they_claim() -> None:
    assert _local("month-first").day == 1
    last = _local("month-last")
    assert (last + timedelta(days=1)).day == 1 and (last.month, last.day) == (2, 29)
    assert _local("w53-dec31").isocalendar()[:2] == (2026, 53)
    jan1 = _local("w53-jan1")
    assert (jan1.year, jan1.month, jan1.day) == (2027, 1, 1)
    assert jan1.isocalendar()[:2] == (2026, 53)
    dec31 = _local("w01-dec31")
    assert (dec31.year, dec31.month, dec31.day) == (2029, 12, 31)
    assert dec31.isocalendar()[:2] == (2030, 1)
    assert _local("shanghai-2359").strftime("%H:%M") == "23:59"
    assert _local("shanghai-0000").strftime("%H:%M") == "00:00"
    for name, hours in (("dst-spring", 23), ("dst-autumn", 25)):
        here = _local(name)
        tz = ZoneInfo(BY_NAME[name].zone)
        start = datetime(here.year, here.month, here.day, tzinfo=tz)
        end = start + timedelta(days=1)  # wall-clock arithmetic: the next midnight
        assert (end.timestamp() - start.timestamp()) / 3600 == hours, name


def test_instants_are_named_or_written_out() -> None:
    assert instant_named("w53-jan1").at == BY_NAME["w53-jan1"].at
    assert instant_named("w53-jan1", "Europe/Berlin").zone == "Europe/Berlin"
    assert instant_named("2027-05-05T10:00:00+02:00").start_ms() == parse_instant(
        "2027-05-05T08:00:00+00:00"
    )
    with pytest.raises(ValueError, match="no UTC offset"):
        instant_named("2027-05-05T10:00:00")


def test_pinned_clocks_run_at_real_speed_from_their_instant() -> None:
    start = parse_instant("2030-01-01T00:00:00+00:00")
    for clock in (StartedClock(start), TestClock(start)):
        assert 0 <= clock() - start < 5_000
    moved = TestClock(start)
    moved.set(start - 86_400_000)
    assert 0 <= moved() - (start - 86_400_000) < 5_000


def test_clock_start_setting_is_checked() -> None:
    settings = Settings.from_env({"POINTS_CLOCK_START": "2027-01-01T12:00:00+08:00"})
    assert abs(settings.clock()() - parse_instant("2027-01-01T04:00:00+00:00")) < 5_000
    with pytest.raises(ConfigError, match="POINTS_CLOCK_START"):
        Settings.from_env({"POINTS_CLOCK_START": "tomorrow"})
    with pytest.raises(ConfigError, match="no UTC offset"):
        Settings.from_env({"POINTS_CLOCK_START": "2027-01-01T12:00:00"})
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env(
            {"POINTS_CLOCK_START": "2027-01-01T12:00:00+08:00", "POINTS_CLOCK_OFFSET_MS": "5"}
        )


def test_child_processes_inherit_the_clock_and_keep_it_when_restarted() -> None:
    """serve hands its clock to the flusher and workers as a shift of the
    system clock, not as an instant: a child started (or restarted) later
    reads the same time as its parent, not the parent's start instant."""
    from pointsd.service.server import child_env

    parent_settings = Settings.from_env({"POINTS_CLOCK_START": "2027-01-01T12:00:00+08:00"})
    parent = parent_settings.clock()
    assert isinstance(parent, StartedClock)
    env = child_env(parent_settings, "redis://x", "postgresql://x", parent)
    assert "POINTS_CLOCK_START" not in env
    parent.set(parent() + 3_600_000)  # an hour later, for the parent: the child is restarted
    env = child_env(parent_settings, "redis://x", "postgresql://x", parent)
    child = Settings.from_env(env).clock()
    assert abs(child() - parent()) < 1_000
    # On the system clock, children get nothing to set.
    plain = Settings.from_env({})
    assert "POINTS_CLOCK_OFFSET_MS" not in child_env(plain, "r", "d", plain.clock())


@pytest.mark.calendar
async def test_the_service_reads_the_test_clock(api: Api, clock: TestClock) -> None:
    from pointsd.service.api.points.v1 import points_pb2 as pb

    balance = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id="u"))
    tz = api.app.rules.tenants[api.tenant].timezone
    assert balance.day == clock.datetime(tz).date().isoformat()
    assert abs(api.app.clock() - clock()) < 1_000


# Reading the wall clock: allowed only in the clock modules (and scripts,
# whose benchmarks time real runs). Elapsed time uses time.monotonic().
_WALL_CLOCK = re.compile(
    r"datetime\.now\(|datetime\.utcnow\(|date\.today\(|time\.time\(|time\.time_ns\("
)
_ALLOWED = {Path("service/pointsd/service/clock.py"), Path("tests/clock.py")}


def test_only_the_clock_modules_read_the_wall_clock() -> None:
    offenders = []
    for folder in ("service", "storage", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel in _ALLOWED or "api" in rel.parts:
                continue
            for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
                if _WALL_CLOCK.search(line) and not line.lstrip().startswith("#"):
                    offenders.append(f"{rel}:{n}: {line.strip()}")
    # This file names the patterns, it does not call them.
    offenders = [o for o in offenders if not o.startswith("tests/test_clock.py")]
    assert offenders == [], "read the clock you are given:\n" + "\n".join(offenders)
