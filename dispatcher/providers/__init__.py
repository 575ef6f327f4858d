"""Provider adapters: one module per API family, plus the error mapping.

* :func:`make_client` builds the adapter a policy ``Provider`` names, with its key read
  from the environment (``api_key_env``) and, in rehearsal mode, the simulator's URL;
* :func:`new_http_client` builds the one pooled ``httpx.AsyncClient`` a process shares;
* :func:`collect` folds a stream into a :class:`Completion`.

Adapters raise only :class:`dispatcher.errors.ProviderError` subclasses and never retry.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from dispatcher.errors import ConfigError
from dispatcher.policy.models import Provider
from dispatcher.providers._adapter import HttpAdapter, collect
from dispatcher.providers.anthropic import AnthropicClient
from dispatcher.providers.base import (
    ChatRequest,
    Completion,
    Finish,
    ProviderClient,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from dispatcher.providers.gemini import GeminiClient
from dispatcher.providers.openai import OpenAIClient

__all__ = [
    "SIM_KEY",
    "AnthropicClient",
    "ChatRequest",
    "Completion",
    "Finish",
    "GeminiClient",
    "HttpAdapter",
    "OpenAIClient",
    "ProviderClient",
    "StreamEvent",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "collect",
    "make_client",
    "new_http_client",
]

#: the key sent to the simulator when the provider's own variable is unset
SIM_KEY = "sim-key"

_FAMILIES: dict[str, type[HttpAdapter]] = {
    "openai": OpenAIClient,
    "anthropic": AnthropicClient,
    "gemini": GeminiClient,
}


def make_client(
    name: str,
    config: Provider,
    http: httpx.AsyncClient,
    *,
    env: Mapping[str, str],
    sim_url: str | None = None,
) -> HttpAdapter:
    """The adapter for provider ``name``.

    The key is ``env[config.api_key_env]`` (None when unset: the provider will answer
    401, which is a ``ProviderAuthError`` like any wrong key). With ``sim_url`` (rehearsal
    mode, ``DISPATCHER_SIM_URL``) the base URL is the simulator's (``{sim_url}/v1`` for
    the OpenAI family) and a missing key becomes ``"sim-key"``.
    """
    try:
        cls = _FAMILIES[config.family]
    except KeyError:
        raise ConfigError(f"provider {name!r}: unknown API family {config.family!r}") from None
    api_key = env.get(config.api_key_env) if config.api_key_env else None
    api_key = api_key or None
    if sim_url:
        base = sim_url.rstrip("/")
        config = config.model_copy(
            update={"base_url": f"{base}/v1" if config.family == "openai" else base}
        )
        api_key = api_key or SIM_KEY
    return cls(name, config, http, api_key)


from dispatcher.providers.transport import LeanTransport  # noqa: E402


def new_http_client(
    *, max_connections: int = 1000, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The process's shared client: a large keep-alive pool, HTTP/1.1, no retries.

    It has no default timeout on purpose: every adapter call passes its provider's own.
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
    )
    if transport is None:
        # httpx's API and errors, the lean wire underneath (see providers/transport.py)
        transport = LeanTransport(max_connections=max_connections, keepalive_expiry=30.0)
    return httpx.AsyncClient(
        transport=transport, limits=limits, timeout=None, follow_redirects=False
    )


def _check_protocol(client: HttpAdapter) -> ProviderClient:
    return client  # mypy proves every adapter satisfies ProviderClient
