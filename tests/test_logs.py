"""Structured logs and the request id (docs/metrics.md): POINTS_LOG_FORMAT
text or json; every log line of an RPC carries the caller's x-request-id (or
a generated one when it is missing or unacceptable), and the caller gets it
back as trailing metadata."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any

import grpc
import pytest

from pointsd.service.config import ConfigError, Settings
from pointsd.service.logs import REQUEST_ID_MAX, request_id_of, setup_logging
from tests.conftest import Api
from tests.helpers import ev

_GENERATED = re.compile(r"^[0-9a-f]{16}$")
_KEY = "x-request-id"


class Captured:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def from_rpc(self) -> list[dict[str, Any]]:
        return [o for o in self.objects() if o["logger"] == "pointsd.rpc"]


@contextmanager
def _logging_to(fmt: str) -> Iterator[Captured]:
    """setup_logging as `pointsd` runs it, into a buffer; pytest's own
    handlers come back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    captured = Captured()
    setup_logging("INFO", fmt, stream=captured.stream)
    try:
        yield captured
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture
def json_logs() -> Iterator[Captured]:
    with _logging_to("json") as captured:
        yield captured


@pytest.fixture
def text_logs() -> Iterator[Captured]:
    with _logging_to("text") as captured:
        yield captured


def _request_id(metadata: Iterable[tuple[str, Any]] | None) -> str:
    (found,) = [v for k, v in metadata or () if k == _KEY]
    assert isinstance(found, str)
    return found


@asynccontextmanager
async def _rebuild_running(api: Api) -> AsyncIterator[None]:
    """The tenant's shard under maintenance: RecordActivity answers
    UNAVAILABLE, and the handler logs it at WARNING."""
    shard = api.app.shards()[0]
    await api.app.stores.balances.set_maintenance(shard, True)
    try:
        yield
    finally:
        await api.app.stores.balances.set_maintenance(shard, False)


async def _refused(api: Api, metadata: tuple[tuple[str, str], ...]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.RecordActivity(ev(api.tenant, "u1", "login"), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    return err.value


def test_request_ids_are_bounded_printable_ascii() -> None:
    assert request_id_of([("other", "x"), (_KEY, "abc")]) == "abc"
    longest = "r" * REQUEST_ID_MAX
    assert request_id_of([(_KEY, longest)]) == longest
    for bad in ["r" * (REQUEST_ID_MAX + 1), "", "a\x01b", "é", b"abc"]:
        assert _GENERATED.match(request_id_of([(_KEY, bad)])), bad
    assert _GENERATED.match(request_id_of(None))
    assert request_id_of([]) != request_id_of([])


async def test_the_log_lines_of_a_call_carry_the_callers_request_id(
    api: Api, json_logs: Captured
) -> None:
    async with _rebuild_running(api):
        err = await _refused(api, ((_KEY, "abc"),))
    assert _request_id(err.trailing_metadata()) == "abc"
    (line,) = json_logs.from_rpc()
    assert line["request_id"] == "abc"
    assert line["level"] == "WARNING"
    assert line["message"].startswith("RecordActivity: a rebuild")
    assert set(line) == {"time", "level", "logger", "message", "request_id"}
    assert datetime.fromisoformat(line["time"]).utcoffset() is not None


async def test_an_oversized_request_id_is_replaced_by_a_generated_one(
    api: Api, json_logs: Captured
) -> None:
    sent = "x" * (REQUEST_ID_MAX + 1)
    async with _rebuild_running(api):
        err = await _refused(api, ((_KEY, sent),))
    returned = _request_id(err.trailing_metadata())
    assert returned != sent and _GENERATED.match(returned)
    (line,) = json_logs.from_rpc()
    assert line["request_id"] == returned


async def test_every_call_gets_a_request_id_back_streams_too(api: Api) -> None:
    first = api.stub.RecordActivity(ev(api.tenant, "u1", "login"))
    await first
    second = api.stub.RecordActivity(ev(api.tenant, "u2", "login"))
    await second
    ids = [_request_id(await c.trailing_metadata()) for c in (first, second)]
    assert all(_GENERATED.match(i) for i in ids) and ids[0] != ids[1]
    stream = api.stub.StreamActivities(metadata=((_KEY, "stream-1"),))
    await stream.write(ev(api.tenant, "u3", "login"))
    await stream.done_writing()
    assert len([r async for r in stream]) == 1
    assert _request_id(await stream.trailing_metadata()) == "stream-1"


async def test_text_lines_name_the_request_id(api: Api, text_logs: Captured) -> None:
    async with _rebuild_running(api):
        await _refused(api, ((_KEY, "abc"),))
    (line,) = [x for x in text_logs.lines() if " pointsd.rpc: " in x]
    assert re.search(r" WARNING pointsd\.rpc: RecordActivity: a rebuild .* request_id=abc$", line)


def test_json_lines_outside_a_call_have_no_request_id_and_carry_the_traceback(
    json_logs: Captured,
) -> None:
    log = logging.getLogger("pointsd.test")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    (line,) = [o for o in json_logs.objects() if o["logger"] == "pointsd.test"]
    assert line["message"] == "it failed" and line["level"] == "ERROR"
    assert "request_id" not in line
    assert line["exception"].startswith("Traceback") and "ValueError: boom" in line["exception"]


def test_the_log_format_is_a_checked_setting() -> None:
    assert Settings().log_format == "text"
    assert Settings.from_env({"POINTS_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="POINTS_LOG_FORMAT"):
        Settings.from_env({"POINTS_LOG_FORMAT": "xml"})
    with pytest.raises(ValueError, match="log format"):
        setup_logging("INFO", "xml")


@pytest.mark.parametrize("given", ["abc def", "a=b", "x\nlevel=ERROR", "ü", "", "a" * 65], ids=repr)
def test_a_request_id_that_could_forge_a_log_field_is_replaced(given: str) -> None:
    from pointsd.service.logs import request_id_of

    made = request_id_of([("x-request-id", given)])
    assert made != given and len(made) == 16
    assert request_id_of([("x-request-id", "req-42.a:b_c")]) == "req-42.a:b_c"
