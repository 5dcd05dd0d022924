"""README's first session, run the way a reader runs it: the real grpcurl
binary against a real `pointsd serve` child process, then the sessions of
docs/leaderboards.md (which continues README's) and docs/rewards.md.

Each ```bash block holds only `grpcurl` commands (backslash continuations
allowed), `sleep N` lines, `#` comments and README's one
`TOKEN=$(cat .pointsd/admin.token)`: `$TOKEN` in a command is the child's
token of every role and tenant. A command's answer is the
comment right after it that starts with `{`: the JSON grpcurl prints,
written on one line (text after the closing brace is prose). Before the
commands run, the tenant `"demo"` becomes a fresh tenant and
`127.0.0.1:50051` the child's port, in commands and answers alike.

Conventions of a shown answer:
- `"field":…` the field is printed, with a value that is not shown (times,
  dates, generated ids);
- `…` as the last member of an object: more fields are printed; without it
  the object has exactly the fields shown;
- `…` as the last item of a list: more items follow; without it the list
  has exactly the items shown;
- every value shown is compared exactly (`"5"` is a string, as grpcurl
  prints int64), and the fields shown appear in the order grpcurl prints.

`sleep N` is where the docs tell the reader to wait (the ledger reaches
PostgreSQL through the batching flusher): the test sleeps N seconds, then
retries the next command for at most RETRY_S more when its answer does not
match yet, since a loaded machine may flush late.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from datetime import time as day_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from scripts.procs import ROOT, ServerProcess, free_port
from tests.clock import TestClock
from tests.conftest import Servers, _cleanup_tenants, new_tenant
from tests.helpers import child_env, rules_file

MORE = "…"
DOC_TARGET = "127.0.0.1:50051"
RETRY_S = 10.0


@dataclass
class Step:
    argv: list[str]
    answer: str | None = None
    wait_s: float = 0.0


# Where README's session reads the token of the first start.
TOKEN_LINE = "TOKEN=$(cat .pointsd/admin.token)"


def bash_block(path: str, heading: str = "") -> str:
    """The first ```bash block of a page (after `heading`, when given)."""
    text = (ROOT / path).read_text()
    if heading:
        text = text.split(f"\n{heading}\n", 1)[1]
    return re.findall(r"```bash\n(.*?)```", text, re.S)[0]


def steps(block: str) -> list[Step]:
    """The commands of a block, each with its answer and the wait before it."""
    found: list[Step] = []
    wait_s = 0.0
    previous_was_command = False
    for line in block.replace("\\\n", " ").splitlines():
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            comment = text[1:].strip()
            if previous_was_command and comment.startswith("{"):
                found[-1].answer = _json_prefix(comment)
            previous_was_command = False
            continue
        if text == TOKEN_LINE:
            previous_was_command = False
            continue
        argv = shlex.split(text)
        if argv[0] == "sleep" and len(argv) == 2:
            wait_s += float(argv[1])
            previous_was_command = False
            continue
        assert argv[0] == "grpcurl", f"the test cannot run {text!r}"
        found.append(Step(argv, wait_s=wait_s))
        wait_s, previous_was_command = 0.0, True
    return found


def _json_prefix(comment: str) -> str:
    """The balanced {...} a comment starts with."""
    depth = 0
    for i, ch in enumerate(comment):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return comment[: i + 1]
    raise AssertionError(f"unbalanced answer: {comment!r}")


def shown(answer: str) -> Any:
    """An answer as JSON, with each `…` a MORE marker: a value, or an object's
    {MORE: MORE} member, or a list's last item."""
    text = re.sub(r"(?<=:)…(?=[,}\]])", '"…"', answer)
    text = re.sub(r"(?<=[{,])…(?=})", '"…":"…"', text)
    text = re.sub(r"(?<=[\[,])…(?=])", '"…"', text)
    return json.loads(text)


def mismatches(got: Any, want: Any, path: str = "$") -> list[str]:
    """Where the printed JSON differs from the shown one (empty: it matches)."""
    if want == MORE:
        return []
    if isinstance(want, dict):
        return _object_mismatches(got, want, path)
    if isinstance(want, list):
        return _list_mismatches(got, want, path)
    if type(got) is not type(want) or got != want:
        return [f"{path}: printed {got!r}, shown {want!r}"]
    return []


def _object_mismatches(got: Any, want: dict[str, Any], path: str) -> list[str]:
    if not isinstance(got, dict):
        return [f"{path}: printed {got!r}, shown an object"]
    names = [k for k in want if k != MORE]
    problems = [f"{path}.{k}: shown, not printed" for k in names if k not in got]
    if MORE not in want:
        problems += [f"{path}.{k}: printed, not shown (end with …)" for k in got if k not in want]
    order = [k for k in got if k in want]
    if not problems and order != names:
        problems.append(f"{path}: printed in the order {order}, shown {names}")
    for k in names:
        if k in got:
            problems += mismatches(got[k], want[k], f"{path}.{k}")
    return problems


def _list_mismatches(got: Any, want: list[Any], path: str) -> list[str]:
    if not isinstance(got, list):
        return [f"{path}: printed {got!r}, shown a list"]
    more = bool(want) and want[-1] == MORE
    items = want[:-1] if more else want
    if len(got) < len(items) or (not more and len(got) != len(items)):
        return [f"{path}: {len(got)} items printed, {len(items)} shown"]
    return [p for i, w in enumerate(items) for p in mismatches(got[i], w, f"{path}[{i}]")]


def grpcurl() -> str:
    """The grpcurl the dev install puts beside the interpreter, else PATH's."""
    beside = Path(sys.executable).parent / "grpcurl"
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    assert found, "grpcurl is missing: ./scripts/install dev installs it"
    return found


class Session:
    """Runs doc steps against one server, for one tenant."""

    def __init__(self, target: str, tenant: str, token: str) -> None:
        self.target, self.tenant, self.token = target, tenant, token

    def _local(self, text: str) -> str:
        return text.replace('"demo"', json.dumps(self.tenant)).replace("$TOKEN", self.token)

    def command(self, step: Step) -> list[str]:
        assert DOC_TARGET in step.argv, f"{step.argv}: name {DOC_TARGET}"
        args = [self.target if a == DOC_TARGET else self._local(a) for a in step.argv[1:]]
        return [grpcurl(), *args]

    def call(self, step: Step) -> Any:
        out = subprocess.run(self.command(step), capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, (step.argv, out.stderr)
        return json.loads(out.stdout)

    def check(self, step: Step) -> list[str]:
        """Runs the step; what differs from its shown answer."""
        got = self.call(step)
        if step.answer is None:
            return []
        return mismatches(got, shown(self._local(step.answer)))

    def run(self, step: Step) -> None:
        time.sleep(step.wait_s)
        problems = self.check(step)
        deadline = time.monotonic() + (RETRY_S if step.wait_s else 0.0)
        while problems and time.monotonic() < deadline:
            time.sleep(0.2)
            problems = self.check(step)
        assert problems == [], (step.argv[-1], problems)


def _midday(clock: TestClock, zone: ZoneInfo) -> int:
    day = clock.datetime(zone).date()
    return int(datetime.combine(day, day_time(12), zone).timestamp() * 1000)


@pytest.fixture
def server(
    servers: Servers, tmp_path: Path, clock: TestClock, zone: ZoneInfo
) -> Iterator[tuple[ServerProcess, list[str]]]:
    """`pointsd serve` for two fresh tenants, its clock at midday of the
    test's day: the session's awards share one day whatever the time."""
    clock.set(_midday(clock, zone))
    tenants = [new_tenant("demo"), new_tenant("demo")]
    rules = rules_file(tmp_path / "rules.yaml", {t: {} for t in tenants})
    env = child_env(servers.redis_url, servers.database_url, rules, tmp_path)
    proc = ServerProcess(env, free_port(), tmp_path / "pointsd.log")
    proc.start()
    try:
        yield proc, tenants
    finally:
        proc.terminate()
        _cleanup_tenants(servers, tenants)


def test_the_block_format_is_read_as_documented() -> None:
    block = (
        TOKEN_LINE
        + '\ngrpcurl -plaintext -d \'{"a":1}\' \\\n  h:1 s/M\n# {"x":…,…} prose\nsleep 2\n'
    )
    block += "# prose\ngrpcurl -plaintext h:1 s/N\n"
    parsed = steps(block)
    assert [(s.argv[-1], s.answer, s.wait_s) for s in parsed] == [
        ("s/M", '{"x":…,…}', 0.0),
        ("s/N", None, 2.0),
    ]
    assert shown('{"a":[{"b":…},…],…}') == {"a": [{"b": MORE}, MORE], MORE: MORE}
    with pytest.raises(AssertionError, match="cannot run"):
        steps("curl http://127.0.0.1\n")


@pytest.mark.parametrize(
    ("got", "want", "problem"),
    [
        ({"a": "5", "b": 1}, '{"a":"5",…}', ""),
        ({"a": "5", "b": 1}, '{"a":"5"}', "$.b: printed, not shown"),
        ({"a": "5"}, '{"a":5}', "$.a: printed '5', shown 5"),
        ({"a": "5"}, '{"a":…,"c":1}', "$.c: shown, not printed"),
        ({"a": 1, "b": 2}, '{"b":2,"a":1}', "$: printed in the order"),
        ({"l": [1, 2]}, '{"l":[1]}', "$.l: 2 items printed, 1 shown"),
        ({"l": [1, 2]}, '{"l":[1,…]}', ""),
        ({}, "{}", ""),
        ({"a": 1}, "{}", "$.a: printed, not shown"),
    ],
)
def test_answers_compare_as_documented(got: Any, want: str, problem: str) -> None:
    found = mismatches(got, shown(want))
    assert found[0].startswith(problem) if problem else found == [], found


@pytest.mark.subprocess
def test_the_documented_sessions_answer_as_shown_through_grpcurl(
    server: tuple[ServerProcess, list[str]],
) -> None:
    proc, (first, shopper) = server
    block = bash_block("README.md", "## A first session")
    readme = steps(block)
    boards = steps(bash_block("docs/leaderboards.md"))
    rewards = steps(bash_block("docs/rewards.md"))
    # Every command of README's block runs and shows its answer; the ledger
    # read comes after a wait.
    assert len(readme) == block.count("grpcurl ") and all(s.answer for s in readme)
    assert [s.wait_s > 0 for s in readme] == [s.argv[-1].endswith("/ListLedger") for s in readme]
    assert block.startswith(TOKEN_LINE + "\n")
    # Every call but health's sends the token, and is refused without it.
    for step in [*readme, *boards, *rewards]:
        has_token = "authorization: Bearer $TOKEN" in step.argv
        assert has_token != step.argv[-1].startswith("grpc.health."), step.argv
    for step in [*readme, *boards]:
        Session(proc.target, first, proc.token).run(step)
    for step in rewards:
        Session(proc.target, shopper, proc.token).run(step)
    bare = [a for a in readme[0].argv if a not in ("-H", "authorization: Bearer $TOKEN")]
    refused = subprocess.run(
        Session(proc.target, first, "").command(Step(bare)), capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stderr
