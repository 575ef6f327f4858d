"""Policy file validation: a good file loads; each kind of bad file names path and problem."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from dispatcher.domain import Usage
from dispatcher.errors import PolicyError
from dispatcher.policy import load_policy, parse_policy
from dispatcher.settings import DEFAULT_POLICY_PATH

DEFAULT_TEXT = DEFAULT_POLICY_PATH.read_text()


def _mutated(edit) -> str:
    data = yaml.safe_load(DEFAULT_TEXT)
    edit(data)
    return yaml.safe_dump(data)


def _problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    return [str(p) for p in info.value.problems]


def test_default_policy_loads_with_four_tiers_and_exact_prices() -> None:
    policy = load_policy(DEFAULT_POLICY_PATH)
    assert list(policy.tiers) == ["fast", "standard", "reasoning", "long_context"]
    assert policy.models["gpt-4o-mini"].price.input == Decimal("0.15")
    assert isinstance(policy.models["gpt-4o-mini"].price.input, Decimal)
    assert policy.prices_as_of == "2024-11-15"
    assert policy.queue("fast") == "turns.fast"
    assert policy.version  # derived from the file's content when not given


def test_yaml_floats_become_exact_decimals_not_binary_floats() -> None:
    # Given a price that is not representable in binary floating point
    text = DEFAULT_TEXT.replace("price: {input: 0.15, output: 0.60, cached_input: 0.075}",
                                "price: {input: 0.1, output: 0.2, cached_input: 0.075}")
    policy = parse_policy(text)
    # Then it is exactly one tenth, and costs add up exactly
    assert policy.models["gpt-4o-mini"].price.input == Decimal("0.1")
    cost = policy.models["gpt-4o-mini"].cost(Usage(input_tokens=3, output_tokens=0))
    assert cost == Decimal("0.0000003")


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(1_000_000, 0), Decimal("2.50")),
        (Usage(0, 1_000_000), Decimal("10.00")),
        (Usage(1000, 500), Decimal("0.0075")),
        # cached input at its own price: 600 plain at 2.50 + 400 cached at 1.25
        (Usage(1000, 0, cached_input_tokens=400), Decimal("0.002")),
        # reasoning tokens default to the output price
        (Usage(0, 100, reasoning_tokens=60), Decimal("0.001")),
        (Usage(7, 3), Decimal("0.0000475")),
    ],
)
def test_cost_is_exact(usage: Usage, expected: Decimal) -> None:
    policy = load_policy(DEFAULT_POLICY_PATH)
    assert policy.models["gpt-4o"].cost(usage) == expected


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["tiers"]["fast"]["models"].append("gpt-5-imaginary"),
         "tiers.fast.models[2]: unknown model 'gpt-5-imaginary'"),
        (lambda d: d["models"]["gpt-4o"]["price"].update(input=-1),
         "models.gpt-4o.price.input: must be ≥ 0"),
        (lambda d: d["models"]["gpt-4o"].update(provider="nobody"),
         "models.gpt-4o.provider: unknown provider 'nobody'"),
        (lambda d: d["providers"]["openai"].update(family="cohere"),
         "providers.openai.family: input should be 'openai', 'anthropic' or 'gemini'"),
        (lambda d: d.update(baseline_model="gpt-9"), "baseline_model: unknown model 'gpt-9'"),
        (lambda d: d.update(default_tier="turbo"), "default_tier: unknown tier 'turbo'"),
        (lambda d: d["rules"][0].update(tier="turbo"), "rules[0].tier: unknown tier 'turbo'"),
        (lambda d: d["rules"][0].update(intents=["astrology"]),
         "rules[0].intents[0]: unknown intent 'astrology'"),
        (lambda d: d["rules"][0].update(unless_intents=["gossip"]),
         "rules[0].unless_intents[0]: unknown intent 'gossip'"),
        (lambda d: d["rules"].append({"name": "summarize-request", "kind": "features",
                                      "tier": "fast", "max_words": 1}),
         "duplicate rule name 'summarize-request'"),
        (lambda d: d["rules"].append({"name": "k", "kind": "keyword", "tier": "fast",
                                      "patterns": ["(unclosed"]}),
         "bad regular expression '(unclosed'"),
        (lambda d: d["rules"].append({"name": "x", "kind": "telepathy", "tier": "fast"}),
         "input tag 'telepathy'"),
        (lambda d: d["tiers"]["fast"].update(modles=["gpt-4o"]),
         "tiers.fast.modles: unknown key"),
        (lambda d: d["models"]["gpt-4o"].pop("context_window"),
         "models.gpt-4o.context_window: required"),
        (lambda d: d["tiers"]["fast"].update(models=[]),
         "tiers.fast.models: list should have at least 1 item"),
    ],
)
def test_each_kind_of_bad_policy_names_the_path_and_problem(edit, expected: str) -> None:
    problems = _problems(_mutated(edit))
    assert any(expected in p for p in problems), problems


def test_all_problems_are_reported_at_once() -> None:
    def edit(d):
        d["tiers"]["fast"]["models"] = ["nope1", "nope2"]
        d["baseline_model"] = "nope3"

    problems = _problems(_mutated(edit))
    assert len(problems) == 3


def test_invalid_yaml_names_the_line() -> None:
    problems = _problems("providers:\n  a: [unclosed\n")
    assert problems[0].startswith("line ")
    assert "not valid YAML" in problems[0]


def test_top_level_must_be_a_mapping() -> None:
    assert _problems("- just\n- a list\n") == ["the top level must be a mapping"]


def test_missing_file_is_a_policy_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(info.value)
    assert "cannot read" in str(info.value)


def test_error_message_names_the_file() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(_mutated(lambda d: d.update(baseline_model="x")), "my-policy.yaml")
    assert "my-policy.yaml: baseline_model: unknown model 'x'" in str(info.value)


def test_policy_may_add_phrases_to_an_intent_and_map_state_names() -> None:
    def edit(d):
        d["intents"] = {"confirmation": {"phrases": ["aye aye"]},
                        "billing": {"phrases": ["invoice"], "patterns": [r"\bbill(?:ing)?\b"]}}
        d["state_aliases"] = {"last_bot_act": {"asked_yes_no": "ask_yes_no"}}
        d["rules"].insert(0, {"name": "billing", "kind": "intent", "intents": ["billing"],
                              "tier": "standard"})

    policy = parse_policy(_mutated(edit))
    from dispatcher.routing import Router

    router = Router(policy)
    assert router.route("aye aye").tier == "fast"
    assert router.route("question about my invoice").rule == "billing"
    decision = router.route("sure", state={"last_bot_act": "asked_yes_no"})
    assert decision.tier == "fast"
