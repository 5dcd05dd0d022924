"""Incentive rules: the model, the YAML loader, the mechanics and the
planning engine. Pure."""

from pointsd.service.rules.checker import RuleError
from pointsd.service.rules.engine import (
    EARNED,
    SEP,
    CompiledCredit,
    NoRule,
    Plan,
    Rejection,
    RulesEngine,
    fingerprint,
)
from pointsd.service.rules.loader import load_rule_book, load_rule_file, parse_rule_book
from pointsd.service.rules.mechanics.badges import BADGES, Badge
from pointsd.service.rules.mechanics.base import BonusInfo
from pointsd.service.rules.mechanics.boards import BOARDS, BoardRule
from pointsd.service.rules.mechanics.caps import LIMITS, LimitRule
from pointsd.service.rules.mechanics.levels import LEVELS, Level, LevelRules
from pointsd.service.rules.mechanics.tasks import TASKS, TaskRule, task_counter, task_tag
from pointsd.service.rules.model import ActionRule, CreditRule, RuleBook, TenantRules

__all__ = [
    "BADGES",
    "BOARDS",
    "EARNED",
    "LEVELS",
    "LIMITS",
    "SEP",
    "TASKS",
    "ActionRule",
    "Badge",
    "BoardRule",
    "BonusInfo",
    "CompiledCredit",
    "CreditRule",
    "Level",
    "LevelRules",
    "LimitRule",
    "NoRule",
    "Plan",
    "Rejection",
    "RuleBook",
    "RuleError",
    "RulesEngine",
    "TaskRule",
    "TenantRules",
    "fingerprint",
    "load_rule_book",
    "load_rule_file",
    "parse_rule_book",
    "task_counter",
    "task_tag",
]
