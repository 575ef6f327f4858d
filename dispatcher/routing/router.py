"""The rule-based router: (turn, history, state, session snapshot, policy) -> Decision.

Pure: no clock, no I/O. A :class:`Router` compiles a policy's rules once; each
:meth:`Router.route` call then costs a handful of regular-expression scans of one turn.
Rules are tried in the policy's order and the first that matches decides.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher.domain import Decision, SessionSnapshot
from dispatcher.policy.models import (
    ConversationLengthRule,
    FeatureRule,
    IntentRule,
    KeywordRule,
    Policy,
    SessionRule,
    StateRule,
)
from dispatcher.routing.intents import (
    CLOSED_INTENTS,
    CODE_CHARS,
    FILLER_WORDS,
    NUM,
    OPEN_INTENTS,
    Gated,
)
from dispatcher.routing.phrases import PhraseIndex
from dispatcher.routing.text import Features, features, tokens

# How sure each kind of rule tends to be; the ledger keeps it next to the rule name.
_CONFIDENCE = {
    "intent_whole": 0.95,
    "intent": 0.85,
    "keyword": 0.85,
    "state": 0.9,
    "conversation_length": 0.9,
    "session": 0.8,
    "features": 0.7,
    "default": 0.5,
}

_WHOLE_MAX_WORDS = 16
# Lead-ins that do not change what a short social turn is ("let me talk to a person").
_MULTIWORD_FILLERS = (
    "you know",
    "i mean",
    "i guess",
    "like i said",
    "let me",
    "can i",
    "could i",
    "i want to",
    "i'd like to",
    "i would like to",
    "i need to",
    "can you",
    "could you",
    "i just",
)
_CODE_PUNCT = frozenset("(){};=`<>#$\\")
_QUESTION_OPENERS = frozenset(
    "what what's whats how why when where which who whose can could would will do does "
    "did should".split()
)


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Any
    keywords: PhraseIndex | None = None
    patterns: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True, slots=True)
class _GatedRe:
    triggers: frozenset[str]
    regex: re.Pattern[str]
    min_numbers: int
    raw: bool


class Router:
    """A policy's rules, compiled. Build one per policy and reuse it for every turn."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        closed: dict[str, list[str]] = {k: list(v) for k, v in CLOSED_INTENTS.items()}
        open_phrases: dict[str, list[str]] = {k: list(v.phrases) for k, v in OPEN_INTENTS.items()}
        gated: dict[str, list[Gated]] = {k: list(v.gated) for k, v in OPEN_INTENTS.items()}
        always: dict[str, list[re.Pattern[str]]] = defaultdict(list)
        # The policy's own intents add to (or, with replace, stand in for) the built-ins.
        for name, spec in policy.intents.items():
            if name in closed or (name not in open_phrases and not spec.patterns):
                closed[name] = ([] if spec.replace else closed.get(name, [])) + spec.phrases
                continue
            if spec.replace:
                open_phrases[name], gated[name] = [], []
            open_phrases.setdefault(name, []).extend(spec.phrases)
            always[name].extend(re.compile(p) for p in spec.patterns)
        self._closed = PhraseIndex((p, k) for k, v in closed.items() for p in v)
        self._closed_names = frozenset(closed)
        self._closed_long = PhraseIndex(
            (p, k) for k, v in closed.items() for p in v if len(tokens(p)) >= 2
        )
        fillers = [(p, "filler") for p in _MULTIWORD_FILLERS]
        self._fillers = FILLER_WORDS
        self._filler_phrases = PhraseIndex(fillers)
        # follow_up is made of the commonest words; it gets its own index so that finding
        # the other intents does not wade through "it", "that" and "and" in every turn
        follow_up = open_phrases.pop("follow_up", [])
        self._open = PhraseIndex((p, k) for k, v in open_phrases.items() for p in v)
        self._follow_up = PhraseIndex((p, "follow_up") for p in follow_up)
        self._chains = {t: policy.chain(t) for t in policy.tiers}
        self._windows = {m: spec.context_window for m, spec in policy.models.items()}
        self._min_window = {
            t: min(self._windows[m] for m in chain) for t, chain in self._chains.items()
        }
        self._max_out = {t: spec.max_output_tokens for t, spec in policy.tiers.items()}
        self._widest_tier = max(
            policy.tiers, key=lambda t: max(self._windows[m] for m in self._chains[t])
        )
        self._gated = {
            k: tuple(
                _GatedRe(g.triggers, re.compile(g.pattern, re.M), g.min_numbers, g.raw) for g in v
            )
            for k, v in gated.items()
        }
        self._gated = {k: v for k, v in self._gated.items() if v}
        self._gated_triggers = {
            k: frozenset().union(*(g.triggers for g in v)) for k, v in self._gated.items()
        }
        self._always = {k: v for k, v in always.items() if v}
        self._rules: list[_Compiled] = []
        for rule in policy.rules:
            if isinstance(rule, KeywordRule):
                kw = PhraseIndex((k, "kw") for k in rule.keywords) if rule.keywords else None
                pats = tuple(re.compile(p) for p in rule.patterns)
                self._rules.append(_Compiled(rule, keywords=kw, patterns=pats))
            else:
                self._rules.append(_Compiled(rule))
        self._aliases = {k: dict(v) for k, v in policy.state_aliases.items()}

    def route(
        self,
        text: str,
        messages: Sequence[Mapping[str, Any]] = (),
        state: Mapping[str, Any] | None = None,
        session: SessionSnapshot | None = None,
        tier_override: str | None = None,
    ) -> Decision:
        """Decide the tier for one turn. ``tier_override`` (a caller's forced tier) wins."""
        turn = _Turn(self, text, messages)
        if tier_override is not None:
            return self._decide(tier_override, "override", 1.0, turn)
        if not turn.toks:
            return self._decide(self.policy.default_tier, "empty", _CONFIDENCE["default"], turn)
        state = state or {}
        act = self._standard("last_bot_act", state.get("last_bot_act"))
        expecting = self._standard("expecting", state.get("expecting"))
        for compiled in self._rules:
            rule = compiled.rule
            tier = self._match(compiled, turn, act, expecting, session)
            if tier is not None:
                kind = rule.kind
                if isinstance(rule, IntentRule) and rule.whole:
                    kind = "intent_whole"
                return self._decide(tier, rule.name, _CONFIDENCE[kind], turn)
        return self._decide(self.policy.default_tier, "default", _CONFIDENCE["default"], turn)

    def _standard(self, key: str, value: Any) -> str | None:
        if value is None:
            return None
        v = str(value)
        return self._aliases.get(key, {}).get(v, v)

    def _match(
        self,
        compiled: _Compiled,
        turn: _Turn,
        act: str | None,
        expecting: str | None,
        session: SessionSnapshot | None,
    ) -> str | None:
        rule = compiled.rule
        f = turn.features
        if isinstance(rule, IntentRule):
            if rule.max_words is not None and f.words > rule.max_words:
                return None
            if rule.min_words is not None and f.words < rule.min_words:
                return None
            if (
                rule.min_conversation_tokens is not None
                and f.conversation_tokens < rule.min_conversation_tokens
            ):
                return None
            if (
                rule.max_conversation_tokens is not None
                and f.conversation_tokens > rule.max_conversation_tokens
            ):
                return None
            if rule.unless_intents and any(turn.has_intent(i) for i in rule.unless_intents):
                return None
            if rule.unless_intents and any(turn.has_intent(i) for i in rule.unless_intents):
                return None
            if rule.whole:
                return rule.tier if turn.is_whole(rule.intents, rule.also_allow) else None
            if rule.min_phrase_words > 1:
                found = self._closed_long.labels(turn.toks)
                return rule.tier if not found.isdisjoint(rule.intents) else None
            if rule.at_end:
                hit = self._closed.ends_with(turn.toks, rule.intents)
                return rule.tier if hit else None
            return rule.tier if any(turn.has_intent(i) for i in rule.intents) else None
        if isinstance(rule, KeywordRule):
            if rule.max_words is not None and f.words > rule.max_words:
                return None
            hit = (
                compiled.keywords is not None and bool(compiled.keywords.labels(turn.toks))
            ) or any(p.search(turn.norm) for p in compiled.patterns)
            return rule.tier if hit else None
        if isinstance(rule, StateRule):
            if not rule.last_bot_act and not rule.expecting:
                return None
            if rule.last_bot_act and act not in rule.last_bot_act:
                return None
            if rule.expecting and expecting not in rule.expecting:
                return None
            if rule.max_words is not None and (f.words == 0 or f.words > rule.max_words):
                return None
            if not rule.allow_questions and turn.toks and turn.toks[0] in _QUESTION_OPENERS:
                return None
            if any(turn.has_intent(i) for i in rule.unless_intents):
                return None
            return rule.tier
        if isinstance(rule, ConversationLengthRule):
            return rule.tier if f.conversation_tokens >= rule.min_tokens else None
        if isinstance(rule, FeatureRule):
            return rule.tier if _features_match(rule, turn) else None
        if isinstance(rule, SessionRule):
            if session is None or session.tier is None or session.tier not in rule.from_tiers:
                return None
            if not 1 <= session.turns_ago <= rule.turns or f.words > rule.max_words:
                return None
            if session.tier not in self.policy.tiers:
                return None
            return session.tier if turn.has_intent("follow_up") else None
        return None

    def _decide(self, tier: str, rule: str, confidence: float, turn: _Turn) -> Decision:
        feats: dict[str, Any] = turn.features.as_dict()
        feats["intents"] = sorted(k for k, v in turn.intents.items() if v)
        chain = self._chains[tier]
        # The conversation must fit the window: drop the models it would not fit, and when
        # none is left take the tier whose models have the largest window.
        need = turn.features.conversation_tokens + self._max_out[tier]
        if need > self._min_window[tier]:
            fitting = tuple(m for m in chain if self._windows[m] >= need)
            if fitting:
                chain = fitting
            else:
                tier = self._widest_tier
                chain = self._chains[tier]
                rule = f"{rule}+context-fit"
        return Decision(tier=tier, chain=chain, rule=rule, confidence=confidence, features=feats)


