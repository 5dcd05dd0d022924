"""Property-based fuzz over every RPC of points.v1.PointsService and
points.v1.AdminService (issue 12): random messages built from each method's
request descriptor, and random bytes as the raw request. Every answer is OK
or a defined status with a short, non-empty message (never INTERNAL, UNKNOWN
or UNAVAILABLE: the stores are up), and a refused RecordActivity, Redeem,
AdjustPoints or CreateItem leaves the tenant's Redis keys, ledger rows and
catalog rows as they were.

Methods are found by walking the descriptors: a new RPC is fuzzed without
editing this file. Runs are reproducible (derandomized, no example database);
POINTS_FUZZ_EXAMPLES raises the number of examples per method (default small
for CI). Real in-process gRPC server, real Redis and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import redis as sync_redis
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.clock import parse_instant
from scripts.tokens import bearer
from tests.clock import TestClock
from tests.conftest import Api, ApiFactory
from tests.helpers import ledger_count, tenant_keys

_SERVICES = ("PointsService", "AdminService")
# A refusal of these must not change state.
_MUTATING = {"RecordActivity", "Redeem", "AdjustPoints", "CreateItem"}
# Statuses a caller may meet with the stores up. PERMISSION_DENIED and
# UNAUTHENTICATED belong to the authentication a later step adds.
_DEFINED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
MESSAGE_CHARS_MAX = 1000
NOW = "2026-12-07T10:00:00+08:00"

EXAMPLES = int(os.environ.get("POINTS_FUZZ_EXAMPLES", "20"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    # One server per test, shared by its examples: its tenant is fresh and
    # every assertion is about one call, so sharing is what we want.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# google.protobuf.Timestamp's valid range: 0001-01-01 .. 9999-12-31.
TS_MIN, TS_MAX = -62_135_596_800, 253_402_300_799
LONG_REPEAT = 1001  # one past batch_events_max

# A falsifying example with a 20 KB string has a large repr: print it anyway.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


def metadata(api: Api) -> tuple[tuple[str, str], ...]:
    """What every fuzzed call sends as metadata: a token of every role and
    tenant, so that the requests reach the handlers."""
    return bearer(api.token)


def methods() -> list[MethodDescriptor]:
    return [m for s in _SERVICES for m in pb.DESCRIPTOR.services_by_name[s].methods]


def _unary(m: MethodDescriptor) -> bool:
    return not (m.client_streaming or m.server_streaming)


# -- strategies built from descriptors ---------------------------------------

_chars = st.characters(codec="utf-8")
_specials = st.sampled_from(["", "{", "}", ":", "%", "{t}", "a:b", "%s%n", "\x00", "\n\r\t",
                             "é漢字🙂", "\u202e", "..", "*", "?"])  # fmt: skip


def text() -> st.SearchStrategy[str]:
    """Strings: empty, short and odd, control characters, unicode, 20 KB."""
    return st.one_of(
        _specials,
        st.text(_chars, max_size=40),
        st.text(st.characters(max_codepoint=0x1F), max_size=8),
        st.builds(lambda c: c * 20_000, st.sampled_from(["a", "{", "字", "\x01"])),
    )


def integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (0, 1, -1, lo, hi, lo + 1, hi - 1, 2**31 - 1, 2**31, -(2**31) - 1)
             if lo <= v <= hi]  # fmt: skip
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def timestamps(now_s: int) -> st.SearchStrategy[Message]:
    seconds = st.one_of(
        st.sampled_from([0, -1, TS_MIN, TS_MIN - 1, TS_MAX, TS_MAX + 1, *INT64, now_s]),
        st.integers(now_s - 400 * 86_400, now_s + 400 * 86_400),
        st.integers(*INT64),
    )
    nanos = st.sampled_from([0, 999_999_999, 1_000_000_000, -1, *INT32])
    return st.builds(lambda s, n: Timestamp(seconds=s, nanos=n), seconds, nanos)


class Builder:
    """Strategies for messages of a descriptor. String fields named in
    `plausible` sometimes take one of its values (the real tenant, a known
    action or board), so requests get past the first checks."""

    def __init__(self, plausible: dict[str, list[str]], now_s: int) -> None:
        self.plausible = plausible
        self.now_s = now_s

    def message(self, d: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(d)
        if d.full_name == "google.protobuf.Timestamp":
            return timestamps(self.now_s)
        fields = {f.name: self.field(f, depth) for f in d.fields}
        return st.fixed_dictionaries({}, optional=fields).map(lambda kw: _fill(cls(), kw))

    def field(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key = self.scalar(f.message_type.fields_by_name["key"], depth)
            value = self.scalar(f.message_type.fields_by_name["value"], depth)
            return st.one_of(
                st.dictionaries(key, value, max_size=4),
                st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.sampled_from([17, 200])),
            )
        one = self.scalar(f, depth)
        if f.is_repeated:
            return st.one_of(
                st.lists(one, max_size=3),
                st.builds(lambda x: [x] * LONG_REPEAT, one),
            )
        return one

    def scalar(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        t = f.type
        if t == FieldDescriptor.TYPE_MESSAGE:
            assert f.message_type is not None
            if depth >= 2:
                return st.just(message_factory.GetMessageClass(f.message_type)())
            return self.message(f.message_type, depth + 1)
        if t == FieldDescriptor.TYPE_STRING:
            known = self.plausible.get(f.name)
            return st.one_of(st.sampled_from(known), text()) if known else text()
        if t == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        if t == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if t == FieldDescriptor.TYPE_ENUM:
            assert f.enum_type is not None
            values = [v.number for v in f.enum_type.values]
            return st.one_of(st.sampled_from(values), integers(*INT32))
        if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return st.floats(allow_nan=True, allow_infinity=True, width=32)
        return integers(*_INT_RANGES[t])


def _fill(msg: Message, values: dict[str, Any]) -> Message:
    for name, value in values.items():
        f = msg.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            target.update(value)
        elif f.is_repeated:
            target.extend(value)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


# -- the server under test ------------------------------------------------------


@pytest.fixture
async def fuzz_api(make_api: ApiFactory, tenant: str, clock: TestClock) -> AsyncIterator[Api]:
    """The default rules at a fixed instant, with an item and a funded user,
    so Redeem and friends can also succeed; no flusher, so nothing moves the
    state between two snapshots but the call itself. A plain channel: the
    token goes as each call's own metadata, as a client sends it."""
    clock.set(parse_instant(NOW))
    made = await make_api([tenant], flusher="off")
    plain = grpc.aio.insecure_channel(made.target)
    api = dataclasses.replace(made, channel=plain)
    admin = _callable(api, "AdminService", "CreateItem")
    await admin(pb.CreateItemRequest(item=pb.Item(
        tenant_id=tenant, item_id="mug", name="Mug", kind=pb.PHYSICAL, cost=5, stock=3,
        enabled=True,
    )), metadata=metadata(api))  # fmt: skip
    adjust = _callable(api, "AdminService", "AdjustPoints")
    await adjust(pb.AdjustPointsRequest(
        tenant_id=tenant, user_id="ann", points=100, reason="seed", idempotency_key="seed",
    ), metadata=metadata(api))  # fmt: skip
    yield api
    await plain.close()


