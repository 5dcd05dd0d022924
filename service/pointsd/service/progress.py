"""GetProgress: a user's level, tasks and badges, read in one Redis round trip.

What it reads is what the award script wrote: the lifetime earned points
(levels), each task's counter in its current period (the same counter the
task's Cross step crosses, so "completed" agrees with the reward paid), the
user's badge hash, and the streak's day and cover bitmaps around today with
the best streak and the freezes held.
"""

from __future__ import annotations

from dataclasses import dataclass

from pointsd.service.app import App
from pointsd.service.domain import Period
from pointsd.service.rules import (
    BADGES,
    LEVELS,
    TASKS,
    Badge,
    Level,
    TaskRule,
    TenantRules,
    task_counter,
)
from pointsd.service.rules.mechanics.streaks import (
    BEST,
    COVER,
    DAYS,
    FREEZES,
    SCAN_DAYS,
    STREAK,
    Milestone,
    StreakRule,
    streak_now,
)
from pointsd.service.rules.mechanics.tasks import Measure
from pointsd.service.rules.periods import local_date, period_bounds

__all__ = ["BadgeView", "LevelView", "ProgressReport", "StreakView", "TaskView", "progress"]


@dataclass(frozen=True, slots=True)
class LevelView:
    current: Level
    next: Level | None
    earned: int

    @property
    def points_to_next(self) -> int:
        return max(0, self.next.min_points - self.earned) if self.next else 0


@dataclass(frozen=True, slots=True)
class TaskView:
    task: TaskRule
    period_key: str
    progress: int
    # Unix ms; 0 for growth tasks (no end).
    ends_at_ms: int
    seconds_left: int

    @property
    def completed(self) -> bool:
        return self.progress >= self.task.at_least


@dataclass(frozen=True, slots=True)
class BadgeView:
    """A badge the rules declare that the user has (one the rules no longer
    declare is still kept, and shows again when declared again)."""

    id: str
    badge: Badge
    earned_at_ms: int


@dataclass(frozen=True, slots=True)
class StreakView:
    rule: StreakRule
    current: int
    best: int
    freezes: int
    today_needed: bool
    today_working: bool

    @property
    def next_milestone(self) -> Milestone | None:
        return self.rule.next_milestone(self.current)


@dataclass(frozen=True, slots=True)
class ProgressReport:
    tenant_id: str
    user_id: str
    level: LevelView | None
    tasks: list[TaskView]
    badges: list[BadgeView]
    streak: StreakView | None = None


async def progress(app: App, tenant: TenantRules, user_id: str) -> ProgressReport:
    now_ms = app.clock()
    tasks = list(tenant.part(TASKS).values())
    refs = {kind: app.engine.period(tenant, kind, now_ms) for kind in {t.period for t in tasks}}
    # A per-attribute task's progress is per value: read the listed values
    # (best one shown); with no list, there is no one number to show.
    wanted: list[tuple[int, str]] = []
    for i, task in enumerate(tasks):
        if not task.per_attribute:
            wanted.append((i, task_counter(task.id)))
        else:
            wanted.extend((i, task_counter(task.id, v)) for v in sorted(task.values))
    counters = [(refs[tasks[i].period], name) for i, name in wanted]
    streak = _StreakRead(app, tenant, now_ms) if tenant.part(STREAK) is not None else None
    if streak is not None:
        counters += streak.counters
    declared = tenant.part(BADGES)
    view = await app.stores.balances.progress(
        tenant.tenant_id, user_id, counters, streak.bitmaps if streak else (), list(declared)
    )
    values = view.counters
    streak_view = None
    if streak is not None:
        streak_view = streak.view(values[-2:], view.bitmaps)
        values = values[:-2]
    best = [0] * len(tasks)
    for (i, _), value in zip(wanted, values, strict=True):
        best[i] = max(best[i], value)
    task_views = [
        _task_view(tenant, task, refs[task.period].key, done, now_ms, streak_view)
        for task, done in zip(tasks, best, strict=True)
    ]
    levels = tenant.part(LEVELS)
    level = None
    if levels is not None:
        current = levels.at(view.earned)
        level = LevelView(current, levels.after(current), view.earned)
    badges = [
        BadgeView(badge_id, declared[badge_id], at)
        for badge_id, at in sorted(view.badges.items(), key=lambda item: (item[1], item[0]))
    ]
    return ProgressReport(tenant.tenant_id, user_id, level, task_views, badges, streak_view)


def _task_view(
    tenant: TenantRules,
    task: TaskRule,
    period_key: str,
    done: int,
    now_ms: int,
    streak: StreakView | None,
) -> TaskView:
    if task.measure is Measure.STREAK and streak is not None:
        done = streak.best
    ends_ms = 0
    if task.period is not Period.EVER:
        ends_ms = period_bounds(task.period, now_ms, tenant.timezone)[1] * 1000
    left = max(0, (ends_ms - now_ms) // 1000) if ends_ms else 0
    return TaskView(task, period_key, done, ends_ms, left)


class _StreakRead:
    """What GetProgress reads of the streak: the best streak and freezes
    held (ever counters) and both bitmaps from a run's reach before today."""

    def __init__(self, app: App, tenant: TenantRules, now_ms: int) -> None:
        self.tenant = tenant
        self.rule = tenant.part(STREAK)
        self.today = local_date(now_ms, tenant.timezone)
        ever = app.engine.period(tenant, Period.EVER, now_ms)
        self.counters = [(ever, BEST), (ever, FREEZES)]
        calendar = tenant.calendar
        upto = calendar.ordinal(self.today)
        if upto is None:
            following = calendar.next_working_day(self.today)
            upto = (calendar.ordinal(following) if following else None) or 0
        self.first_bit = max(0, upto - SCAN_DAYS - 16) // 8 * 8
        span = (self.first_bit // 8, upto // 8)
        self.bitmaps = [(DAYS, *span), (COVER, *span)]

    def view(self, values: list[int], bitmaps: list[bytes]) -> StreakView:
        best, held = values
        days, cover = bitmaps
        first = self.first_bit

        def marked(n: int) -> bool:
            i = n - first
            if i < 0:
                return False
            byte, mask = i // 8, 0x80 >> (i % 8)
            return any(byte < len(b) and b[byte] & mask for b in (days, cover))

        now = streak_now(self.tenant, self.today, held, marked)
        assert self.rule is not None
        return StreakView(
            self.rule, now.current, max(best, now.current), held, now.today_needed,
            now.today_working,
        )  # fmt: skip
