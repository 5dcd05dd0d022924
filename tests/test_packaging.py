"""The wheel (what the Dockerfile installs) carries every file the service
reads at run time: the tests run from the source tree and would not notice
a Lua script, the default rules or a migration left out of it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts.procs import ROOT


def _source_files() -> list[str]:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    if tracked:
        return tracked
    # Not a git checkout: the files on disk, minus what a build leaves.
    skip = {"__pycache__", "build", ".venv", ".git", ".pointsd"}
    return [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in p.parts)
    ]  # fmt: skip


@pytest.mark.subprocess
def test_the_wheel_ships_every_module_and_data_file(tmp_path: Path) -> None:
    # Built from a clean copy: a build/ or egg-info folder left in the
    # checkout would otherwise supply files the package configuration misses.
    src = tmp_path / "src"
    files = _source_files()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=src,
        env={**os.environ, "POINTS_COMPILE": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("pointsd-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    # service/pointsd/service/x and storage/pointsd/storage/x install as
    # pointsd/service/x and pointsd/storage/x: one top-level name.
    runtime = [f.split("/", 1)[1] for f in files if f.split("/")[0] in ("service", "storage")]
    assert all(f.startswith(("pointsd/service/", "pointsd/storage/")) for f in runtime)
    missing = sorted(set(runtime) - shipped)
    assert not missing, f"left out of the wheel: {missing}"
    for needed in (
        "pointsd/storage/redis/award.lua",
        "pointsd/service/rules/default_rules.yaml",
        "pointsd/storage/postgres/migrations/env.py",
    ):
        assert needed in shipped
    top_level = {n.split("/")[0] for n in shipped if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"pointsd"}
    # Without POINTS_COMPILE=1 the wheel is pure Python (setup.py).
    assert not [n for n in shipped if n.endswith((".so", ".pyd", ".c"))]
    entry_points = next(n for n in shipped if n.endswith("entry_points.txt"))
    assert (
        "pointsd = pointsd.service.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def test_the_compiled_list_names_shipped_modules_and_a_bad_switch_is_refused() -> None:
    """[tool.pointsd].compiled (setup.py compiles it with POINTS_COMPILE=1)
    names modules of the packages the wheel ships; a POINTS_COMPILE that is
    neither 0 nor 1 stops the build with one line, not a traceback."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entries = config["tool"]["pointsd"]["compiled"]
    # Each entry names at least one file (a glob that matches nothing is a typo).
    found = {e: sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(e)) for e in entries}
    assert all(found.values()), [e for e, f in found.items() if not f]
    listed = [f for files in found.values() for f in files]
    packages = set(config["tool"]["setuptools"]["packages"])
    folders = config["tool"]["setuptools"]["package-dir"]
    assert listed and len(set(listed)) == len(listed)
    for path in listed:
        assert (ROOT / path).is_file() and path.endswith(".py"), path
        package = path.split("/", 1)[1].rsplit("/", 1)[0].replace("/", ".")
        assert package in packages and path.startswith(folders[".".join(package.split(".")[:2])])
    # The mechanics subclass compiled bases (Mechanic, Compiled, Step): one
    # left out would fail only in the compiled build.
    mechanics = sorted(
        str(f.relative_to(ROOT))
        for f in (ROOT / "service/pointsd/service/rules/mechanics").glob("*.py")
    )
    assert sorted(m for m in listed if "/rules/mechanics/" in m) == mechanics
    env = {**os.environ, "POINTS_COMPILE": "yes"}
    done = subprocess.run(
        [sys.executable, "setup.py", "--name"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip() == "POINTS_COMPILE must be 0 or 1, not 'yes'"


def _pins(lock: str) -> dict[str, str]:
    text = (ROOT / "requirements" / lock).read_text()
    return {
        m[1].lower().replace("_", "-"): m[2]
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", text, re.M)
    }


def test_the_lock_files_pin_what_pyproject_asks_and_agree() -> None:
    """CI installs requirements/dev.lock, the image requirements/runtime.lock:
    both satisfy pyproject.toml, and every package the image ships is the
    version the tests ran with. Stale after a pyproject edit: run scripts/lock."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = _pins("runtime.lock"), _pins("dev.lock")
    wanted = [(r, runtime) for r in project["dependencies"]]
    wanted += [(r, dev) for r in project["optional-dependencies"]["dev"] if "pointsd" not in r]
    wanted += [(r, dev) for r in project["optional-dependencies"]["loadtest"]]
    for text, pins in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in the lock: run scripts/lock"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert {n: v for n, v in runtime.items() if dev.get(n) != v} == {}
    assert set(runtime) <= set(dev)
