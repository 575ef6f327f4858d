"""Value types shared by routing, workers and the ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any


class Tier(StrEnum):
    """The four default tiers, cheapest first."""

    FAST = "fast"
    STANDARD = "standard"
    REASONING = "reasoning"
    LONG_CONTEXT = "long_context"


class TurnStatus(StrEnum):
    """How a turn ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """What the router remembers of a session: the tier it reached and how long ago.

    ``turns_ago`` is 1 for the turn right before the one being routed.
    """

    tier: str | None = None
    turns_ago: int = 0
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The router's verdict for one turn."""

    tier: str
    chain: tuple[str, ...]
    rule: str
    confidence: float
    features: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The first model of the chain: the one tried first."""
        return self.chain[0]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them.

    ``cached_input_tokens`` is part of ``input_tokens``; ``reasoning_tokens`` is part of
    ``output_tokens``. Each is priced at its own rate by :func:`dispatcher.policy.cost`.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


ZERO = Decimal(0)
