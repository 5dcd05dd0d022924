"""Smoke runs of the load test, the benchmarks and the k6 cross-check, so
they cannot rot, and the load reports' honesty: errors explained and counted
against --max-error-rate, progress without a terminal, plots that show errors
and the target, one line instead of a traceback without the load tools.
They assert the scripts work and check their own results, never timings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis as sync_redis

from pointsd.service import validation
from scripts import bench
from scripts.crosscheck import find_k6
from scripts.loadgen import (
    ERROR_KINDS,
    INSTALL_HINT,
    PROGRESSION_MIX,
    Traffic,
    TrafficSpec,
    run_load,
)
from scripts.loadtest import EXIT_ERRORS, plot
from scripts.procs import ROOT, free_port
from tests.conftest import Servers
from tests.helpers import is_compiled

_PROGRESS = re.compile(r"^\[\s*\d+\.\ds\] sent [\d,]+ answered [\d,]+ .* errors [\d,]+", re.M)


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
            "--soak",
            "3",
            "--soak-rate",
            "300",
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
    soaked = results["soak"]
    assert soaked["target_rate"] == 300 and soaked["events"] > 0
    assert soaked["self_check_ok"] and soaked["flush_lag"]["rows"] > 0
    assert soaked["memory"]["rss_mb_start"] > 0
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
    # CPU per event by process role, for every mode through the service
    # and its echo baseline; Redis's own CPU per credit where it is local.
    for name in ("batch_service", "unary_service", "stream_service"):
        cpu = results[name]["cpu_us_per_event"]
        # PostgreSQL is on this machine in the suite (embedded or local).
        assert {"client", "server", "flusher", "postgres", "machine"} <= set(cpu), name
        assert cpu["postgres"] >= 0, name
        assert cpu["server"] > 0 and cpu["machine"] > 0, name
        assert results[name]["credits"] > 0 and results[name]["redis_cpu_us_per_credit"] > 0
    assert results["unary_echo"]["cpu_us_per_event"]["server"] > 0
    assert results["raw_ceiling"]["redis_cpu_us_per_credit"] > 0
    assert set(report["ratios"]) == {
        "batch_vs_raw_ceiling",
        "unary_vs_echo",
        "stream_vs_echo",
        "batch_vs_naive_postgres",
        "unary_vs_naive_postgres",
        "unary_p99_vs_echo_p99",
    }
    # Every goal of the hot path with its figure and verdict; all measured
    # here (a loopback Redis, a soak).
    goals = report["goals"]["goals"]
    assert [g["figure"] for g in goals] == [
        "batch_vs_raw_ceiling",
        "stream_vs_echo",
        "unary_vs_echo",
        "unary_p99_vs_echo_p99",
        "batch_vs_naive_postgres",
        "batch_server_cpu_us",
        "batch_machine_cpu_us",
        "batch_redis_cpu_us_per_credit",
        "flush_lag_p99_ms",
        "soak_rss_growth_pct",
    ]
    for g in goals:
        assert g["value"] is not None and g["pass"] in (True, False), g
        held = {">=": g["value"] >= g["bound"], "<=": g["value"] <= g["bound"]}.get(
            g["sense"], g["value"] < g["bound"]
        )
        assert g["pass"] is held, g
    assert report["goals"]["met"] == sum(1 for g in goals if g["pass"])


@pytest.mark.slow
@pytest.mark.subprocess
def test_bench_auth_group_runs_auth_on_beside_off(servers: Servers) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--only", "auth", "--auth-duration", "1",
         "--rounds", "1", "--users", "500", "--unary-concurrency", "16", "--streams", "4",
         "--json"],
        env=_env(servers), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    auth = report["auth"]
    assert "results" not in report and "progression" not in report
    assert set(auth["modes"]) == {"batch", "unary", "stream"}
    for mode, m in auth["modes"].items():
        assert m["on"]["events_per_s"] > 0 and m["off"]["events_per_s"] > 0, mode
        assert m["ratio"] == round(m["on"]["events_per_s"] / m["off"]["events_per_s"], 3)
        assert m["bound"] == 0.9 and m["pass"] is (m["ratio"] >= 0.9)
    # Every run's events reached the ledger of its side: the auth-on side
    # admitted the token's calls, and refused nothing.
    assert auth["self_check_ok"]
    assert {(r["mode"], r["side"]) for r in auth["runs"]} == {
        (mode, side) for mode in ("batch", "unary", "stream") for side in ("on", "off")
    }


@pytest.mark.slow
@pytest.mark.subprocess
def test_bench_progression_group_runs_both_sides_of_every_mode(servers: Servers) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench",
            "--only",
            "progression",
            "--progression-duration",
            "1",
            "--rounds",
            "1",
            "--users",
            "500",
            "--unary-concurrency",
            "16",
            "--streams",
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
    assert "results" not in report  # the core contenders did not run
    prog = report["progression"]
    assert set(prog["modes"]) == {"batch", "unary", "stream"}
    for mode, m in prog["modes"].items():
        assert m["with"]["events_per_s"] > 0 and m["without"]["events_per_s"] > 0, mode
        assert m["ratio"] == round(m["with"]["events_per_s"] / m["without"]["events_per_s"], 3)
        assert m["bound"] == (0.8 if mode == "batch" else 0.9)
        assert m["pass"] is (m["ratio"] >= m["bound"])
    assert prog["all_pass"] is all(m["pass"] for m in prog["modes"].values())
    assert prog["self_check_ok"]
    runs = prog["runs"]
    assert [(r["mode"], r["side"]) for r in runs] == [
        (mode, side) for mode in ("batch", "unary", "stream") for side in ("with", "without")
    ]
    for r in runs:
        assert r["errors"] == {} and r["events"] > 0 and r["credits"] > 0, r
        assert r["cpu_us_per_event"]["server"] > 0, r
        # The traffic completes tasks on the full book, and no bonus exists without it.
        if r["side"] == "with":
            assert r["ledger"]["bonuses"].get("task.send-3-messages", 0) > 0, r["ledger"]
        else:
            assert r["ledger"]["bonus_rows"] == 0, r["ledger"]
    redis = prog["redis_us_per_credit"]
    if prog["machine"]["redis_stats"]:
        assert redis["with"]["us_per_credit"] > 0 and redis["without"]["us_per_credit"] > 0
        assert all(r["redis"]["evalsha_calls"] >= r["award_calls"] > 0 for r in runs)


def test_bench_exit_code_checks_ratios_only_when_asked() -> None:
    def report(ratio_ok: bool, ledger_ok: bool) -> dict[str, Any]:
        return {"progression": {"all_pass": ratio_ok, "self_check_ok": ledger_ok}}

    assert bench.exit_code(report(True, True), check=True) == 0
    assert bench.exit_code(report(False, True), check=False) == 0  # a figure is a figure
    assert bench.exit_code(report(False, True), check=True) == 3
    assert bench.exit_code(report(False, False), check=True) == 1  # the ledger check wins


def test_progression_summary_takes_medians_and_checks_each_bound() -> None:
    def run(side: str, mode: str, rnd: int, rate: float, usec: int, credits: int) -> Any:
        redis = {"evalsha_usec": usec, "ack_usec": 0, "us_per_credit": usec / credits}
        return {"side": side, "mode": mode, "round": rnd, "events_per_s": rate,
                "credits": credits, "redis": redis, "self_check_ok": True}  # fmt: skip

    runs = [
        *(run("with", "batch", i, r, 800, 10) for i, r in enumerate((80.0, 100.0, 1000.0))),
        *(run("without", "batch", i, r, 500, 10) for i, r in enumerate((100.0, 125.0, 90.0))),
        run("with", "unary", 0, 89.0, 100, 1),
        run("without", "unary", 0, 100.0, 100, 1),
    ]
    summary = bench.summarize_progression(runs)
    batch, unary = summary["modes"]["batch"], summary["modes"]["unary"]
    assert (batch["with"]["events_per_s"], batch["without"]["events_per_s"]) == (100.0, 100.0)
    assert batch["ratio"] == 1.0 and batch["pass"] is True
    assert batch["round_ratios"] == [0.8, 0.8, 11.111]
    assert unary["ratio"] == 0.89 and unary["pass"] is False  # under 0.9
    assert "stream" not in summary["modes"] and summary["all_pass"] is False
    redis = summary["redis_us_per_credit"]
    assert redis["with"]["us_per_credit"] == round(2500 / 31, 2)
    assert redis["with"]["credits"] == 31
    assert redis["without"]["us_per_credit"] == round(1600 / 31, 2)


def test_progression_traffic_spreads_groups_and_sends_what_tasks_count() -> None:
    spec = TrafficSpec(tenants=["t"], users=50, mix=dict(PROGRESSION_MIX), groups_per_user=4)
    events = Traffic(spec).batch(3000, 0)
    groups: dict[str, set[str]] = {}
    for e in events:
        groups.setdefault(e.user_id, set()).add(e.group_id)
        if e.action in ("feature.use", "feature.first_use"):
            assert e.attributes["feature"], e
        if e.action == "group.members":
            assert 2 <= e.quantity <= 60
    assert max(len(g) for g in groups.values()) == 4
    assert {"feature.use", "vote.start", "group.members", "like", "login"} <= {
        e.action for e in events
    }
    # The default traffic keeps one group per user.
    plain = Traffic(TrafficSpec(tenants=["t"], users=50)).batch(3000, 0)
    per_user: dict[str, set[str]] = {}
    for e in plain:
        per_user.setdefault(e.user_id, set()).add(e.group_id)
    assert all(len(g) == 1 for g in per_user.values())


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


def _loadtest(args: list[str], env: dict[str, str], timeout: float = 180) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "scripts.loadtest", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_error_kind_the_generator_produces_is_explained() -> None:
    # A failed call counts as its status code's name; the generator's own
    # kinds are the literal ones it passes to Stats.error.
    produced = {code.name for code in grpc.StatusCode}
    source = (ROOT / "scripts" / "loadgen.py").read_text()
    produced |= set(re.findall(r'stats\.error\(\s*"([A-Z_]+)"', source))
    assert "CLIENT_OVERLOADED" in produced
    assert produced <= set(ERROR_KINDS)
    assert all(len(text) > 20 for text in ERROR_KINDS.values())


def test_errors_over_max_error_rate_exit_3_with_meanings_and_progress() -> None:
    """Nothing listens on the target: every call fails UNAVAILABLE, for real."""
    args = ["--target", f"127.0.0.1:{free_port()}", "--mode", "unary", "--concurrency", "2"]
    args += ["--duration", "1.5", "--no-check", "--progress-interval", "0.4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = _loadtest([*args, "--json"], env, timeout=60)
    assert done.returncode == EXIT_ERRORS == 3, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["events"] == 0 and summary["errors"]["UNAVAILABLE"] > 0
    assert summary["attempted"] == summary["errors"]["UNAVAILABLE"]
    assert summary["error_rate"] == 1.0 and summary["achieved_rate"] == 0
    assert summary["error_meanings"]["UNAVAILABLE"] == ERROR_KINDS["UNAVAILABLE"]
    # stderr is a pipe: plain progress lines, not a rewritten one.
    lines = _PROGRESS.findall(done.stderr)
    assert len(lines) >= 2 and "\r" not in done.stderr, done.stderr
    assert "UNAVAILABLE" in done.stderr
    # The same run tolerated, and in words for a human.
    done = _loadtest([*args, "--max-error-rate", "1"], env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "UNAVAILABLE" in done.stdout and ERROR_KINDS["UNAVAILABLE"] in done.stdout


async def test_plot_draws_errors_and_the_target(tmp_path: Path) -> None:
    spec = TrafficSpec(tenants=["none"], users=50, run_id="plot")
    result = await run_load(
        f"127.0.0.1:{free_port()}", spec, mode="unary", rate=300, concurrency=2, duration_s=2.2
    )
    assert result.stats.timeline and sum(p["errors"] for p in result.stats.timeline) > 0
    path = tmp_path / "run.png"
    title = plot(result, path)
    assert path.stat().st_size > 10_000
    assert "of 300 target" in title and f"{result.stats.error_count:,} errors" in title
    from PIL import Image

    with Image.open(path) as image:
        assert image.text["Title"] == title  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("module", "hidden"),
    [
        ("scripts.loadtest", "hdrh"),
        ("scripts.loadtest", "matplotlib"),
        ("scripts.bench", "psycopg_pool"),
        ("scripts.bench_boards", "hdrh"),
        ("scripts.crosscheck", "psutil"),
        ("scripts.profile", "hdrh"),
    ],
)
def test_without_the_load_tools_the_scripts_say_how_to_install_them(
    module: str, hidden: str
) -> None:
    # As after `scripts/install` without `dev`: the module cannot be imported.
    code = (
        f"import runpy, sys; sys.modules[{hidden!r}] = None; sys.argv = ['x']; "
        f"runpy.run_module({module!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"{INSTALL_HINT} (missing: {hidden})"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_open_loop_past_its_inflight_cap_reports_client_overload(
    servers: Servers, tmp_path: Path
) -> None:
    """One call in flight at most, 1,500 arrivals/s: the generator drops
    arrivals itself; the ledger check still passes, the error rate fails."""
    plot_path = tmp_path / "over.png"
    overload = ["--rate", "1500", "--inflight-max", "1", "--concurrency", "1"]
    run = ["--spawn", "--tenants", "1", "--mode", "unary", "--duration", "2.5", "--users", "500"]
    output = ["--json", "--progress-interval", "0.5", "--plot", str(plot_path)]
    done = _loadtest([*run, *overload, *output], _env(servers))
    assert done.returncode == EXIT_ERRORS, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["target_rate"] == 1500 and summary["inflight_max"] == 1
    assert set(summary["errors"]) == {"CLIENT_OVERLOADED"}, summary["errors"]
    assert summary["events"] > 0 and summary["achieved_rate"] < 1500
    assert summary["sent"] == summary["events"]  # dropped ones were never sent
    assert summary["attempted"] == summary["events"] + summary["errors"]["CLIENT_OVERLOADED"]
    assert summary["in_doubt"] == 0 and summary["self_check"]["ok"], summary["self_check"]
    assert _PROGRESS.search(done.stderr) and "target 1,500" in done.stderr
    assert plot_path.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.subprocess
def test_calls_past_their_deadline_are_left_out_of_the_ledger_check(servers: Servers) -> None:
    """A 25 ms deadline under 16 callers (about their median latency here):
    some calls answer, some fail DEADLINE_EXCEEDED after the server may have
    applied them. The check compares the answered events exactly and reports
    the others apart."""
    run = ["--spawn", "--tenants", "2", "--mode", "unary", "--duration", "2.5", "--users", "500"]
    done = _loadtest([*run, "--concurrency", "16", "--timeout", "0.025", "--json"], _env(servers))
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["errors"].get("DEADLINE_EXCEEDED", 0) > 0, summary["errors"]
    assert summary["awarded_points"] > 0, summary
    check = summary["self_check"]
    assert check["ok"], check
    assert check["in_doubt_events"] == summary["in_doubt"] > 0
    assert done.returncode == (EXIT_ERRORS if summary["error_rate"] > 0.01 else 0)


@pytest.mark.slow
@pytest.mark.subprocess
def test_crosscheck_runs_loadgen_and_k6_against_one_server(servers: Servers) -> None:
    assert find_k6() is not None, "k6 is missing: the dev install has the `k6` package"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.crosscheck",
            "--callers",
            "4",
            "--duration",
            "2",
            "--users",
            "500",
        ],
        env=_env(servers),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    for tool in ("loadgen", "k6"):
        row = report[tool]
        assert row["events"] > 0 and row["events_per_s"] > 0, tool
        assert row["errors"] == {}, (tool, row["errors"])
        assert set(row["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}, tool
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"] <= row["latency_ms"]["max"]
        assert row["client_cpu_s"] > 0 and row["server_cpu_s"] > 0, tool
    assert report["k6"]["tool"].startswith("k6 ")
    assert report["k6_vs_loadgen_events_per_s"] > 0


@pytest.mark.slow
@pytest.mark.subprocess
def test_farming_check_flags_the_ring_and_the_script_not_the_honest(servers: Servers) -> None:
    """A short simulated run (three days, a small population): the ring and
    the script are caught, and the JSON says how soon and by which signal."""
    done = subprocess.run(
        [sys.executable, "-m", "scripts.farming_check", "--users", "300", "--days", "3"],
        env=_env(servers), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["honest_active_users"] > 200 and report["events_sent"] > 10_000
    assert report["ring_members_caught"] == report["ring_members"] == 5
    assert report["ring_signals"] == ["ring"] and report["ring_first_caught_after_h"] > 0
    assert report["script_signals"] == ["rate"] and report["script_caught_after_h"] == 1
    assert report["false_positive_rate"] == round(
        report["honest_flagged"] / report["honest_active_users"], 6
    )
    assert report["false_positive_rate"] < 0.01
    # Its Redis state does not outlive the run.
    r = sync_redis.Redis.from_url(servers.redis_url)
    try:
        assert list(r.scan_iter(match=f"pts:{{{report['tenant']}:*", count=1000)) == []
    finally:
        r.close()


def test_farming_check_refuses_out_of_range_arguments() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.farming_check", "--days", "9"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "--days 1..7" in done.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_bench_durability_group_runs_always_beside_everysec(servers: Servers) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--only", "durability", "--durability-duration",
         "1", "--rounds", "1", "--users", "500", "--unary-concurrency", "16", "--json"],
        env=_env(servers), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    d = json.loads(done.stdout)["durability"]
    assert set(d["modes"]) == {"batch", "unary"}
    for mode, m in d["modes"].items():
        assert m["always"]["events_per_s"] > 0 and m["everysec"]["events_per_s"] > 0, mode
        assert m["ratio"] == round(m["always"]["events_per_s"] / m["everysec"]["events_per_s"], 3)
        assert m["bound"] == {"batch": 0.8, "unary": 0.9}[mode]
    assert d["self_check_ok"]
    assert {(r["mode"], r["side"]) for r in d["runs"]} == {
        (mode, side) for mode in ("batch", "unary") for side in ("always", "everysec")
    }


@pytest.mark.slow
@pytest.mark.timeout(900)  # it may wait for the image's wheel to compile
def test_bench_compiled_group_runs_the_image_build_beside_pure_python(
    servers: Servers, compiled_tree: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--only", "compiled", "--compiled",
         str(compiled_tree), "--compiled-duration", "1", "--compiled-modes", "batch",
         "--rounds", "1", "--users", "500", "--json"],
        env=_env(servers), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    c = json.loads(done.stdout)["compiled"]
    assert c["compiled_modules"] == bench.compiled_module_names()
    (m,) = c["modes"].values()
    assert m["compiled"]["events_per_s"] > 0 and m["pure"]["events_per_s"] > 0
    assert m["ratio"] == round(m["compiled"]["events_per_s"] / m["pure"]["events_per_s"], 3)
    assert m["server_cpu_ratio"] is not None and m["bound"] == 1.0
    assert c["self_check_ok"]
    assert {r["side"] for r in c["runs"]} == {"compiled", "pure"}


def test_bench_compiled_group_without_a_compiled_build_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--only", "compiled", "--compiled", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no compiled modules in" in done.stderr and "run scripts/compile" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_bench_baseline_group_runs_another_checkout_beside_this_one(
    servers: Servers, tmp_path: Path
) -> None:
    # The committed tree as the baseline: its service and storage, unpacked.
    base = tmp_path / "base"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "service", "storage"],
                             capture_output=True, check=True, timeout=60)  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True, timeout=60)
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--only", "baseline", "--baseline", str(base),
         "--baseline-duration", "1", "--baseline-modes", "batch", "--rounds", "1",
         "--users", "500", "--json"],
        env=_env(servers), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    b = json.loads(done.stdout)["baseline"]
    (m,) = b["modes"].values()
    assert m["this"]["events_per_s"] > 0 and m["baseline"]["events_per_s"] > 0
    assert m["ratio"] == round(m["this"]["events_per_s"] / m["baseline"]["events_per_s"], 3)
    assert m["server_cpu_ratio"] is not None and m["bound"] == 1.0
    assert b["self_check_ok"] and {r["side"] for r in b["runs"]} == {"this", "baseline"}
    assert b["revisions"]["baseline"] == "unknown"  # not a git checkout
    assert b["revisions"]["this"] != "unknown"


def test_bench_baseline_group_refuses_a_folder_that_is_no_checkout(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--only", "baseline", "--baseline", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "is not a checkout of this project" in done.stderr and "Traceback" not in done.stderr
    alone = subprocess.run([sys.executable, "-m", "scripts.bench", "--only", "baseline"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert alone.returncode == 2 and "needs --baseline DIR" in alone.stderr


def test_profile_stages_take_the_innermost_named_function() -> None:
    from scripts.profile import classify, parse_raw, shares

    raw = (
        "<module> (cli.py:1);Runner.run (runners.py:118) 40\n"
        "<module> (cli.py:1);PointsServicer.RecordActivities (servicer.py:160);"
        "Ingestor.record (ingest.py:110);RulesEngine.plan (engine.py:318);"
        "fingerprint (engine.py:40) 30\n"
        "<module> (cli.py:1);PointsServicer.RecordActivities (servicer.py:160);"
        "event_from_pb (validation.py:80) 20\n"
        "Thread._bootstrap (threading.py:995);Thread.run (threading.py:975) 10\n"
        "not a stack line\n"
    )
    samples = parse_raw(raw)
    assert [n for _, n in samples] == [40, 30, 20, 10]
    assert [classify(names) for names, _ in samples] == [
        "event loop and gRPC core",
        "planning (RulesEngine.plan)",
        "validation (event_from_pb)",
        "gRPC threads",
    ]
    out = shares(samples)
    assert out["samples"] == 100
    assert out["stages_pct"]["planning (RulesEngine.plan)"] == 30.0
    assert out["hottest_own_pct"]["fingerprint"] == 30.0


@pytest.mark.slow
@pytest.mark.subprocess
def test_profile_samples_the_server_per_mode(servers: Servers) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.profile", "--modes", "batch,unary", "--duration", "2",
         "--users", "500", "--json"],
        env=_env(servers), cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    modes = json.loads(done.stdout)["modes"]
    assert set(modes) == {"batch", "unary"}
    for mode, m in modes.items():
        assert m["events"] > 0 and m["samples"] > 0 and m["server_cpu_us_per_event"] > 0, mode
        assert abs(sum(m["stages_pct"].values()) - 100) < 1.5, m["stages_pct"]
    # A batch spends part of its time planning and validating its events.
    batch = modes["batch"]["stages_pct"]
    assert batch.get("planning (RulesEngine.plan)", 0) > 0
    assert batch.get("validation (event_from_pb)", 0) > 0


@pytest.mark.slow
@pytest.mark.subprocess
def test_lua_cost_counts_the_same_instructions_twice() -> None:
    # No servers of the suite's: a scratch redis-server under callgrind.
    def run() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "scripts.lua_cost", "--ops-per-call", "50", "--credits",
             "150", "--warm", "100", "--users", "300", "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        report: dict[str, Any] = json.loads(done.stdout)["ops_per_call"]["50"]
        return report

    first, second = run(), run()
    assert first["credits"] >= 150 and first["warm_credits"] >= 100
    assert first["instructions_per_credit"] > 10_000
    # The script's own commands, per credit: a dedup lookup each at least.
    assert first["commands_per_credit"]["get"] >= 1.0
    assert first["commands_per_credit"] == second["commands_per_credit"]
    # An instruction count, not a time: the same within a fraction of a percent.
    a, b = first["instructions_per_credit"], second["instructions_per_credit"]
    assert abs(a - b) / a < 0.01, (a, b)


@pytest.mark.subprocess
def test_stage_cost_times_every_stage_of_the_batch_path(tmp_path: Path) -> None:
    # Its own scratch redis-server: the replies the later stages decode.
    done = subprocess.run(
        [sys.executable, "-m", "scripts.stage_cost", "--events", "1000", "--batch", "250",
         "--ops-per-call", "100", "--repeat", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["events"] == 1000 and report["credits_per_event"] > 1
    assert report["credits_per_call"] <= 100
    assert set(report["us_per_event"]) == {
        "parse", "validate", "plan", "encode", "pack", "decode", "combine", "respond",
    }  # fmt: skip
    assert all(us > 0 for us in report["us_per_event"].values()), report["us_per_event"]
    # Real replies: the traffic's heavy users run into their caps.
    assert report["outcomes"]["AWARDED"] > 0 and report["outcomes"].get("CAPPED", 0) > 0
    # This process's build, pure or compiled, is the child's.
    expected = len(bench.compiled_module_names()) if is_compiled(validation) else 0
    assert report["compiled_modules"] == expected
    # A folder without the compiled build: one line, exit 2.
    missing = subprocess.run(
        [sys.executable, "-m", "scripts.stage_cost", "--compiled", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "scripts/compile" in missing.stderr
