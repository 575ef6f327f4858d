"""The rule-based router, rule kind by rule kind, from parameter tables."""

from __future__ import annotations

import pytest

from dispatcher.domain import SessionSnapshot
from dispatcher.policy import Policy, load_policy, parse_policy
from dispatcher.routing import Router
from dispatcher.routing.text import features, normalise, tokens
from dispatcher.settings import DEFAULT_POLICY_PATH


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(DEFAULT_POLICY_PATH)


@pytest.fixture(scope="module")
def router(policy: Policy) -> Router:
    return Router(policy)


@pytest.mark.parametrize(
    ("text", "tier", "rule"),
    [
        # closed intents, as whole turns, with and without punctuation and fillers
        ("yes", "fast", "short-social"),
        ("Yes.", "fast", "short-social"),
        ("uh yeah", "fast", "short-social"),
        ("um yeah that's right", "fast", "short-social"),
        ("nope", "fast", "short-social"),
        ("no no that's wrong", "fast", "short-social"),
        ("hi there", "fast", "short-social"),
        ("Hello, good morning!", "fast", "short-social"),
        ("can you repeat that", "fast", "short-social"),
        ("hold on a sec", "fast", "short-social"),
        ("let me talk to a real person", "fast", "short-social"),
        ("mhm", "fast", "short-social"),
        ("thanks so much bye", "fast", "closing"),
        ("ok thank you have a good day", "fast", "closing"),
        # open intents
        ("what time do you close on sundays", "fast", "faq-lookup"),
        ("uh where are you located", "fast", "faq-lookup"),
        ("do you take apple pay", "fast", "faq-lookup"),
        ("summarize this call for me", "long_context", "summarize-request"),
        ("can you recap what we agreed", "long_context", "summarize-request"),
        ("give me a quick summary of the article above", "long_context", "summarize-request"),
        ("write a python function that reverses a linked list", "reasoning", "code"),
        ("def add(a, b): return a - b  # why is this wrong", "reasoning", "code"),
        ("what's 17 times 23", "reasoning", "math"),
        (
            "if i pay 240 a month for 18 months how much is that in total",
            "reasoning",
            "math",
        ),
        (
            "my router keeps dropping the connection after the firmware update i already "
            "restarted it",
            "reasoning",
            "troubleshooting",
        ),
        ("the tv is still not working", "reasoning", "troubleshooting"),
        (
            "should i go with the unlimited plan or the family plan for three lines",
            "reasoning",
            "comparison",
        ),
        ("help me plan a three day trip to lisbon on a budget", "reasoning", "planning"),
        ("what would happen if i miss two payments in a row", "reasoning", "analysis"),
        # default
        ("i'd like to book a table for four on friday at seven", "standard", "task-request"),
        ("my sister opened an account here last year", "standard", "default"),
    ],
)
def test_turns_without_state(router: Router, text: str, tier: str, rule: str) -> None:
    decision = router.route(text)
    assert (decision.tier, decision.rule) == (tier, rule)
    assert decision.chain == router.policy.chain(tier)
    assert decision.model == decision.chain[0]


@pytest.mark.parametrize(
    ("text", "state", "tier", "rule"),
    [
        ("next tuesday", {"expecting": "date"}, "fast", "short-answer-to-question"),
        ("four people", {"expecting": "number"}, "fast", "short-answer-to-question"),
        ("the second one", {"last_bot_act": "ask_choice"}, "fast", "short-social"),
        ("friday works", {"last_bot_act": "ask_choice"}, "fast", "short-answer-to-yes-no"),
        ("yeah go for it", {"last_bot_act": "ask_yes_no"}, "fast", "short-social"),
        ("i guess that's fine by me", {"last_bot_act": "ask_yes_no"}, "fast",
         "short-answer-to-yes-no"),
        # a long answer to a yes/no question is NOT fast
        (
            "yes but can you also move my other appointment to the afternoon and text me a "
            "reminder the day before",
            {"last_bot_act": "ask_yes_no", "expecting": "yes_no"},
            "standard",
            "default",
        ),
        # a correction is not a short answer, nor an FAQ lookup
        ("nope that's not my address anymore i moved to 55 elm street",
         {"last_bot_act": "confirm_details"}, "standard", "default"),
        ("um actually can we make it thursday instead", {"last_bot_act": "confirm_details"},
         "standard", "default"),
        # a short answer that reports a fault is still troubleshooting
        ("no it still doesn't work", {"last_bot_act": "ask_yes_no"}, "reasoning",
         "troubleshooting"),
    ],
)
def test_conversation_state(router: Router, text: str, state: dict, tier: str, rule: str) -> None:
    decision = router.route(text, state=state)
    assert (decision.tier, decision.rule) == (tier, rule)


