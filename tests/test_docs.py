"""The docs stay true to the code: every setting and command is documented,
every link resolves, every guarantee is cited by a test, the grpcurl
session of docs/rewards.md answers what it shows (README's first session and
the leaderboards' run with the real grpcurl in tests/test_readme_live.py),
and the example mechanic of docs/architecture.md works."""

from __future__ import annotations

import argparse
import json
import re
import types
from dataclasses import fields
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message_factory
from grpc_health.v1 import health_pb2

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.clock import parse_instant
from pointsd.service.config import Settings
from pointsd.service.domain import Event
from pointsd.service.rules import Plan, RulesEngine, load_rule_file, parse_rule_book
from pointsd.service.rules.mechanics import MECHANICS
from scripts.procs import ROOT
from tests.clock import TestClock
from tests.conftest import ApiFactory, new_tenant
from tests.helpers import now_ms

README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}


@pytest.mark.parametrize("name", [Settings.env_name(f.name) for f in fields(Settings)])
def test_every_environment_variable_is_documented(name: str) -> None:
    assert f"| `{name}` |" in DOCS["configuration.md"]


def _commands() -> list[str]:
    """Every `pointsd` command, nested ones as "rules check", read off the parser."""
    from pointsd.service.cli import _build_parser

    def walk(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    nested = walk(sub, f"{prefix}{name} ")
                    found.extend(nested or [f"{prefix}{name}"])
        return found

    return [*walk(_build_parser(), ""), "--version"]


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_documented(command: str) -> None:
    assert f"`pointsd {command}" in DOCS["operations.md"]


def test_every_relative_link_resolves() -> None:
    pages = {ROOT / "README.md": README, ROOT / "CHANGELOG.md": (ROOT / "CHANGELOG.md").read_text()}
    pages.update({ROOT / "docs" / name: text for name, text in DOCS.items()})
    pages[ROOT / "storage/pointsd/storage/postgres/INVARIANTS.md"] = (
        ROOT / "storage/pointsd/storage/postgres/INVARIANTS.md"
    ).read_text()
    broken = []
    for page, text in pages.items():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            if not (page.parent / target).resolve().exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_every_guarantee_is_cited_by_a_test_and_only_those() -> None:
    listed = re.findall(r"^\*\*(G\d+)\. ", DOCS["guarantees.md"], re.M)
    assert listed == [f"G{i}" for i in range(1, len(listed) + 1)]
    cited: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name == "test_docs.py":
            continue
        for gid in re.findall(r"\bG(\d+)\b", path.read_text()):
            cited.setdefault(f"G{gid}", set()).add(path.name)
    assert sorted(set(listed) - set(cited)) == []
    assert sorted(set(cited) - set(listed)) == []


# --------------------------------------------------------------------------
# grpcurl sessions

# Every call but health's carries the token (README's TOKEN=...): the
# headers are matched, so a call with a header is never skipped.
_TOKEN_HEADER = '-H "authorization: Bearer $TOKEN"'
_CALL = re.compile(
    r"grpcurl -plaintext(?P<headers>(?:\s+-H (?:\"[^\"]*\"|'[^']*'))*)"
    r"(?:\s+-d '(?P<body>[^']*)')?\s+127\.0\.0\.1:50051 "
    r"(?P<service>[\w.]+)/(?P<method>\w+)"
    r"(?P<expected>(?:\n#[^\n]*)*)"
)


def _sessions(text: str) -> list[list[re.Match[str]]]:
    """The grpcurl calls of each ```bash block that has any."""
    blocks = [b.replace("\\\n", " ") for b in re.findall(r"```bash\n(.*?)```", text, re.S)]
    return [calls for b in blocks if (calls := list(_CALL.finditer(b)))]


def _expected(comment: str) -> dict[str, Any] | None:
    """The JSON a comment shows, with the parts elided by "…" left out."""
    start = comment.find("{")
    if start < 0:
        return None
    depth, text = 0, ""
    for i, ch in enumerate(comment[start:]):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            text = comment[start : start + i + 1]
            break
    text = re.sub(r'"\w+":…,?', "", text)
    text = text.replace(",…", "").replace("…", "")
    found: dict[str, Any] = json.loads(text)
    return found


def _contains(got: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(
            k in got and _contains(got[k], v) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) >= len(want)
            and all(_contains(g, w) for g, w in zip(got, want, strict=False))
        )
    return bool(got == want)


async def _run(channel: grpc.aio.Channel, call: re.Match[str], tenant: str) -> None:
    service, method = call["service"], call["method"]
    if service == "grpc.health.v1.Health":
        request_type: Any = health_pb2.HealthCheckRequest
        response_type: Any = health_pb2.HealthCheckResponse
    else:
        desc = pb.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods_by_name[method]
        request_type = message_factory.GetMessageClass(desc.input_type)
        response_type = message_factory.GetMessageClass(desc.output_type)
    body = (call["body"] or "{}").replace('"demo"', json.dumps(tenant))
    request = json_format.Parse(body, request_type())
    rpc = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    response = await rpc(request)
    want = _expected(call["expected"].replace("#", "", 1).replace('"demo"', json.dumps(tenant)))
    if want is not None:
        # grpcurl prints the proto field names (snake_case), as the docs show.
        got = json_format.MessageToDict(response, preserving_proto_field_name=True)
        assert _contains(got, want), (method, got, want)


def test_every_documented_call_is_read_and_carries_the_token() -> None:
    pages = {"README.md": (ROOT / "README.md").read_text(), **DOCS}
    for name, text in pages.items():
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            calls = list(_CALL.finditer(block.replace("\\\n", " ")))
            local = block.count("grpcurl -plaintext")
            assert len(calls) == local, f"{name}: a grpcurl call the test cannot read"
            for call in calls:
                health = call["service"] == "grpc.health.v1.Health"
                assert (_TOKEN_HEADER in call["headers"]) != health, (name, call[0][:120])


# README's first session and the leaderboards' run with the real grpcurl
# against a pointsd child process: tests/test_readme_live.py.
def test_the_documented_sessions_are_found() -> None:
    assert len(_sessions(DOCS["rewards.md"])) == 1


async def test_the_rewards_session_answers_as_documented(make_api: ApiFactory) -> None:
    tenant = new_tenant("demo")
    api = await make_api([tenant])
    for call in _sessions(DOCS["rewards.md"])[0]:
        await _run(api.channel, call, tenant)


# --------------------------------------------------------------------------
# The example mechanic


def _example_mechanic() -> types.ModuleType:
    text = DOCS["architecture.md"].split("## Adding a mechanic", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    module = types.ModuleType("welcome_example")
    exec(compile(code, "docs/architecture.md", "exec"), module.__dict__)
    return module


async def test_the_documented_mechanic_pays_once_through_the_real_store(
    make_api: ApiFactory,
) -> None:
    example = _example_mechanic()
    tenant = new_tenant()
    doc = load_rule_file(None)
    doc["tenants"] = [{"id": tenant, "timezone": "Asia/Shanghai"}]
    doc["rule_sets"]["default"]["actions"]["file"]["actor"]["welcome_bonus"] = 50
    book = parse_rule_book(doc, mechanics=(*MECHANICS, example.Welcome()))
    assert book.tenants[tenant].actions["file"].credits[0].part(example.WELCOME) == 50
    with pytest.raises(ValueError, match="welcome_bonus: must be between 1 and 10000"):
        doc["rule_sets"]["default"]["actions"]["file"]["actor"]["welcome_bonus"] = 0
        parse_rule_book(doc, mechanics=(*MECHANICS, example.Welcome()))
    api = await make_api([tenant])
    engine = RulesEngine(book, state_retention_s=86_400, dedup_retention_s=2 * 86_400)

    async def file(event_id: str) -> Any:
        planned = engine.plan(
            Event(tenant, event_id, "ann", "file", now_ms()), recorded_at_ms=now_ms()
        )
        assert isinstance(planned, Plan)
        (result,) = await api.app.stores.awards.apply(planned.ops)
        return result

    first, second = await file("f1"), await file("f2")
    assert (first.points, first.balance, first.bonuses) == (10, 60, (("welcome", 50),))
    assert (second.points, second.balance, second.bonuses) == (10, 70, ())
    # Its rebuild rule replays the count and drops the crossing.
    restore = engine.plan(
        Event(tenant, "f1", "ann", "file", now_ms()), recorded_at_ms=now_ms(), restore=True
    )
    assert isinstance(restore, Plan)
    assert [type(s).__name__ for s in restore.ops[0].steps][-1] == "Bump"

    assert "welcome" not in {m.name for m in MECHANICS}


# --------------------------------------------------------------------------
# docs/progression.md: levels, badges, tasks and GetProgress


def test_the_progression_sessions_are_found() -> None:
    # Levels, Badges, Tasks, GetProgress: one block each.
    assert len(_sessions(DOCS["progression.md"])) == 5


async def test_the_progression_session_answers_as_documented(
    make_api: ApiFactory, clock: TestClock
) -> None:
    """Every block of docs/progression.md, in order, for one new user of a
    tenant like `demo` (the default rules with progression, Shanghai, the
    example calendar), on the page's date: Monday 7 December 2026, 10:00."""
    clock.set(parse_instant("2026-12-07T10:00:00+08:00"))
    tenant = new_tenant("demo")
    doc = load_rule_file(None)
    doc["tenants"] = [{"id": tenant, "timezone": "Asia/Shanghai", "calendar": "example-cn-2026"}]
    api = await make_api(book=parse_rule_book(doc))
    for block in _sessions(DOCS["progression.md"]):
        for call in block:
            await _run(api.channel, call, tenant)
