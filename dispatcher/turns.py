"""The job the ingress enqueues for a worker: plain JSON, sent by task name.

The ingress never imports ``workers``; it sends :data:`RUN_TURN_TASK` with one argument,
a :class:`TurnJob` dict, on the tier's queue (``policy.queue(tier)``, ``turns.<tier>``).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

RUN_TURN_TASK = "dispatcher.run_turn"


class ChatParams(TypedDict):
    """What the provider call needs, OpenAI-shaped (the adapters translate)."""

    messages: list[dict[str, Any]]  # system + history + this turn's user message
    max_tokens: NotRequired[int | None]
    temperature: NotRequired[float | None]
    stop: NotRequired[list[str] | None]
    tools: NotRequired[list[dict[str, Any]] | None]
    tool_choice: NotRequired[str | dict[str, Any] | None]


class TurnJob(TypedDict):
    turn_id: str
    tenant: str
    session_id: str
    tier: str
    chain: list[str]  # model ids of the policy, in order
    rule: str
    confidence: float
    params: ChatParams
    received_at: float  # epoch seconds, when the ingress got the request
    enqueued_at: NotRequired[float]  # epoch seconds, when it was pushed on the queue
    deadline_at: float  # epoch seconds; the turn's budget runs from its arrival
    policy_version: str
    speculative: bool
    text_chars: int  # length of the user's turn (the ledger keeps lengths, not text)
    text_sha256: str


def job_problem(job: Any) -> str | None:
    """What makes ``job`` unusable as a :class:`TurnJob`, or None if it can run."""
    if not isinstance(job, dict):
        return f"the job is a {type(job).__name__}, not an object"
    missing = [k for k in ("turn_id", "tier", "params", "received_at", "deadline_at")
               if k not in job]
    if missing:
        return f"missing {', '.join(missing)}"
    if not isinstance(job["params"], dict):
        return "params is not an object"
    return None
