"""The error tree of the dispatcher.

::

    DispatcherError
     ├── PolicyError                 a policy file is unreadable or invalid (lists every problem)
     ├── ConfigError                 a setting or environment variable is missing or wrong
     └── ProviderError               one call to one provider+model failed (``error_class``)
          ├── ProviderTimeout        connect, first-token or whole-call timeout    failover
          ├── ProviderRateLimited    429, carries ``retry_after`` seconds          failover
          ├── ProviderServerError    5xx, overloaded                               failover
          ├── ProviderUnavailable    connection refused / reset                    failover
          ├── ProviderAuthError      401/403: the key is missing or wrong          failover
          ├── ProviderStreamError    the stream broke or ended without its end marker   failover
          ├── ContextTooLong         the prompt does not fit the model's window    larger window
          ├── ProviderBadRequest     400/404/422 for our request                   returned
          └── ContentFiltered        the provider refused on content grounds       returned

Provider and httpx errors are translated into this tree at the provider boundary
(:mod:`dispatcher.providers`); nothing above it sees an ``httpx`` exception. Messages name
the provider, the model and the value at fault, and never contain an API key.
"""

from __future__ import annotations

from dataclasses import dataclass


class DispatcherError(Exception):
    """Raised for every failure the dispatcher itself understands."""


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong in a policy file: where (a dotted path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PolicyError(DispatcherError):
    """Raised when a policy file cannot be read or fails validation."""

    def __init__(self, source: str, problems: list[PolicyProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {source}: {p}" for p in problems)
        super().__init__(f"invalid policy {source} ({len(problems)} problem(s)):\n{lines}")


class ConfigError(DispatcherError):
    """Raised when a setting or an environment variable is missing or has a bad value."""


class ProviderError(DispatcherError):
    """Raised when one call to one provider+model fails; ``error_class`` names the kind."""

    error_class = "provider_error"
    #: whether the next model of the chain should be tried
    failover = True

    def __init__(self, message: str, *, provider: str = "", model: str = "") -> None:
        self.provider = provider
        self.model = model
        where = f"{provider}/{model}: " if provider or model else ""
        super().__init__(f"{where}{message}")


class ProviderTimeout(ProviderError):
    """Raised when connecting, the first token or the whole call takes too long."""

    error_class = "timeout"

    def __init__(self, message: str, *, phase: str, provider: str = "", model: str = "") -> None:
        self.phase = phase
        super().__init__(message, provider=provider, model=model)


class ProviderRateLimited(ProviderError):
    """Raised on 429: ``retry_after`` is the provider's hint in seconds, when it gave one."""

    error_class = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: float | None, provider: str = "", model: str = ""
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, provider=provider, model=model)


class ProviderServerError(ProviderError):
    """Raised when the provider answers 5xx or reports itself overloaded."""

    error_class = "server_error"

    def __init__(self, message: str, *, status: int, provider: str = "", model: str = "") -> None:
        self.status = status
        super().__init__(message, provider=provider, model=model)


class ProviderUnavailable(ProviderError):
    """Raised when the provider cannot be reached (refused, reset, DNS)."""

    error_class = "unavailable"


class ProviderAuthError(ProviderError):
    """Raised on 401/403: the API key is missing, wrong or lacks permission."""

    error_class = "auth"


class ProviderStreamError(ProviderError):
    """Raised when a stream breaks, carries an error event, or ends without its end marker."""

    error_class = "stream_error"


class ContextTooLong(ProviderError):
    """Raised when the prompt does not fit the model's context window."""

    error_class = "context_too_long"


class ProviderBadRequest(ProviderError):
    """Raised when the provider rejects our request itself (400/404/422)."""

    error_class = "bad_request"
    failover = False

    def __init__(
        self, message: str, *, status: int, excerpt: str = "", provider: str = "", model: str = ""
    ) -> None:
        self.status = status
        self.excerpt = excerpt
        super().__init__(message, provider=provider, model=model)


class ContentFiltered(ProviderError):
    """Raised when the provider refuses on content grounds; returned, never routed around."""

    error_class = "content_filtered"
    failover = False
