"""GetProgress: a user's level, tasks and badges, read in one Redis round trip.

What it reads is what the award script wrote: the lifetime earned points
(levels), each task's counter in its current period (the same counter the
task's Cross step crosses, so "completed" agrees with the reward paid) and
the user's badge hash.
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
from pointsd.service.rules.periods import period_bounds

__all__ = ["BadgeView", "LevelView", "ProgressReport", "TaskView", "progress"]


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
    id: str
    # None: a badge the rules no longer declare (still kept).
    badge: Badge | None
    earned_at_ms: int


@dataclass(frozen=True, slots=True)
class ProgressReport:
    tenant_id: str
    user_id: str
    level: LevelView | None
    tasks: list[TaskView]
    badges: list[BadgeView]


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
    view = await app.stores.balances.progress(
        tenant.tenant_id, user_id, [(refs[tasks[i].period], name) for i, name in wanted]
    )
    best = [0] * len(tasks)
    for (i, _), value in zip(wanted, view.counters, strict=True):
        best[i] = max(best[i], value)
    task_views = []
    for task, done in zip(tasks, best, strict=True):
        ends_ms = 0
        if task.period is not Period.EVER:
            ends_ms = period_bounds(task.period, now_ms, tenant.timezone)[1] * 1000
        task_views.append(
            TaskView(
                task,
                refs[task.period].key,
                done,
                ends_ms,
                max(0, (ends_ms - now_ms) // 1000) if ends_ms else 0,
            )
        )
    levels = tenant.part(LEVELS)
    level = None
    if levels is not None:
        current = levels.at(view.earned)
        level = LevelView(current, levels.after(current), view.earned)
    declared = tenant.part(BADGES)
    badges = [
        BadgeView(badge_id, declared.get(badge_id), at)
        for badge_id, at in sorted(view.badges.items(), key=lambda item: (item[1], item[0]))
    ]
    return ProgressReport(tenant.tenant_id, user_id, level, task_views, badges)
