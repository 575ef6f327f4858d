"""The policy file's schema (DESIGN §3), as pydantic models.

Every model forbids unknown keys, so a typo is an error that names the key rather than
a setting silently ignored. Cross-references (a tier naming an unknown model, a rule
naming an unknown tier) are checked by :func:`dispatcher.policy.loader.cross_check`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from dispatcher.domain import Usage

MILLION = Decimal(1_000_000)

NonNegDecimal = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect_s: float = Field(default=2.0, gt=0)
    first_token_s: float = Field(default=10.0, gt=0)
    total_s: float = Field(default=120.0, gt=0)


class Provider(_Strict):
    family: Literal["openai", "anthropic", "gemini"]
    base_url: str = Field(min_length=1)
    api_key_env: str | None = Field(
        default=None, description="name of the environment variable holding the API key"
    )
    timeouts: Timeouts = Timeouts()
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None


class Price(_Strict):
    """USD per million tokens. Cached input and reasoning default to input and output."""

    input: NonNegDecimal
    output: NonNegDecimal
    cached_input: NonNegDecimal | None = None
    reasoning: NonNegDecimal | None = None


class Model(_Strict):
    provider: str
    price: Price
    context_window: PositiveInt
    api_model: str | None = Field(default=None, description="the provider's own id, if different")
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None

    def cost(self, usage: Usage) -> Decimal:
        """Exact USD cost of ``usage`` at this model's prices."""
        p = self.price
        cached_price = p.input if p.cached_input is None else p.cached_input
        reasoning_price = p.output if p.reasoning is None else p.reasoning
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        reasoning = min(usage.reasoning_tokens, usage.output_tokens)
        total = (
            (usage.input_tokens - cached) * p.input
            + cached * cached_price
            + (usage.output_tokens - reasoning) * p.output
            + reasoning * reasoning_price
        )
        return total / MILLION


class LastResort(_Strict):
    """What a tier answers when every model of its chain is open or limited."""

    text: str = Field(default="One moment, please.", min_length=1)


class TierSpec(_Strict):
    models: list[str] = Field(min_length=1)
    queue: str | None = None
    hedge_ms: PositiveInt | None = None
    max_output_tokens: PositiveInt = 512
    deadline_ms: PositiveInt = 30_000
    last_resort: LastResort | None = None


class IntentSpec(_Strict):
    """Phrases (whole-utterance or word-bounded) and regexes that add to a built-in intent."""

    phrases: list[str] = []
    patterns: list[str] = []
    replace: bool = False


class _Rule(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    tier: str


class IntentRule(_Rule):
    kind: Literal["intent"]
    intents: list[str] = Field(min_length=1)
    #: the whole turn must be this intent (plus fillers), not merely contain it
    whole: bool = False
    #: with ``whole``: intents that may stand beside, but not alone ("great, thanks, bye")
    also_allow: list[str] = []
    max_words: PositiveInt | None = None
    min_words: NonNegativeInt | None = None
    #: only when the history plus the turn is at least (at most) this long, in tokens
    min_conversation_tokens: NonNegativeInt | None = None
    max_conversation_tokens: NonNegativeInt | None = None
    #: the turn must end with one of the intents' phrases ("... i'll try that tonight bye")
    at_end: bool = False
    #: not when the turn also shows one of these intents
    unless_intents: list[str] = []
    #: for closed intents: only phrases of at least this many words count ("hold on", not
    #: "wait"), so that a short turn that merely contains one is recognised
    min_phrase_words: PositiveInt = 1


class KeywordRule(_Rule):
    kind: Literal["keyword"]
    keywords: list[str] = []
    patterns: list[str] = []
    max_words: PositiveInt | None = None


class StateRule(_Rule):
    kind: Literal["state"]
    last_bot_act: list[str] = []
    expecting: list[str] = []
    max_words: PositiveInt | None = None
    #: a reply that is itself a question ("what's the difference...") is not an answer
    allow_questions: bool = False
    #: not when the reply shows one of these intents ("actually, can we make it thursday")
    unless_intents: list[str] = []


class ConversationLengthRule(_Rule):
    kind: Literal["conversation_length"]
    min_tokens: PositiveInt


class FeatureRule(_Rule):
    """Matches when every condition given holds."""

    kind: Literal["features"]
    min_words: NonNegativeInt | None = None
    max_words: NonNegativeInt | None = None
    min_questions: NonNegativeInt | None = None
    min_clauses: NonNegativeInt | None = None
    has_code: bool | None = None
    has_math: bool | None = None
    min_numbers: NonNegativeInt | None = None
    min_conversation_tokens: NonNegativeInt | None = None


class SessionRule(_Rule):
    """Hysteresis: a short follow-up after a turn on one of ``from_tiers`` keeps that tier.

    ``tier`` is ignored at match time (the session's tier is used); it names the lowest
    tier the rule may hand out and must exist.
    """

    kind: Literal["session"]
    from_tiers: list[str] = Field(min_length=1)
    max_words: PositiveInt = 8
    turns: PositiveInt = 2


Rule = Annotated[
    IntentRule | KeywordRule | StateRule | ConversationLengthRule | FeatureRule | SessionRule,
    Field(discriminator="kind"),
]


class Budget(_Strict):
    daily_usd: NonNegDecimal
    on_exceed: Literal["downgrade", "refuse"] = "downgrade"


class Budgets(_Strict):
    default: Budget | None = None
    tenants: dict[str, Budget] = {}


class SessionMemory(_Strict):
    ttl_s: PositiveInt = 1800


class Policy(_Strict):
    version: str | None = None
    prices_as_of: str | None = None
    providers: dict[str, Provider] = Field(min_length=1)
    models: dict[str, Model] = Field(min_length=1)
    tiers: dict[str, TierSpec] = Field(min_length=1)
    intents: dict[str, IntentSpec] = {}
    state_aliases: dict[str, dict[str, str]] = Field(
        default={}, description="maps a caller's own state values to the standard ones"
    )
    rules: list[Rule] = []
    default_tier: str = "standard"
    baseline_model: str
    budgets: Budgets = Budgets()
    session: SessionMemory = SessionMemory()

    def chain(self, tier: str) -> tuple[str, ...]:
        return tuple(self.tiers[tier].models)

    def queue(self, tier: str) -> str:
        return self.tiers[tier].queue or f"turns.{tier}"

    def baseline_cost(self, usage: Usage) -> Decimal:
        return self.models[self.baseline_model].cost(usage)