def _features_match(rule: FeatureRule, turn: _Turn) -> bool:
    f = turn.features
    checks = (
        rule.min_words is None or f.words >= rule.min_words,
        rule.max_words is None or f.words <= rule.max_words,
        rule.min_questions is None or f.questions >= rule.min_questions,
        rule.min_clauses is None or f.clauses >= rule.min_clauses,
        rule.min_numbers is None or f.numbers >= rule.min_numbers,
        rule.min_conversation_tokens is None
        or f.conversation_tokens >= rule.min_conversation_tokens,
        rule.has_code is None or turn.has_intent("code") == rule.has_code,
        rule.has_math is None or turn.has_intent("math") == rule.has_math,
    )
    return all(checks)


class _Turn:
    """One turn being routed; intents are found lazily and remembered."""

    __slots__ = (
        "_found_closed",
        "_found_open",
        "_router",
        "_tokset",
        "features",
        "intents",
        "norm",
        "raw_lower",
        "toks",
    )

    def __init__(self, router: Router, text: str, messages: Sequence[Mapping[str, Any]]) -> None:
        self._router = router
        self.raw_lower = text.lower()
        self.toks = tokens(text)
        self.norm = " ".join(self.toks)
        self.features: Features = features(text, self.toks, messages)
        self.intents: dict[str, bool] = {}
        self._found_open: set[str] | None = None
        self._found_closed: set[str] | None = None
        self._tokset: set[str] | None = None

    def _trigger_tokens(self) -> set[str]:
        if self._tokset is None:
            tokset = set(self.toks)
            if self.features.numbers:
                tokset.add(NUM)
            if not _CODE_PUNCT.isdisjoint(self.raw_lower):
                tokset.add(CODE_CHARS)
            self._tokset = tokset
        return self._tokset

    def has_intent(self, intent: str) -> bool:
        known = self.intents.get(intent)
        if known is not None:
            return known
        router = self._router
        if intent in router._closed_names:
            if self._found_closed is None:
                self._found_closed = router._closed.labels(self.toks)
            hit = intent in self._found_closed
        elif intent == "follow_up":
            hit = bool(router._follow_up.labels(self.toks)) or self._gated_hit(intent)
        else:
            if self._found_open is None:
                self._found_open = router._open.labels(self.toks)
            hit = intent in self._found_open or self._gated_hit(intent)
        self.intents[intent] = hit
        return hit

    def _gated_hit(self, intent: str) -> bool:
        router = self._router
        gated = router._gated.get(intent)
        if gated:
            tokset = self._trigger_tokens()
            # one set test rules out every regex of the intent on most turns
            if not router._gated_triggers[intent].isdisjoint(tokset):
                for g in gated:
                    if g.min_numbers and self.features.numbers < g.min_numbers:
                        continue
                    if g.triggers.isdisjoint(tokset):
                        continue
                    if g.regex.search(self.raw_lower if g.raw else self.norm):
                        return True
        patterns = router._always.get(intent) or ()
        return any(p.search(self.norm) for p in patterns)

    def is_whole(self, intents: Sequence[str], allowed: Sequence[str]) -> bool:
        """True when the turn is nothing but these intents' phrases and filler words."""
        # closed phrases are a few words long: a long turn is never only that
        if not self.toks or self.features.words > _WHOLE_MAX_WORDS:
            return False
        return self._router._closed.covers(
            self.toks, intents, allowed, self._router._fillers, self._router._filler_phrases
        )