@pytest.mark.parametrize(
    ("text", "session", "tier", "rule"),
    [
        ("ok do that", SessionSnapshot("reasoning", 1), "reasoning", "session-follow-up"),
        ("and the other one?", SessionSnapshot("reasoning", 2), "reasoning",
         "session-follow-up"),
        ("why", SessionSnapshot("reasoning", 1), "reasoning", "session-follow-up"),
        ("what about the second option", SessionSnapshot("long_context", 1), "long_context",
         "session-follow-up"),
        # a closing turn leaves the complex tier
        ("great thanks bye", SessionSnapshot("reasoning", 1), "fast", "closing"),
        # hysteresis lasts a policy-set number of turns
        ("ok do that", SessionSnapshot("reasoning", 3), "fast", "short-chit-chat"),
        # only after a complex turn
        ("and the other one?", SessionSnapshot("fast", 1), "standard", "default"),
        ("and the other one?", None, "standard", "default"),
    ],
)
def test_session_hysteresis(router: Router, text: str, session, tier: str, rule: str) -> None:
    decision = router.route(text, session=session)
    assert (decision.tier, decision.rule) == (tier, rule)


def test_conversation_length_rule(router: Router) -> None:
    history = [{"role": "user", "content": "word " * 20000},
               {"role": "assistant", "content": "ok"}]
    decision = router.route("tell me about the second invoice", history)
    assert (decision.tier, decision.rule) == ("long_context", "long-conversation")
    assert decision.features["conversation_tokens"] >= 8000


def test_recall_in_a_long_call_needs_the_history(router: Router) -> None:
    history = [{"role": "user" if i % 2 else "assistant", "content": "some detail " * 40}
               for i in range(20)]
    decision = router.route("what did you say the case number was", history)
    assert (decision.tier, decision.rule) == ("long_context", "recall-long-history")
    # the same question in a short call is an ordinary lookup
    assert router.route("what did you say the case number was").tier != "long_context"


def test_yes_after_a_long_call_stays_fast(router: Router) -> None:
    history = [{"role": "user", "content": "word " * 40000}]
    assert router.route("yes", history).tier == "fast"


def test_a_conversation_too_big_for_the_tier_moves_to_a_wider_model(router: Router) -> None:
    # 150k tokens fit neither fast model (128k/131k windows) but do fit long_context
    history = [{"role": "user", "content": "x" * 600_000}]
    decision = router.route("yes", history)
    assert decision.tier == "long_context"
    assert decision.rule == "short-social+context-fit"
    # 140k tokens: the reasoning chain keeps only the 200k-window Claude models
    history = [{"role": "user", "content": "x" * 540_000}]
    decision = router.route("write a python function to parse this log", history)
    assert decision.tier == "reasoning"
    assert decision.chain == ("claude-3-5-sonnet-20241022", "claude-3-opus-20240229")


def test_history_as_content_parts_is_counted(router: Router) -> None:
    history = [{"role": "user", "content": [{"type": "text", "text": "word " * 20000}]}]
    assert router.route("and then", history).tier == "long_context"


def test_pasted_document_feature_rule(router: Router) -> None:
    doc = " ".join(["the quarterly results were strong across every region"] * 90)
    assert router.route(doc + " what do you make of it").rule == "pasted-document"


def test_tier_override_wins(router: Router) -> None:
    decision = router.route("yes", tier_override="reasoning")
    assert (decision.tier, decision.rule, decision.confidence) == ("reasoning", "override", 1.0)


def test_decision_names_features_and_confidence(router: Router) -> None:
    d = router.route("my internet is down and i already restarted the router what now?")
    assert d.features["words"] == 12
    assert d.features["questions"] == 1
    assert "troubleshooting" in d.features["intents"]
    assert 0 < d.confidence <= 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Uh, yeah... that's RIGHT!", "yeah that's right"),
        ("umm so like i mean", "so like i mean"),
        ("it's 3.5 percent, not 4.", "it's 3.5 percent not 4"),
        ("tl;dr please", "tl dr please"),
        ("I’m fine", "i'm fine"),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    ("text", "questions", "clauses", "numbers"),
    [
        ("what time do you open and where do i park", 2, 2, 0),
        ("What time do you open? Where do I park?", 2, 3, 0),
        ("i paid 40 dollars twice", 0, 1, 2),
    ],
)
def test_features_without_punctuation(text: str, questions: int, clauses: int,
                                      numbers: int) -> None:
    f = features(text, tokens(text), ())
    assert (f.questions, f.clauses, f.numbers) == (questions, clauses, numbers)


def test_keyword_rule_and_feature_rule_from_a_policy() -> None:
    text = DEFAULT_POLICY_PATH.read_text().replace(
        "rules:\n",
        "rules:\n"
        "  - {name: vip, kind: keyword, keywords: [platinum member], tier: reasoning}\n"
        "  - {name: digits, kind: features, min_numbers: 3, tier: standard}\n"
        "  - {name: codey, kind: features, has_code: true, tier: reasoning}\n",
        1,
    )
    router = Router(parse_policy(text))
    assert router.route("hi i'm a platinum member").rule == "vip"
    assert router.route("my numbers are 1 2 and 3").rule == "digits"
    assert router.route("print(x)").rule == "codey"


def test_empty_turn_goes_to_default(router: Router) -> None:
    assert router.route("").rule == "empty"
    assert router.route(" uh ").tier == "standard"
