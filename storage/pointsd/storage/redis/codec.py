"""Wire format 2 between Python and award.lua: the one module that knows it.

A call carries the steps of its operations once (shared steps, numbered),
the programs (lists of step numbers, numbered), and the operations, each an
object with named fields that points at its program. award.lua's header
documents every name; tests/test_codec.py checks that the two agree.

    ARGV: version, mode, now (unix s), outbox bound, steps, programs, ops,
          the index of the holds hash in KEYS (apply mode; 0 in restore)

Replies are flat: per operation code, points, balance, limit, original,
held (0/1), the number of bonuses, then (tag, points) per bonus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pointsd.service.domain import CreditOp, CreditResult, StoreCode
from pointsd.service.domain.steps import (
    Accumulate,
    Board,
    BoardSlot,
    Bump,
    Check,
    Credit,
    Cross,
    Day,
    Distinct,
    Entry,
    First,
    Peak,
    Reach,
    Scale,
    Step,
    Throttle,
)
from pointsd.storage.entries import award_data
from pointsd.storage.keys import Shard

__all__ = ["WIRE_VERSION", "BoardNames", "CallEncoder", "RestoreOp", "decode_results"]

WIRE_VERSION = "2"
APPLY = "apply"
RESTORE = "restore"

Call = tuple[list[str], list[str | int | bytes]]
# Makes the key of a user-keyed step for one user.
_UserKey = Callable[[str], str]

_CODES = {c.value: c for c in StoreCode}


@dataclass(frozen=True, slots=True)
class RestoreOp:
    """A ledger entry replayed into Redis state by `pointsd rebuild`: its
    operation (a program of the steps to replay) and what the ledger says."""

    op: CreditOp
    points: int
    balance_after: int
    # The outcome its dedup record says (AWARDED, or CAPPED for a credit the
    # ledger shows was not paid while the event's other credit was).
    code: StoreCode = StoreCode.AWARDED
    # The bonuses the ledger shows it earned (tag, points): written into the
    # dedup record, so a replay after a rebuild answers with them.
    bonuses: tuple[tuple[str, int], ...] = ()
    # The farming flag the ledger row is held under (state 'held'), if any.
    held_by: int | None = None


class KeyTable:
    """KEYS of one call; steps and ops refer to keys by 1-based index."""

    def __init__(self, fixed: list[str]) -> None:
        self.keys = list(fixed)
        self._index = {k: i + 1 for i, k in enumerate(fixed)}

    def index(self, key: str) -> int:
        found = self._index.get(key)
        if found is None:
            self.keys.append(key)
            found = self._index[key] = len(self.keys)
        return found


@dataclass(slots=True)
class _SlotForm:
    # The slot itself: held so that its id stays its own while it is a key.
    slot: BoardSlot
    # The fields that do not name a key (m, w, gm, sc, x).
    fields: dict[str, Any]
    # A tenant-wide slot's board key; a scoped slot's set of scopes.
    key: str


class BoardNames:
    """What encoding a board slot costs and never changes on a shard: its
    constant fields and key names, kept across calls (AwardStore holds one
    for all its shards; a slot is part of a compiled program, shared by every
    credit of its kind and periods). Keyed by shard and slot identity, the
    slot held so that its id stays its own; one bound for everything kept
    (scopes are the callers' department and group ids): past `limit`
    entries it starts again."""

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        # By the shard's tag (its identity as a string, whose hash Python
        # keeps) and the slot's id.
        self._slots: dict[tuple[str, int], _SlotForm] = {}
        self._scoped: dict[tuple[str, int, str], tuple[BoardSlot, str]] = {}

    def __len__(self) -> int:
        return len(self._slots) + len(self._scoped)

    def _room(self) -> None:
        if len(self._slots) + len(self._scoped) >= self.limit:
            self._slots.clear()
            self._scoped.clear()

    def slot(self, shard: Shard, slot: BoardSlot) -> _SlotForm:
        form = self._slots.get((shard.tag, id(slot)))
        if form is None:
            self._room()
            key = (
                shard.board(slot.ref())
                if slot.scope == "t"
                else shard.board_scopes(slot.board, slot.kind, slot.period_key)
            )
            fields: dict[str, Any] = {"m": slot.metric.value[0], "w": slot.newcomer_window_ms,
                                      "gm": int(slot.group_member), "sc": slot.scope,
                                      "x": slot.expires_at_s}  # fmt: skip
            form = self._slots[(shard.tag, id(slot))] = _SlotForm(slot, fields, key)
        return form

    def scoped(self, shard: Shard, slot: BoardSlot, scope_id: str) -> str:
        """The board key of a department or group scope of a slot."""
        found = self._scoped.get((shard.tag, id(slot), scope_id))
        if found is None:
            self._room()
            found = self._scoped[(shard.tag, id(slot), scope_id)] = (
                slot,
                shard.board(slot.ref(scope_id)),
            )
        return found[1]


@dataclass(slots=True)
class _Program:
    number: int
    # Key makers of the program's user-keyed steps, in `uk` order.
    user_keys: list[_UserKey]
    # The department- and group-scoped slots of the program's board steps
    # (slot, its encoded form): their key maps fill in as operations name
    # scopes. Tenant-wide slots need nothing per operation.
    scoped: list[tuple[BoardSlot, dict[str, Any]]]


class CallEncoder:
    """Encodes the operations of one award.lua call on one (tenant, shard)."""

    def __init__(
        self,
        shard: Shard,
        mode: str,
        now_s: int,
        outbox_entries_max: int,
        names: BoardNames | None = None,
    ) -> None:
        self.shard = shard
        self.names = names if names is not None else BoardNames()
        self.mode = mode
        self.now_s = now_s
        self.outbox_entries_max = outbox_entries_max
        self.keys = KeyTable([shard.maintenance, shard.balances, shard.outbox])
        # Every applied credit asks whether its user is held (a farming flag).
        self.holds_index = self.keys.index(shard.holds) if mode == APPLY else 0
        self.steps: list[dict[str, Any]] = []
        self.programs: list[list[int]] = []
        self.ops: list[dict[str, Any]] = []
        self._step_numbers: dict[int, int] = {}
        self._programs: dict[int, _Program] = {}

    def add(self, item: CreditOp | RestoreOp) -> None:
        """An operation to apply, or (restore mode) one to replay."""
        restored = item if isinstance(item, RestoreOp) else None
        op = item.op if isinstance(item, RestoreOp) else item
        program = self._programs.get(id(op.steps))
        if program is None:
            program = self._programs[id(op.steps)] = self._program(op.steps)
        user = op.user_id
        keys = self.keys
        enc: dict[str, Any] = {
            "u": user,
            "d": keys.index(self.shard.dedup(op.event_id, op.anchor)),
            "x": op.dedup_expires_at_s,
            "f": op.fingerprint,
            "p": op.points_per_unit,
            "q": op.quantity,
            "t": op.occurred_at_ms,
            "P": program.number,
        }
        if program.user_keys:
            enc["k"] = [keys.index(make(user)) for make in program.user_keys]
        if op.counterpart:
            enc["cp"] = op.counterpart
        if op.department:
            enc["dep"] = op.department
        if op.group:
            enc["grp"] = op.group
        if op.joined_ms:
            enc["join"] = op.joined_ms
        if restored is None:
            enc["e"] = award_data(op)
        else:
            enc["r"] = [restored.points, restored.balance_after, int(restored.code),
                        [list(b) for b in restored.bonuses]]  # fmt: skip
            if restored.held_by:
                enc["h"] = restored.held_by
        if program.scoped:
            self._scope_keys(program.scoped, op.department, op.group)
        self.ops.append(enc)

    def call(self) -> Call:
        args: list[str | int | bytes] = [
            WIRE_VERSION,
            self.mode,
            self.now_s,
            self.outbox_entries_max,
            orjson.dumps(self.steps),
            orjson.dumps(self.programs),
            orjson.dumps(self.ops),
            self.holds_index,
        ]
        return self.keys.keys, args

    # -- programs and steps ------------------------------------------------

    def _program(self, steps: Sequence[Step]) -> _Program:
        numbers: list[int] = []
        user_keys: list[_UserKey] = []
        scoped: list[tuple[BoardSlot, dict[str, Any]]] = []
        for step in steps:
            if isinstance(step, Throttle | Day):
                # Its key is the user's own: encoded per program, the key
                # of each operation's user travels with the operation.
                encoded = self._user_keyed(step, user_keys)
                self.steps.append(encoded)
                numbers.append(len(self.steps))
                continue
            number = self._step_numbers.get(id(step))
            if number is None:
                encoded = self._shared(step)
                self.steps.append(encoded)
                number = self._step_numbers[id(step)] = len(self.steps)
            numbers.append(number)
            if isinstance(step, Board):
                encoded_slots = self.steps[number - 1]["slots"]
                scoped.extend(
                    (slot, enc)
                    for slot, enc in zip(step.slots, encoded_slots, strict=True)
                    if slot.scope != "t"
                )
        self.programs.append(numbers)
        return _Program(len(self.programs), user_keys, scoped)

    def _user_keyed(self, step: Throttle | Day, user_keys: list[_UserKey]) -> dict[str, Any]:
        shard = self.shard
        if isinstance(step, Throttle):
            name = step.name
            user_keys.append(lambda user: shard.interval(user, name))
            return {"op": "throttle", "uk": len(user_keys), "ms": step.interval_ms,
                    "keep": step.keep_ms}  # fmt: skip
        bitmap, cover = step.name, step.cover
        user_keys.append(lambda user: shard.days(user, bitmap))
        encoded = {"op": "day", "uk": len(user_keys), "bit": step.ordinal, "scan": step.scan,
                   "keep": step.keep_s, "cover": 0}  # fmt: skip
        if cover:
            user_keys.append(lambda user: shard.days(user, cover))
            encoded["cover"] = len(user_keys)
        if step.freezes is not None:
            f = step.freezes
            encoded.update(fh=self.keys.index(shard.counters(f.period)), fc=f.counter, fmax=f.max,
                           date=f.date, back=list(f.before), fwd=list(f.after))  # fmt: skip
        return encoded

    def _shared(self, step: Step) -> dict[str, Any]:
        index, shard = self.keys.index, self.shard
        if isinstance(step, Check):
            return {"op": "check", "h": index(shard.counters(step.period)), "c": step.counter,
                    "max": step.max, "m": step.metric.value[0], "n": step.number}  # fmt: skip
        if isinstance(step, Bump):
            return {"op": "bump", "h": index(shard.counters(step.period)), "c": step.counter,
                    "by": step.by.value, "x": step.period.expires_at_s}  # fmt: skip
        if isinstance(step, Credit | Scale):
            return _plain(step)
        if isinstance(step, First):
            return {"op": "first", "h": index(shard.first_seen)}
        if isinstance(step, Board):
            return {"op": "board", "slots": [self._slot(slot) for slot in step.slots]}
        if isinstance(step, Accumulate):
            return {"op": "acc", "h": index(shard.counters(step.period)), "c": step.counter,
                    "unit": step.unit, "x": step.period.expires_at_s,
                    "tiers": list(step.tiers)}  # fmt: skip
        if isinstance(step, Peak):
            return {"op": "peak", "h": index(shard.counters(step.period)), "c": step.counter,
                    "x": step.period.expires_at_s, "v": int(step.of_value)}  # fmt: skip
        if isinstance(step, Distinct):
            return {"op": "distinct", "h": index(shard.counters(step.period)),
                    "c": step.counter, "of": step.member.value, "max": step.bound,
                    "x": step.period.expires_at_s}  # fmt: skip
        if isinstance(step, Cross | Reach | Entry):
            return self._bonus_step(step)
        raise TypeError(f"no wire encoding for step {step!r}")

    def _bonus_step(self, step: Cross | Reach | Entry) -> dict[str, Any]:
        encoded = _bonus_step(step)
        paid = None if isinstance(step, Entry) else step.paid
        if paid is not None:
            encoded.update(ph=self.keys.index(self.shard.counters(paid)), px=paid.expires_at_s)
        if not isinstance(step, Reach) and _grants_badge(step):
            encoded["bk"] = self.keys.index(self.shard.badges)
        return encoded

    def _slot(self, slot: BoardSlot) -> dict[str, Any]:
        form = self.names.slot(self.shard, slot)
        encoded = dict(form.fields)
        if slot.scope == "t":
            encoded["key"] = self.keys.index(form.key)
            encoded["set"] = 0
        else:
            encoded["key"] = {}
            encoded["set"] = self.keys.index(form.key)
        return encoded

    def _scope_keys(
        self, scoped: list[tuple[BoardSlot, dict[str, Any]]], department: str, group: str
    ) -> None:
        """Keys of the department and group scopes this operation feeds."""
        for slot, encoded in scoped:
            scope_id = department if slot.scope == "d" else group
            if scope_id:
                keys = encoded["key"]
                if scope_id not in keys:
                    keys[scope_id] = self.keys.index(self.names.scoped(self.shard, slot, scope_id))


def _plain(step: Credit | Scale) -> dict[str, Any]:
    """Steps that name no key."""
    if isinstance(step, Scale):
        return {"op": "scale", "pct": step.percent, "add": step.extra}
    return {"op": "credit"}


def _bonus_step(step: Cross | Reach | Entry) -> dict[str, Any]:
    if isinstance(step, Cross):
        return {"op": "cross", "at": [[t.at, t.bonus.points, t.bonus.tag, t.bonus.reason,
                                       t.bonus.badge, t.freezes, int(t.per_run)]
                                      for t in step.thresholds]}  # fmt: skip
    if isinstance(step, Reach):
        return {"op": "reach", "at": [[t.at, t.bonus.tag, t.bonus.reason] for t in step.thresholds]}
    b = step.bonus
    return {"op": "entry", "pts": b.points, "tag": b.tag, "why": b.reason, "badge": b.badge}


def _grants_badge(step: Cross | Entry) -> bool:
    if isinstance(step, Entry):
        return bool(step.bonus.badge)
    return any(t.bonus.badge for t in step.thresholds)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_results(reply: Sequence[Any]) -> list[CreditResult]:
    """The results of one call, in operation order."""
    results: list[CreditResult] = []
    i, end = 0, len(reply)
    codes = _CODES
    while i < end:
        code, points, balance, limit, original, held, count = reply[i : i + 7]
        i += 7
        bonuses: tuple[tuple[str, int], ...] = ()
        if count:
            bonuses = tuple(
                (_text(reply[i + 2 * j]), int(reply[i + 2 * j + 1])) for j in range(int(count))
            )
            i += 2 * int(count)
        results.append(
            CreditResult(
                codes[int(code)],
                int(points),
                int(balance),
                int(limit),
                codes[int(original)] if original else None,
                bonuses,
                held=bool(held),
            )
        )
    return results
