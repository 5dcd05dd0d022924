"""The wire format has one owner (storage/pointsd/storage/redis/codec.py) and one reader
(storage/pointsd/storage/redis/award.lua): they agree on every name, and the result codes
are the one StoreCode list. Pure: no servers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest

from pointsd.service.domain import CreditOp, Metric, Period, PeriodRef, Role, StoreCode
from pointsd.service.domain.steps import (
    Accumulate,
    Amount,
    Board,
    BoardSlot,
    Bonus,
    Bump,
    Check,
    Credit,
    Cross,
    Day,
    Distinct,
    Entry,
    First,
    Freezes,
    Member,
    Peak,
    Reach,
    Scale,
    Step,
    Threshold,
    Throttle,
)
from pointsd.storage.keys import KeySchema, Shard
from pointsd.storage.redis.codec import (
    APPLY,
    RESTORE,
    WIRE_VERSION,
    BoardNames,
    CallEncoder,
    RestoreOp,
    decode_results,
)
from scripts.procs import ROOT
from tests.helpers import is_compiled

AWARD_LUA = (ROOT / "storage/pointsd/storage/redis/award.lua").read_text()
BALANCE_LUA = (ROOT / "storage/pointsd/storage/redis/balance.lua").read_text()
DAY = PeriodRef(Period.DAY, "2027-01-01", 1_800_000_000)

EVERY_STEP: tuple[Step, ...] = (
    Accumulate(DAY, "q", 30, (1, 2, 3)),
    Scale(150, 2, "double"),
    Throttle("poke", 1000, 60_000),
    Check(DAY, "c", Metric.COUNT, 3, "3 a day", 1),
    Credit(),
    Bump(DAY, "c", Amount.COUNT),
    Distinct(DAY, "thanked", Member.COUNTERPART, 5),
    Peak(DAY, "members"),
    Day(
        "login",
        42,
        400,
        86_400,
        cover="frozen",
        freezes=Freezes(PeriodRef(Period.EVER, "all", 0), "streak-freezes", 2),
    ),
    Cross((Threshold(5, Bonus("streak-5", 10, "5 days", badge="steady")),), paid=DAY),
    Entry(Bonus("welcome", 0, "Welcome")),
    Reach((Threshold(500, Bonus("level.communicator", 0, "Level up")),), paid=DAY),
    First(),
    Board(
        (
            BoardSlot("pts", Period.DAY, "2027-01-01", "t", Metric.POINTS, 1_800_000_000),
            BoardSlot("pts", Period.DAY, "2027-01-01", "d", Metric.POINTS, 1_800_000_000),
            BoardSlot("grp", Period.WEEK, "2026-W53", "t", Metric.COUNT, 0, 10, True),
        )
    ),
)


def _op(**fields: Any) -> CreditOp:
    base: dict[str, Any] = {
        "tenant_id": "t", "user_id": "ann", "role": Role.ACTOR, "event_id": "e1",
        "fingerprint": "f" * 16, "points_per_unit": 2, "quantity": 1,
        "occurred_at_ms": 1_798_000_000_000, "recorded_at_ms": 1_798_000_000_001,
        "dedup_expires_at_s": 1_798_100_000, "steps": EVERY_STEP,
    }  # fmt: skip
    base.update(fields)
    return CreditOp(**base)


def _encoded(
    mode: str,
    restored: tuple[int, int, StoreCode] | None = None,
    held_by: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    encoder = CallEncoder(KeySchema().shard("t", 0), mode, 1_798_000_000, 0)
    op = _op(**fields)
    encoder.add(op if restored is None else RestoreOp(op, *restored, held_by=held_by))
    keys, args = encoder.call()
    assert args[:4] == [WIRE_VERSION, mode, 1_798_000_000, 0]
    steps, programs, ops = (orjson.loads(cast(bytes, a)) for a in args[4:7])
    return {"keys": keys, "steps": steps, "programs": programs, "ops": ops}


def _read(pattern: str) -> set[str]:
    return set(re.findall(pattern, AWARD_LUA))


def test_the_script_reads_every_operation_field_the_codec_writes_and_no_other() -> None:
    applied = _encoded(APPLY, counterpart="bob", department="rd", group="g1", joined_ms=5)
    restored = _encoded(RESTORE, (3, 9, StoreCode.CAPPED), held_by=7)
    written = set(applied["ops"][0]) | set(restored["ops"][0])
    assert written == {"u", "d", "x", "f", "p", "q", "t", "P", "k", "cp", "dep", "grp", "join",
                       "e", "r", "h"}  # fmt: skip
    # Member names a Distinct step may read are operation fields too.
    read = _read(r"\bop\.(\w+)") | {m.value for m in Member}
    assert written == read


def test_the_script_reads_every_step_field_the_codec_writes() -> None:
    steps = _encoded(APPLY)["steps"]
    kinds = {s["op"] for s in steps}
    assert kinds == _read(r"\bCHECK\.(\w+) = ") | _read(r"\bAPPLY\.(\w+) = ")
    written = {k for s in steps for k in s}
    assert written == _read(r"\bs\.(\w+)")
    slots = {k for s in steps if s["op"] == "board" for slot in s["slots"] for k in slot}
    assert slots == _read(r"\bslot\.(\w+)")


def test_the_header_documents_every_name() -> None:
    header = AWARD_LUA.split("-- Result codes")[0]
    steps = _encoded(APPLY, counterpart="bob", department="rd", group="g1", joined_ms=5)["steps"]
    for step in steps:
        assert f'"{step["op"]}"' in header, step["op"]
        for name in step:
            if name != "op":
                assert re.search(rf"\b{name}\b", header), (step["op"], name)
    for name in ("u", "d", "x", "f", "p", "q", "t", "P", "k", "cp", "dep", "grp", "join", "e", "r"):
        assert re.search(rf"\b{name}\b", header.split("ARGV[7]")[1]), name


def test_shared_steps_and_programs_are_sent_once_per_call() -> None:
    encoder = CallEncoder(KeySchema().shard("t", 0), APPLY, 1_798_000_000, 0)
    for i in range(3):
        encoder.add(_op(event_id=f"e{i}", user_id=f"u{i}"))
    _, args = encoder.call()
    steps, programs, ops = (orjson.loads(cast(bytes, a)) for a in args[4:7])
    assert len(programs) == 1 and [o["P"] for o in ops] == [1, 1, 1]
    # User-keyed steps (the throttle, the day) travel with each operation as
    # its own keys: the throttle's and the day's two bitmaps (a badge lives
    # in the shard's badge hash: no key of the user's own).
    assert len(steps) == len(EVERY_STEP)
    assert [len(o["k"]) for o in ops] == [3, 3, 3]
    assert len({tuple(o["k"]) for o in ops}) == 3


def test_result_codes_exist_once() -> None:
    for source, names in (
        (AWARD_LUA, {"AWARDED", "DUPLICATE", "CAPPED", "THROTTLED", "BACKPRESSURE",
                     "MAINTENANCE", "ID_REUSED"}),
        (BALANCE_LUA, {"APPLIED", "DUPLICATE", "INSUFFICIENT", "BACKPRESSURE", "MAINTENANCE",
                       "KEY_REUSED"}),
    ):  # fmt: skip
        block = source.split("-- Result codes")[1].split("\n\n")[0]
        declared: dict[str, int] = {}
        for names_text, numbers_text in re.findall(r"local ([A-Z_, ]+) = ([0-9, ]+)", block):
            pairs = zip(names_text.split(","), numbers_text.split(","), strict=True)
            declared.update({n.strip(): int(v) for n, v in pairs})
        assert set(declared) == names
        assert declared == {n: StoreCode[n].value for n in names}


def test_results_carry_their_bonuses() -> None:
    reply = [1, 5, 60, 0, 0, 0, 2, b"streak-5", 10, b"level-2", 0, 2, 5, 60, 0, 1, 1, 0,
             3, 0, 9, 1, 0, 0, 0]  # fmt: skip
    first, dup, capped = decode_results(reply)
    assert (first.code, first.points, first.balance, first.bonuses, first.held) == (
        StoreCode.AWARDED, 5, 60, (("streak-5", 10), ("level-2", 0)), False,
    )  # fmt: skip
    assert (dup.code, dup.original, dup.bonuses, dup.held) == (
        StoreCode.DUPLICATE, StoreCode.AWARDED, (), True,
    )  # fmt: skip
    assert (capped.code, capped.limit_index, capped.original) == (StoreCode.CAPPED, 1, None)


def test_a_step_without_a_wire_encoding_is_refused() -> None:
    @dataclass(frozen=True, slots=True)
    class Unknown(Step):
        pass

    if is_compiled(Step):
        # Compiled (scripts/compile, the image), a step of another module
        # cannot even be made: the steps are a closed set.
        with pytest.raises(TypeError, match="interpreted classes cannot inherit from compiled"):
            Unknown()
        return
    with pytest.raises(TypeError, match="no wire encoding"):
        _encoded(APPLY, steps=(Unknown(),))


def test_board_names_kept_across_calls_encode_what_a_fresh_call_does() -> None:
    """AwardStore keeps one BoardNames for its shards across calls: every
    call must still encode exactly what an encoder of its own would, on
    every shard, also after the names started again at their bound."""
    shards = [KeySchema().shard("t", 0), KeySchema().shard("t", 1), KeySchema().shard("u", 0)]
    ops = [
        _op(event_id=f"e{i}", user_id=f"u{i}", department=f"d{i % 2}", group=f"g{i % 3}")
        for i in range(6)
    ]

    def call(shard: Shard, chunk: list[CreditOp], names: BoardNames | None) -> Any:
        encoder = CallEncoder(shard, APPLY, 1_798_000_000, 0, names)
        for op in chunk:
            encoder.add(op)
        return encoder.call()

    for limit in (20_000, 3, 1):
        names = BoardNames(limit=limit)
        for shard in shards * 2:
            for chunk in (ops[:2], ops[2:5], ops[:6], ops[5:]):
                assert call(shard, chunk, names) == call(shard, chunk, None)
            assert len(names) <= max(limit, 1)
    # Tenant-wide and department boards were encoded, each department its key.
    keys, _ = call(shards[0], ops, None)
    assert {k.rsplit(":", 2)[-2:][1] for k in keys if ":lb:pts:" in k} >= {"t", "d0", "d1"}


def test_board_names_are_bounded_in_all_whatever_the_scopes() -> None:
    """Department and group ids are the callers': one bound for every shard."""
    names = BoardNames(limit=100)
    ops = [_op(event_id=f"e{i}", department=f"dep-{i}") for i in range(500)]
    for s in range(8):
        encoder = CallEncoder(KeySchema().shard("t", s), APPLY, 1_798_000_000, 0, names)
        for op in ops:
            encoder.add(op)
        assert len(names) <= 100
