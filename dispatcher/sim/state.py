"""The simulator's run-time state: defaults, faults, per-model latency and call counts.

Everything here is plain data mutated from the event loop only (admin requests and
provider requests run on the same loop), so no locks are needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: Faults that take no argument.
SIMPLE_FAULTS = (
    "none",
    "http_429",
    "http_500",
    "http_503",
    "hang",
    "context_too_long",
    "content_filter",
)
#: Faults written ``name:N`` with a whole number N >= 0.
NUMERIC_FAULTS = ("cut_after", "slow_first_token", "error_event_after")
FAULT_FORMS = (*SIMPLE_FAULTS, *(f"{name}:N" for name in NUMERIC_FAULTS))

#: The admin "model" that stands for every model without its own setting.
ANY_MODEL = "*"

#: How a call ended, for the stats.
Outcome = Literal["completed", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class SimDefaults:
    """Latency and answer length of every model that has no setting of its own.

    ``ttft_ms`` is the wait before the first token, ``itl_ms`` the wait between tokens,
    ``tokens`` the length of a text answer.
    """

    ttft_ms: float = 50
    itl_ms: float = 10
    tokens: int = 20


@dataclass(frozen=True, slots=True)
class Latency:
    """The resolved timing and answer length for one model."""

    ttft_ms: float
    itl_ms: float
    tokens: int


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: ``kind`` (see :data:`FAULT_FORMS`), its ``arg``, ``retry_after``."""

    kind: str = "none"
    arg: int = 0
    retry_after: float = 1.0

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.kind in NUMERIC_FAULTS else self.kind


NO_FAULT = Fault()


def parse_fault(text: str, *, retry_after: float = 1.0) -> Fault:
    """Parse a fault string such as ``"http_429"`` or ``"cut_after:3"``.

    Raises ValueError naming the bad value and the accepted forms.
    """
    name, sep, arg = text.strip().partition(":")
    if not sep and name in SIMPLE_FAULTS:
        return Fault(name, 0, retry_after)
    if sep and name in NUMERIC_FAULTS:
        if arg.isdigit():
            return Fault(name, int(arg), retry_after)
        raise ValueError(f"fault {text!r}: {name} needs a whole number >= 0 after ':'")
    raise ValueError(f"unknown fault {text!r}: expected one of {', '.join(FAULT_FORMS)}")


class ModelStats:
    """Counters of one model since the last reset.

    ``calls`` counts requests that passed authentication and validation; each ends as
    ``completed`` (the whole answer and its end marker were sent) or ``failed`` (an
    injected fault, a cut, or the client went away; the last also counts ``cancelled``).
    ``input_tokens`` counts calls that got a 200 response; ``output_tokens`` the tokens
    actually sent. ``active`` is the number of calls in progress.
    """

    __slots__ = (
        "active",
        "calls",
        "cancelled",
        "completed",
        "failed",
        "input_tokens",
        "output_tokens",
    )

    def __init__(self) -> None:
        self.calls = self.completed = self.failed = self.cancelled = self.active = 0
        self.input_tokens = self.output_tokens = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a JSON-ready dict."""
        return {name: getattr(self, name) for name in sorted(self.__slots__)}


class CallRecord:
    """The bookkeeping of one call: count tokens as they go out, then :meth:`finish` once."""

    __slots__ = ("done", "stats")

    def __init__(self, stats: ModelStats) -> None:
        self.stats = stats
        self.done = False
        stats.calls += 1
        stats.active += 1

    def add_input(self, tokens: int) -> None:
        """Bill the call's input tokens (once its 200 response starts)."""
        self.stats.input_tokens += tokens

    def finish(self, outcome: Outcome) -> None:
        """Record how the call ended; only the first outcome counts."""
        if self.done:
            return
        self.done = True
        stats = self.stats
        stats.active -= 1
        if outcome == "completed":
            stats.completed += 1
        else:
            stats.failed += 1
            if outcome == "cancelled":
                stats.cancelled += 1


class SimState:
    """Faults, latency settings and stats of one simulator app."""

    def __init__(self, defaults: SimDefaults) -> None:
        self.defaults = defaults
        self.faults: dict[str, Fault] = {}
        self.latency: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, ModelStats] = {}

    def reset(self) -> None:
        """Clear faults and stats, and put every model back on the defaults."""
        self.faults = {}
        self.latency = {}
        # Calls in flight keep their old ModelStats object, so they do not leak into
        # the counts that start now.
        self.stats = {}

    def set_fault(self, model: str, fault: Fault) -> None:
        """Set ``model``'s fault (``"*"``: every model); an explicit "none" is kept."""
        self.faults[model] = fault

    def fault_for(self, model: str) -> Fault:
        """Return ``model``'s own fault, else the ``"*"`` fault, else none."""
        return self.faults.get(model) or self.faults.get(ANY_MODEL) or NO_FAULT

    def set_latency(self, model: str, fields: dict[str, Any]) -> None:
        """Override some of ``ttft_ms``, ``itl_ms``, ``tokens`` for ``model`` (or ``"*"``)."""
        self.latency.setdefault(model, {}).update(fields)

    def latency_for(self, model: str) -> Latency:
        """Resolve each field: the model's own value, else the ``"*"`` one, else the default."""
        own = self.latency.get(model, {})
        star = self.latency.get(ANY_MODEL, {})
        d = self.defaults

        def pick(name: str, default: Any) -> Any:
            return own.get(name, star.get(name, default))

        return Latency(
            pick("ttft_ms", d.ttft_ms), pick("itl_ms", d.itl_ms), pick("tokens", d.tokens)
        )

    def begin(self, model: str) -> CallRecord:
        """Start counting one call to ``model``."""
        stats = self.stats.get(model)
        if stats is None:
            stats = self.stats[model] = ModelStats()
        return CallRecord(stats)

    def stats_json(self) -> dict[str, Any]:
        """Return ``{"models": {id: counters}}`` as served by ``GET /admin/stats``."""
        return {"models": {model: s.as_dict() for model, s in sorted(self.stats.items())}}
