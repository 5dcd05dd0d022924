"""Incentive rules: the model, the YAML loader and the planning engine. Pure."""

from service.rules.engine import EARNED, SEP, NoRule, Plan, Rejection, RulesEngine, fingerprint
from service.rules.loader import RuleError, load_rule_book, load_rule_file, parse_rule_book
from service.rules.model import ActionRule, CreditRule, LimitRule, RuleBook, TenantRules

__all__ = [
    "EARNED",
    "SEP",
    "ActionRule",
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
