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
from pointsd.service.rules.mechanics.boards import BOARDS, BoardRule
from pointsd.service.rules.mechanics.caps import LIMITS, LimitRule
from pointsd.service.rules.model import ActionRule, CreditRule, RuleBook, TenantRules

__all__ = [
    "BOARDS",
    "EARNED",
    "LIMITS",
    "SEP",
    "ActionRule",
    "BoardRule",
    "CompiledCredit",
    "CreditRule",
    "LimitRule",
    "NoRule",
    "Plan",
    "Rejection",
    "RuleBook",
    "RuleError",
    "RulesEngine",
    "TenantRules",
    "fingerprint",
    "load_rule_book",
    "load_rule_file",
    "parse_rule_book",
]
