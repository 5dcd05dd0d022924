"""Protobuf conversion, in one place: domain values and store records out
as `points.v1` messages. (Requests in are validated by service/pointsd/service/validation.py,
which turns them into domain values.)"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.domain import Period
from pointsd.service.rules import Level
from pointsd.storage.entries import (
    KIND_ADJUST,
    KIND_AWARD,
    KIND_BONUS,
    KIND_REFUND,
    KIND_RELEASE,
    KIND_SPEND,
    KIND_VOID,
    STATE_HELD,
    LedgerRow,
)
from pointsd.storage.postgres.catalog import Item, Redemption
from pointsd.storage.postgres.winners import WinnersRecord
from pointsd.storage.redis.boards import BoardEntry

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

    from pointsd.service.ingest import EventResult
    from pointsd.service.progress import ProgressReport

__all__ = [
    "ITEM_KINDS",
    "PERIODS",
    "PERIOD_NAMES",
    "add_results",
    "board_entry_to_pb",
    "entry_to_pb",
    "item_to_pb",
    "level_to_pb",
    "progress_to_pb",
    "redemption_to_pb",
    "result_to_pb",
    "reward_to_pb",
    "thanks_to_pb",
    "timestamp",
    "winners_to_pb",
]

PERIODS = {
    pb.DAY: Period.DAY,
    pb.WEEK: Period.WEEK,
    pb.MONTH: Period.MONTH,
    pb.ALL_TIME: Period.EVER,
}
PERIOD_NAMES = {v: pb.Period.Name(k) for k, v in PERIODS.items()}
_PERIOD_PB = {v.value: k for k, v in PERIODS.items()}
ITEM_KINDS = {pb.VIRTUAL: "virtual", pb.PHYSICAL: "physical", pb.BENEFIT: "benefit",
              pb.DONATION: "donation", pb.STREAK_FREEZE: "streak_freeze"}  # fmt: skip
_ITEM_KIND_PB = {v: k for k, v in ITEM_KINDS.items()}
_STATUS = {"pending": pb.PENDING, "completed": pb.COMPLETED, "failed": pb.FAILED,
           "refunding": pb.REFUNDING, "refunded": pb.REFUNDED}  # fmt: skip
_ROLES = {"a": pb.ACTOR, "t": pb.TARGET}
# A bonus row is an award's milestone: the API shows it as an award.
_ENTRY_KINDS = {KIND_AWARD: pb.AWARD, KIND_BONUS: pb.AWARD, KIND_SPEND: pb.SPEND,
                KIND_REFUND: pb.REFUND, KIND_ADJUST: pb.ADJUSTMENT,
                KIND_RELEASE: pb.RELEASE, KIND_VOID: pb.VOID}  # fmt: skip


def timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def result_to_pb(r: EventResult, sent_id: str = "") -> pb.ActivityResult:
    """The result as a message of its own (unary, stream)."""
    return _fill(pb.ActivityResult, r, r.event_id or sent_id)


def add_results(
    into: RepeatedCompositeFieldContainer[pb.ActivityResult],
    results: Sequence[EventResult],
    sent: Sequence[pb.ActivityEvent],
) -> None:
    """The results added straight into a response's repeated field (a batch):
    no message per result copied in afterwards. A rejected event without a
    usable id keeps the one it was sent with."""
    add = into.add
    for i, r in enumerate(results):
        _fill(add, r, r.event_id or sent[i].event_id)


def _fill(
    make: Callable[..., pb.ActivityResult], r: EventResult, event_id: str
) -> pb.ActivityResult:
    # Fields left at their defaults are not passed: each keyword costs a
    # conversion even when it sets nothing.
    msg = make(event_id=event_id, outcome=r.outcome, points=r.points,
               balance=r.balance, reason=r.reason)  # fmt: skip
    if r.field:
        msg.field = r.field
    if r.original_outcome is not None:
        msg.original_outcome = r.original_outcome  # type: ignore[assignment]
    add_credit = msg.credits.add
    for c in r.credits:
        add_credit(user_id=c.user_id, role=c.role, outcome=c.outcome, points=c.points,
                   balance=c.balance, reason=c.reason, held=c.held)  # fmt: skip
    for b in r.bonuses:
        msg.bonuses.add(
            user_id=b.user_id, kind=b.kind, id=b.id, name=b.name, name_en=b.name_en,
            points=b.points, reason=b.reason, period_key=b.period_key, badge=b.badge,
            tag=b.tag,
        )  # fmt: skip
    for up in r.level_ups:
        msg.level_ups.add(user_id=up.user_id, level=level_to_pb(up.level))
    return msg


def level_to_pb(level: Level) -> pb.Level:
    return pb.Level(
        number=level.number, id=level.id, name=level.name, name_en=level.name_en,
        min_points=level.min_points, privileges=list(level.privileges),
    )  # fmt: skip


def entry_to_pb(row: LedgerRow) -> pb.LedgerEntry:
    return pb.LedgerEntry(
        entry_id=row.entry_key,
        kind=_ENTRY_KINDS.get(row.kind, pb.ENTRY_KIND_UNSPECIFIED),
        action=row.action,
        points=row.points,
        balance_after=row.balance_after,
        event_id=row.event_id,
        role=_ROLES.get(row.role, pb.ROLE_UNSPECIFIED),
        counterpart_user_id=row.counterpart_id,
        group_id=row.group_id,
        department_id=row.department_id,
        occurred_at=timestamp(row.occurred_at_ms),
        recorded_at=timestamp(row.recorded_at_ms),
        reason=row.reason,
        quantity=row.quantity,
        attributes=dict(row.attributes),
        held=row.state == STATE_HELD,
        flag_id=row.flag_id or 0,
    )


def thanks_to_pb(row: LedgerRow) -> pb.ThanksCard:
    """A thanks card from its receiver's award row (the sender is the
    row's counterpart)."""
    return pb.ThanksCard(
        event_id=row.event_id,
        sender_user_id=row.counterpart_id,
        receiver_user_id=row.user_id,
        message=row.attributes.get("message", ""),
        points=row.points,
        occurred_at=timestamp(row.occurred_at_ms),
        department_id=row.department_id,
        receiver_department_id=row.attributes.get("target_department_id", ""),
    )


