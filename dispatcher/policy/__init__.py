"""The policy file: providers, models and prices, tiers, rules, budgets (DESIGN §3)."""

from dispatcher.policy.loader import load_policy, parse_policy
from dispatcher.policy.models import Model, Policy, Price, Provider, TierSpec

__all__ = ["Model", "Policy", "Price", "Provider", "TierSpec", "load_policy", "parse_policy"]
