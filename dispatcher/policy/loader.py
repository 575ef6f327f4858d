"""Reading a policy file: YAML -> pydantic -> cross-reference checks -> :class:`Policy`.

Every problem is reported with the file, the dotted path inside it and what is wrong,
all of them at once, so one run of ``dispatcher policy check`` shows the whole list.
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dispatcher.errors import PolicyError, PolicyProblem
from dispatcher.policy.models import IntentRule, KeywordRule, Policy, SessionRule, StateRule


class _DecimalLoader(yaml.SafeLoader):
    """A YAML loader that reads floats as exact Decimals (``0.15`` must not become 0.1499...)."""


def _decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal | str:
    raw = loader.construct_scalar(node)  # type: ignore[arg-type]
    try:
        return Decimal(str(raw).replace("_", ""))
    except InvalidOperation:
        return str(raw)


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _decimal)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {
            "IntentRule",
            "KeywordRule",
            "StateRule",
            "FeatureRule",
            "SessionRule",
            "ConversationLengthRule",
            "intent",
            "keyword",
            "state",
            "features",
            "session",
            "conversation_length",
        } and out.startswith("rules"):
            continue  # pydantic's discriminator tag is noise in a user-facing path
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy text; raise :class:`PolicyError` listing every problem."""
    try:
        data = yaml.load(text, Loader=_DecimalLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [PolicyProblem(where, f"not valid YAML: {problem}")]) from None
    if not isinstance(data, dict):
        raise PolicyError(source, [PolicyProblem("", "the top level must be a mapping")])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = [PolicyProblem(_path(e["loc"]), _message(e)) for e in exc.errors()]
        raise PolicyError(source, problems) from None
    problems = cross_check(policy)
    if problems:
        raise PolicyError(source, problems)
    if policy.version is None:
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        policy = policy.model_copy(update={"version": digest})
    return policy


def _message(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "greater_than_equal":
        return f"must be ≥ {error['ctx']['ge']} (got {error['input']!r})"
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required"
    return msg[0].lower() + msg[1:] if msg else msg


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(p), [PolicyProblem("", f"cannot read: {exc.strerror}")]) from None
    return parse_policy(text, str(p))


def cross_check(policy: Policy) -> list[PolicyProblem]:
    """Problems that span sections: names that must refer to something that exists."""
    # Imported here: routing imports policy models, and the built-in intents live there.
    from dispatcher.routing.intents import BUILTIN_INTENTS

    problems: list[PolicyProblem] = []
    for mid, model in policy.models.items():
        if model.provider not in policy.providers:
            problems.append(
                PolicyProblem(f"models.{mid}.provider", f"unknown provider {model.provider!r}")
            )
    for tname, tier in policy.tiers.items():
        for i, mid in enumerate(tier.models):
            if mid not in policy.models:
                problems.append(
                    PolicyProblem(f"tiers.{tname}.models[{i}]", f"unknown model {mid!r}")
                )
        if len(set(tier.models)) != len(tier.models):
            problems.append(PolicyProblem(f"tiers.{tname}.models", "a model is listed twice"))
    if policy.default_tier not in policy.tiers:
        problems.append(PolicyProblem("default_tier", f"unknown tier {policy.default_tier!r}"))
    if policy.baseline_model not in policy.models:
        problems.append(PolicyProblem("baseline_model", f"unknown model {policy.baseline_model!r}"))
    known_intents = set(BUILTIN_INTENTS) | set(policy.intents)
    for name, spec in policy.intents.items():
        for i, pat in enumerate(spec.patterns):
            if (err := _regex_error(pat)) is not None:
                problems.append(PolicyProblem(f"intents.{name}.patterns[{i}]", err))
    seen: set[str] = set()
    for i, rule in enumerate(policy.rules):
        where = f"rules[{i}]"
        if rule.name in seen:
            problems.append(PolicyProblem(f"{where}.name", f"duplicate rule name {rule.name!r}"))
        seen.add(rule.name)
        if rule.tier not in policy.tiers:
            problems.append(PolicyProblem(f"{where}.tier", f"unknown tier {rule.tier!r}"))
        if isinstance(rule, IntentRule):
            for field in ("intents", "also_allow", "unless_intents"):
                for j, intent in enumerate(getattr(rule, field)):
                    if intent not in known_intents:
                        problems.append(
                            PolicyProblem(f"{where}.{field}[{j}]", f"unknown intent {intent!r}")
                        )
        if isinstance(rule, KeywordRule):
            if not rule.keywords and not rule.patterns:
                problems.append(PolicyProblem(where, "a keyword rule needs keywords or patterns"))
            for j, pat in enumerate(rule.patterns):
                if (err := _regex_error(pat)) is not None:
                    problems.append(PolicyProblem(f"{where}.patterns[{j}]", err))
        if isinstance(rule, StateRule):
            for j, intent in enumerate(rule.unless_intents):
                if intent not in known_intents:
                    problems.append(
                        PolicyProblem(f"{where}.unless_intents[{j}]", f"unknown intent {intent!r}")
                    )
        if isinstance(rule, SessionRule):
            for j, t in enumerate(rule.from_tiers):
                if t not in policy.tiers:
                    problems.append(
                        PolicyProblem(f"{where}.from_tiers[{j}]", f"unknown tier {t!r}")
                    )
    return problems


def _regex_error(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"bad regular expression {pattern!r}: {exc}"
    return None