def board_entry_to_pb(e: BoardEntry) -> pb.LeaderboardEntry:
    return pb.LeaderboardEntry(rank=e.rank, member_id=e.member, score=e.score)


def winners_to_pb(
    r: WinnersRecord, period: int, scope_type: int, scope_id: str
) -> pb.WinnersPeriod:
    return pb.WinnersPeriod(
        board=r.board,
        period=period,  # type: ignore[arg-type]
        period_key=r.period_key,
        scope_type=scope_type,  # type: ignore[arg-type]
        scope_id=scope_id,
        winners=[
            pb.LeaderboardEntry(rank=w.rank, member_id=w.member_id, score=w.score)
            for w in r.winners
        ],
        recorded_at=timestamp(int(r.recorded_at.timestamp() * 1000)),
    )


def item_to_pb(item: Item) -> pb.Item:
    msg = pb.Item(
        tenant_id=item.tenant_id,
        item_id=item.item_id,
        name=item.name,
        description=item.description,
        kind=_ITEM_KIND_PB[item.kind],
        cost=item.cost,
        per_user_limit=item.per_user_limit or 0,
        limit_period=_PERIOD_PB[item.limit_period] if item.limit_period else 0,  # type: ignore[arg-type]
        enabled=item.enabled,
        min_level=item.min_level,
    )
    if item.stock is not None:
        msg.stock = item.stock
    for name in ("starts_at", "ends_at", "created_at", "updated_at"):
        ts = _ts(getattr(item, name))
        if ts is not None:
            getattr(msg, name).CopyFrom(ts)
    return msg


def reward_to_pb(item: Item, remaining: int | None) -> pb.Reward:
    extra: dict[str, Any] = {} if remaining is None else {"user_remaining": remaining}
    return pb.Reward(item=item_to_pb(item), **extra)


def redemption_to_pb(r: Redemption) -> pb.Redemption:
    msg = pb.Redemption(
        redemption_id=r.redemption_id, tenant_id=r.tenant_id, request_id=r.request_id,
        user_id=r.user_id, item_id=r.item_id, item_name=r.item_name, quantity=r.quantity,
        points=r.points, status=_STATUS[r.status], reason=r.reason,
        balance_after=r.balance_after or 0, refund_reason=r.refund_reason,
    )  # fmt: skip
    msg.created_at.FromDatetime(r.created_at.astimezone(UTC))
    msg.updated_at.FromDatetime(r.updated_at.astimezone(UTC))
    return msg


_TASK_KINDS = {Period.DAY: pb.DAILY, Period.WEEK: pb.WEEKLY, Period.MONTH: pb.MONTHLY,
               Period.EVER: pb.GROWTH}  # fmt: skip


def progress_to_pb(p: ProgressReport) -> pb.Progress:
    msg = pb.Progress(tenant_id=p.tenant_id, user_id=p.user_id)
    if p.level is not None:
        msg.level.current.CopyFrom(level_to_pb(p.level.current))
        if p.level.next is not None:
            msg.level.next.CopyFrom(level_to_pb(p.level.next))
        msg.level.lifetime_earned = p.level.earned
        msg.level.points_to_next = p.level.points_to_next
    for t in p.tasks:
        task = msg.tasks.add(
            id=t.task.id, name=t.task.name, name_en=t.task.name_en,
            kind=_TASK_KINDS[t.task.period], period=_PERIOD_PB[t.task.period.value],
            period_key=t.period_key, progress=t.progress, target=t.task.at_least,
            reward_points=t.task.points, reward_badge=t.task.badge, completed=t.completed,
            seconds_left=t.seconds_left, per_attribute=t.task.per_attribute,
        )  # fmt: skip
        if t.ends_at_ms:
            task.ends_at.CopyFrom(timestamp(t.ends_at_ms))
    if p.streak is not None:
        st = p.streak
        msg.streak.CopyFrom(
            pb.StreakProgress(
                name=st.rule.name, name_en=st.rule.name_en, current=st.current, best=st.best,
                freezes_held=st.freezes, freezes_max=st.rule.freezes_max,
                today_needed=st.today_needed, today_working_day=st.today_working,
            )
        )  # fmt: skip
        if (ms := st.next_milestone) is not None:
            msg.streak.next_milestone_days = ms.days
            msg.streak.next_milestone_points = ms.points
    for b in p.badges:
        msg.badges.add(
            id=b.id, name=b.badge.name, name_en=b.badge.name_en,
            description=b.badge.description, earned_at=timestamp(b.earned_at_ms),
        )  # fmt: skip
    return msg
