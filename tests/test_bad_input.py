"""Bad input that used to get through: requests whose bytes do not decode,
fields quoted back whole in error messages, and Balance.day's format.
Real in-process gRPC server, real Redis and PostgreSQL."""

from __future__ import annotations

import logging
import re
from typing import Any

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from scripts.procs import ROOT
from tests.conftest import Api

_SERVICES = ("PointsService", "AdminService")


def _bad_text(message: Any) -> bytes:
    """A string field of the message (or of a message inside it) holding
    bytes that are not UTF-8."""
    for f in message.fields:
        if f.type == f.TYPE_STRING:
            return bytes([f.number << 3 | 2, 2, 0xFF, 0xFE])
    for f in message.fields:
        if f.type == f.TYPE_MESSAGE and (inner := _bad_text(f.message_type)):
            return bytes([f.number << 3 | 2, len(inner)]) + inner
    return b""


_NO_STRINGS = {"ListTokensRequest"}


def _unary_methods() -> list[tuple[str, str, str, bytes]]:
    """(service, method, request type, a string field of it holding invalid UTF-8)."""
    out = []
    for service in _SERVICES:
        for m in pb.DESCRIPTOR.services_by_name[service].methods:
            if not (m.client_streaming or m.server_streaming):
                bad = _bad_text(m.input_type)
                # Only a request without any string field has no bad text.
                assert bad or m.input_type.name in _NO_STRINGS, m.name
                out.append((service, m.name, m.input_type.full_name, bad))
    return out


def _raw(api: Api, service: str, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return api.channel.unary_unary(
        f"/points.v1.{service}/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )


@pytest.mark.parametrize("kind", ["zero-byte", "invalid-utf8"])
async def test_undecodable_requests_are_invalid_argument_on_every_unary_method(
    api: Api, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for service, method, message, bad_text in _unary_methods():
        # The single byte 0x00 (there is no field 0), or a string field
        # whose bytes are not UTF-8.
        payload = b"\x00" if kind == "zero-byte" else bad_text
        if not payload:
            continue
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _raw(api, service, method)(payload)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.value)
            assert err.value.details() == (
                f"the request is not a valid {message} message (its bytes do not decode)"
            )
    # No traceback, and at most one line per method however many arrive.
    records = [r for r in caplog.records if "not a valid" in r.getMessage()]
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in records)
    assert len(records) <= len(_unary_methods())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_huge_board_name_is_cut_in_the_message(api: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.Leaderboard(
            pb.LeaderboardRequest(tenant_id=api.tenant, board="b" * 20_000, period=pb.DAY)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    details = err.value.details() or ""
    assert details.startswith(f"board: tenant {api.tenant!r} has no board 'bbbb")
    assert len(details) < 300


async def test_a_huge_period_key_is_cut_in_the_message(api: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.Leaderboard(
            pb.LeaderboardRequest(
                tenant_id=api.tenant, board="points", period=pb.DAY, period_key="9" * 20_000
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.value.details() or "") < 300


async def test_balance_day_is_the_documented_format(api: Api) -> None:
    got = await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id="ann"))
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", got.day)
    proto = (ROOT / "protos/points/v1/points.proto").read_text()
    comment = proto.split("  string day = 7;")[0].rsplit("\n", 2)[-2]
    assert "YYYY-MM-DD" in comment, comment
