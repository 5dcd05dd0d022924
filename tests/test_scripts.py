"""Smoke runs of the load test and the benchmark, so they cannot rot. They
assert the scripts work and check their own results, never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.procs import ROOT
from tests.conftest import Servers


def _env(servers: Servers) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": servers.redis_url,
        "DATABASE_URL": servers.database_url,
        "PYTHONPATH": str(ROOT),
    }


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("batch", ["--batch", "200", "--concurrency", "4"]),
        ("unary", ["--concurrency", "16"]),
        ("stream", ["--concurrency", "4", "--batch", "64"]),
    ],
)
def test_loadtest_runs_and_its_self_check_passes(
    servers: Servers, tmp_path: Path, mode: str, extra: list[str]
) -> None:
    plot = tmp_path / "run.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.loadtest",
            "--spawn",
            "--tenants",
            "2",
            "--shards",
            "2",
            "--mode",
            mode,
            "--duration",
            "2",
            "--users",
            "500",
            "--json",
            "--plot",
            str(plot),
            *extra,
        ],
        env=_env(servers),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["mode"] == mode and summary["events"] > 0
    assert summary["errors"] == {}
    assert set(summary["outcomes"]) <= {"AWARDED", "DUPLICATE", "CAPPED", "THROTTLED"}
    assert summary["self_check"]["ok"], summary["self_check"]
    assert summary["self_check"]["ledger_points"] == summary["awarded_points"] > 0
    assert plot.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.subprocess
def test_bench_prints_every_contender_and_ratio(servers: Servers) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench",
            "--duration",
            "1",
            "--users",
            "500",
            "--unary-concurrency",
            "16",
            "--streams",
            "4",
            "--naive-concurrency",
            "4",
            "--json",
        ],
        env=_env(servers),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    results = report["results"]
    for name in (
        "batch_service",
        "raw_ceiling",
        "unary_service",
        "unary_echo",
        "stream_service",
        "stream_echo",
        "naive_postgres",
    ):
        assert results[name]["events_per_s"] > 0, name
    assert results["batch_service"]["self_check_ok"]
    assert results["flush_lag"]["rows"] > 0
    assert set(report["ratios"]) == {
        "batch_vs_raw_ceiling",
        "unary_vs_echo",
        "stream_vs_echo",
        "batch_vs_naive_postgres",
        "unary_vs_naive_postgres",
    }


@pytest.mark.slow
@pytest.mark.subprocess
def test_board_bench_runs(servers: Servers) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench_boards",
            "--members",
            "5000",
            "--duration",
            "1",
            "--concurrency",
            "8",
            "--json",
        ],
        env=_env(servers),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert set(report["results"]) == {
        "top100_sharded",
        "top100_unsharded",
        "rank10_sharded",
        "rank10_unsharded",
    }
    assert all(r["queries"] > 0 and r["errors"] == 0 for r in report["results"].values())
