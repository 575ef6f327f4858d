"""The provider simulator: OpenAI, Anthropic and Gemini wire formats with injected faults.

Users rehearse a policy against it without spending money; tests and benchmarks use it
as the truth for provider adapters. :func:`answer_tokens` tells what it will answer,
:func:`create_sim_app` builds it, :mod:`dispatcher.sim.server` serves it.
"""

from dispatcher.sim.answer import answer_tokens, count_tokens, tool_arguments
from dispatcher.sim.app import create_sim_app
from dispatcher.sim.state import SimDefaults

__all__ = ["SimDefaults", "answer_tokens", "count_tokens", "create_sim_app", "tool_arguments"]