def _builder(api: Api) -> Builder:
    tenant = api.app.rules.tenants[api.tenant]
    plausible = {
        "tenant_id": [api.tenant],
        "action": sorted(a.key for a in tenant.actions.values()),
        "board": ["points", *sorted(getattr(tenant, "boards", {}) or {})],
        "user_id": ["ann", "bob"],
        "target_user_id": ["bob"],
        "member_id": ["ann"],
        "item_id": ["mug"],
    }
    return Builder(plausible, parse_instant(NOW) // 1000)


def _callable(api: Api, service: str, method: str) -> Any:
    m = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    out = message_factory.GetMessageClass(m.output_type)
    return api.channel.unary_unary(
        f"/points.v1.{service}/{method}",
        request_serializer=lambda msg: msg.SerializeToString(),
        response_deserializer=out.FromString,
    )


def _raw(api: Api, service: str, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return api.channel.unary_unary(
        f"/points.v1.{service}/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )


def _check_refusal(method: str, err: grpc.aio.AioRpcError, request: object) -> None:
    code, details = err.code(), err.details() or ""
    event(code.name)  # --hypothesis-show-statistics: how far the requests got
    shown = str(request)[:300]
    assert code in _DEFINED, f"{method} answered {code.name}: {details[:300]!r} to {shown}"
    assert details.strip(), f"{method}: {code.name} without a message, to {shown}"
    assert len(details) < MESSAGE_CHARS_MAX, f"{method}: a {len(details)}-char message"


def _tenant_of(request: Any) -> str:
    """The tenant a request names (CreateItem's is its item's)."""
    inner = request.item if request.DESCRIPTOR.name == "CreateItemRequest" else request
    return str(getattr(inner, "tenant_id", ""))


def _snapshot(rds: sync_redis.Redis, sql: Callable[..., list[Any]], tenant: str) -> Any:
    """The tenant's state: every Redis key with its content, and its ledger
    and catalog row counts."""
    keys: dict[bytes, Any] = {}
    for k in tenant_keys(rds, tenant):
        kind: Any = rds.type(k)
        read: dict[bytes, Callable[[bytes], Any]] = {
            b"string": rds.get,
            b"hash": rds.hgetall,
            b"set": lambda key: sorted(rds.smembers(key)),
            b"zset": lambda key: rds.zrange(key, 0, -1, withscores=True),
            b"list": lambda key: rds.lrange(key, 0, -1),
            b"stream": lambda key: rds.xrange(key),
        }
        keys[k] = (kind, read.get(kind, lambda key: None)(k))
    items = sql("SELECT COUNT(*) FROM catalog_items WHERE tenant_id=:t", t=tenant)[0][0]
    return keys, ledger_count(sql, tenant), int(items)


_UNARY = [(m.containing_service.name, m.name) for m in methods() if _unary(m)]
_STREAMS = [(m.containing_service.name, m.name) for m in methods() if not _unary(m)]


def test_every_method_is_fuzzed() -> None:
    assert len(_UNARY) + len(_STREAMS) == len(methods())
    assert ("PointsService", "StreamActivities") in _STREAMS
    assert ("AdminService", "AdjustPoints") in _UNARY


@pytest.mark.parametrize(("service", "method"), _UNARY, ids=[f"{s}.{m}" for s, m in _UNARY])
@FUZZ
@given(data=st.data())
async def test_random_messages_get_defined_statuses(
    fuzz_api: Api, rds: sync_redis.Redis, sql: Any, service: str, method: str, data: Any
) -> None:
    api = fuzz_api
    m = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    request = data.draw(_builder(api).message(m.input_type), label="request")
    # A request for another tenant never reaches this one's state; a SCAN of
    # the whole Redis is the cost of a snapshot, so only these are checked.
    checked = method in _MUTATING and _tenant_of(request) == api.tenant
    before = _snapshot(rds, sql, api.tenant) if checked else None
    try:
        await _callable(api, service, method)(request, metadata=metadata(api), timeout=30)
        event("OK")
    except grpc.aio.AioRpcError as err:
        _check_refusal(method, err, request)
        if before is not None:
            assert _snapshot(rds, sql, api.tenant) == before, (
                f"a refused {method} changed the tenant's state: {str(request)[:300]}"
            )


@pytest.mark.parametrize(("service", "method"), _UNARY, ids=[f"{s}.{m}" for s, m in _UNARY])
@FUZZ
@given(payload=st.one_of(st.binary(max_size=200), st.binary(min_size=20_000, max_size=20_100)))
async def test_random_bytes_get_defined_statuses(
    fuzz_api: Api, service: str, method: str, payload: bytes
) -> None:
    try:
        await _raw(fuzz_api, service, method)(payload, metadata=metadata(fuzz_api), timeout=30)
    except grpc.aio.AioRpcError as err:
        _check_refusal(method, err, payload)


@pytest.mark.parametrize(("service", "method"), _STREAMS, ids=[f"{s}.{m}" for s, m in _STREAMS])
@FUZZ
@given(data=st.data(), undecodable=st.booleans())
async def test_random_streams_get_defined_statuses(
    fuzz_api: Api, service: str, method: str, data: Any, undecodable: bool
) -> None:
    api = fuzz_api
    m = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    events = data.draw(
        st.lists(_builder(api).message(m.input_type), min_size=1, max_size=4), label="events"
    )
    payloads = [e.SerializeToString() for e in events]
    if undecodable:  # a message whose bytes do not decode, somewhere in the stream
        at = data.draw(st.integers(0, len(payloads)), label="undecodable at")
        # Sent last: the server ends the call on it, and a client write after
        # that fails in the client's own core ("Internal error from Core").
        payloads[at:] = [data.draw(st.sampled_from([b"\x00", b"\x12\x02\xff\xfe"]))]
    call = api.channel.stream_stream(
        f"/points.v1.{service}/{method}",
        request_serializer=lambda b: b,
        response_deserializer=message_factory.GetMessageClass(m.output_type).FromString,
    )

    async def requests() -> AsyncIterator[bytes]:
        for p in payloads:
            yield p

    results: list[Any] = []
    try:
        async for result in call(requests(), metadata=metadata(api), timeout=30):
            results.append(result)
    except grpc.aio.AioRpcError as err:
        _check_refusal(method, err, events)
        return
    assert not undecodable, "a stream with an undecodable message ended OK"
    assert len(results) == len(events)
    for result in results:
        assert len(result.reason) < MESSAGE_CHARS_MAX, result.reason[:300]
