"""Hall of fame: winners of a closed week written exactly once, even with two
processes racing, and readable through ListWinners."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from scripts.procs import ROOT
from tests.clock import TestClock
from tests.conftest import ApiFactory, Servers
from tests.helpers import child_env, ev, rules_file

TZ = ZoneInfo("Asia/Shanghai")


@pytest.mark.calendar
@pytest.mark.subprocess
async def test_winners_of_a_closed_week_are_written_once_by_racing_processes(
    make_api: ApiFactory, servers: Servers, tenant: str, tmp_path: Path, sql, clock: TestClock
) -> None:
    api = await make_api({tenant: {"timezone": "Asia/Shanghai"}}, event_max_age_s=10 * 86_400)
    today = clock.datetime(TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    last_sunday = today - timedelta(days=today.weekday() + 1) + timedelta(hours=12)
    at = int(last_sunday.timestamp() * 1000)
    week = f"{last_sunday.isocalendar().year}-W{last_sunday.isocalendar().week:02d}"
    # When last Sunday lies in the previous month (the first days of a month),
    # that month has closed too, and its winners are the same people's.
    month_closed = (last_sunday.year, last_sunday.month) != (today.year, today.month)
    # 12 users, so the top 10 cuts a tie: scores 30, 27, ..., 3 (replies, 3 each).
    for i in range(12):
        for _ in range(10 - min(i, 9)):
            await api.stub.RecordActivity(
                ev(tenant, f"u{i:02d}", "reply", at_ms=at, department_id="rd" if i < 3 else "ops")
            )
    env = child_env(
        servers.redis_url,
        servers.database_url,
        rules_file(tmp_path / "rules.yaml", {tenant: {"timezone": "Asia/Shanghai"}}),
        tmp_path,
        POINTS_WINNERS_DELAY_S="0",
    )

    def winners_pass() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pointsd.service.cli", "winners"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    racers = await asyncio.gather(*(asyncio.to_thread(winners_pass) for _ in range(2)))
    assert all(p.returncode == 0 for p in racers), [p.stdout + p.stderr for p in racers]
    counts = [re.search(r"(\d+) closed", p.stdout) for p in racers]
    recorded = sum(int(m[1]) for m in counts if m)
    rows = sql(
        "SELECT board, scope, COUNT(*) FROM winner_periods WHERE tenant_id = :t "
        "AND period_kind = 'week' AND period_key = :w GROUP BY board, scope",
        t=tenant,
        w=week,
    )
    assert {(b, s): n for b, s, n in rows} == {
        ("points", "t"): 1,
        ("points", "d:rd"): 1,
        ("points", "d:ops"): 1,
        ("helpers", "t"): 1,
        ("newcomers", "t"): 1,
        # no group took part: the groups board has no winners to keep
    }
    months = sql(
        "SELECT period_key, COUNT(*) FROM winner_periods WHERE tenant_id = :t "
        "AND period_kind = 'month' GROUP BY period_key",
        t=tenant,
    )
    assert [tuple(m) for m in months] == ([(f"{last_sunday:%Y-%m}", 5)] if month_closed else [])
    # The two racers split the work, nothing twice.
    assert recorded == len(rows) + (5 if month_closed else 0)
    winners = sql(
        "SELECT rank, member_id, score FROM winners WHERE tenant_id = :t AND "
        "board = 'points' AND scope = 't' AND period_key = :w ORDER BY position",
        t=tenant,
        w=week,
    )
    expected = [(i + 1, f"u{i:02d}", 30 - 3 * i) for i in range(9)] + [(10, "u09", 3)]
    assert [tuple(r) for r in winners] == expected  # top 10; u10, u11 tie at 3 but fall outside

    resp = await api.stub.ListWinners(
        pb.ListWinnersRequest(tenant_id=tenant, board="points", period=pb.WEEK)
    )
    assert [p.period_key for p in resp.periods] == [week]
    assert [(w.rank, w.member_id, w.score) for w in resp.periods[0].winners] == expected
    rd = await api.stub.ListWinners(
        pb.ListWinnersRequest(tenant_id=tenant, board="points", period=pb.WEEK, scope_id="rd")
    )
    assert [w.member_id for w in rd.periods[0].winners] == ["u00", "u01", "u02"]

    # A later pass finds nothing left to record.
    again = await asyncio.to_thread(winners_pass)
    assert "0 closed period(s) recorded" in again.stdout
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.ListWinners(
            pb.ListWinnersRequest(tenant_id=tenant, board="points", period=pb.DAY)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.calendar
async def test_winners_are_recorded_when_the_delay_outlasts_keep_periods(
    make_api: ApiFactory, tenant: str, sql, clock: TestClock
) -> None:
    """Events may be 10 days late, so last week is final only when it is two
    weeks back, beyond keep_periods = 1; its board still exists then, and its
    winners must be recorded."""
    from pointsd.service.domain import Period
    from pointsd.service.rules.periods import period_bounds, period_key

    api = await make_api(
        {tenant: {"timezone": "Asia/Shanghai"}},
        event_max_age_s=10 * 86_400,
        boards={"wk": {"score": "points", "periods": ["week"], "keep_periods": 1, "winners": 3}},
    )
    today = clock.datetime(TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    at = int((today - timedelta(days=today.weekday() + 1, hours=-12)).timestamp() * 1000)
    await api.stub.RecordActivity(ev(tenant, "ann", "file", at_ms=at))
    week = period_key(Period.WEEK, at, TZ)
    _, end_s = period_bounds(Period.WEEK, at, TZ)
    recorder = api.app.winners_recorder()
    # Passes every 6 hours from the week's end for 16 days.
    for h in range(0, 16 * 24, 6):
        await recorder.run_once(now_ms=(end_s + h * 3600) * 1000)
    rows = sql(
        "SELECT board, scope FROM winner_periods WHERE tenant_id = :t AND period_key = :w",
        t=tenant,
        w=week,
    )
    assert ("wk", "t") in [tuple(r) for r in rows]
