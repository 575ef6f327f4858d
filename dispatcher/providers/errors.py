"""Translation of provider answers and httpx failures into :mod:`dispatcher.errors`.

Everything here is pure (no I/O) so the tables can be tested directly:

=====================================  ==============================================
what the provider did                  what the caller gets
=====================================  ==============================================
429                                    ProviderRateLimited(retry_after)
408                                    ProviderTimeout(phase="total")
500, 502, 503, 504, 529, other 5xx     ProviderServerError(status)
401, 403 (and Gemini API_KEY_INVALID)  ProviderAuthError
400 "context too long" (3 dialects)    ContextTooLong
400 code content_filter (Azure)        ContentFiltered
other 4xx                              ProviderBadRequest(status, excerpt)
httpx.ConnectTimeout / PoolTimeout     ProviderTimeout(phase="connect")
refused, reset before the answer       ProviderUnavailable
reset or cut after the answer began    ProviderStreamError
an error event inside a 200 stream     see :func:`error_from_stream_payload`
=====================================  ==============================================

``retry_after`` is read, in this order, from ``retry-after-ms``, ``retry-after`` (seconds
or an HTTP date), Gemini's ``google.rpc.RetryInfo.retryDelay`` in the body, then OpenAI's
``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` (Go durations: ``6m0s``,
``20ms``). An API key is scrubbed from every excerpt and message.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from dispatcher.errors import (
    ContentFiltered,
    ContextTooLong,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderStreamError,
    ProviderTimeout,
    ProviderUnavailable,
)

__all__ = [
    "error_from_response",
    "error_from_stream_payload",
    "error_from_transport",
    "excerpt",
    "parse_go_duration",
    "retry_after_from",
    "scrub",
]

EXCERPT_CHARS = 300

_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Shapes of well-known provider keys, scrubbed even when they are not the key we sent
# (an OpenAI 401 echoes a masked form of the key it got).
_KEY_SHAPES = re.compile(r"(sk-[A-Za-z0-9_\-*]{6,}|AIza[0-9A-Za-z_\-]{20,})")
_CONTEXT_TOO_LONG = (
    "context_length_exceeded",  # OpenAI code
    "maximum context length",  # OpenAI, vLLM, Together message
    "prompt is too long",  # Anthropic
    "exceed context limit",  # Anthropic: input + max_tokens
    "exceeds the maximum number of tokens",  # Gemini
    "context window",
)
# OpenAI / Azure OpenAI refuse a prompt with HTTP 400 and one of these codes.
_CONTENT_CODES = frozenset({"content_filter", "content_policy_violation"})


def scrub(text: str, api_key: str | None) -> str:
    """``text`` with ``api_key`` and anything shaped like a provider key blanked out."""
    if api_key:
        text = text.replace(api_key, "[key]")
    return _KEY_SHAPES.sub("[key]", text)


def _loads(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _error_object(payload: Any) -> dict[str, Any]:
    """The ``error`` object of an OpenAI, Anthropic or Gemini error body (or ``{}``).

    Gemini's ``streamGenerateContent`` without ``alt=sse`` wraps it in a list; Ollama
    sends ``{"error": "text"}``; vLLM puts ``message`` and ``code`` at the top level
    (``"object": "error"``).
    """
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            return err
        if isinstance(err, str):
            return {"message": err}
        if payload.get("object") == "error" and isinstance(payload.get("message"), str):
            return payload
    return {}


def excerpt(body: bytes | str, api_key: str | None, limit: int = EXCERPT_CHARS) -> str:
    """A short, key-free, one-line account of an error body: its message, else its text."""
    err = _error_object(_loads(body)) if body else {}
    message = err.get("message")
    if isinstance(message, str) and message:
        text = message
    else:
        text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    text = scrub(text, api_key)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_go_duration(value: str) -> float | None:
    """Seconds in a Go duration such as ``6m0s``, ``1.5s`` or ``20ms``; None if it is not one."""
    value = value.strip()
    if not value:
        return None
    total = 0.0
    pos = 0
    for match in _GO_DURATION.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value):
        # A bare number ("2") is read as seconds, as some OpenAI-compatible servers send it.
        try:
            return max(float(value), 0.0) if pos == 0 else None
        except ValueError:
            return None
    return total


def _http_date_delay(value: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - now, 0.0)


def _retry_info_delay(payload: Any) -> float | None:
    details = _error_object(payload).get("details")
    if not isinstance(details, list):
        return None
    for detail in details:
        if (
            isinstance(detail, dict)
            and str(detail.get("@type", "")).endswith("RetryInfo")
            and isinstance(detail.get("retryDelay"), str)
        ):
            return parse_go_duration(detail["retryDelay"])
    return None


def retry_after_from(
    headers: Mapping[str, str], body: bytes | str = b"", *, now: float | None = None
) -> float | None:
    """The provider's hint, in seconds, of when to try again; None if it gave none."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            return max(float(value), 0.0)
        except ValueError:
            delay = _http_date_delay(value, time.time() if now is None else now)
            if delay is not None:
                return delay
    if body:
        delay = _retry_info_delay(_loads(body))
        if delay is not None:
            return delay
    # OpenAI: the reset of whichever budget is exhausted; if neither says so, the sooner.
    resets: list[tuple[float, bool]] = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        seconds = parse_go_duration(reset) if reset else None
        if seconds is not None:
            resets.append((seconds, headers.get(f"x-ratelimit-remaining-{kind}") == "0"))
    if not resets:
        return None
    exhausted = [seconds for seconds, empty in resets if empty]
    return max(exhausted) if exhausted else min(seconds for seconds, _ in resets)


def _full_text(err: Mapping[str, Any], body: bytes | str) -> str:
    message = err.get("message")
    if isinstance(message, str):
        return message
    return body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body


def _is_context_too_long(err: Mapping[str, Any], text: str) -> bool:
    if err.get("code") == "context_length_exceeded":
        return True
    lowered = text.lower()
    return any(marker in lowered for marker in _CONTEXT_TOO_LONG)


def _is_bad_key(err: Mapping[str, Any]) -> bool:
    """Gemini answers a wrong key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID."""
    details = err.get("details")
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict) and detail.get("reason") == "API_KEY_INVALID":
                return True
    message = err.get("message")
    return isinstance(message, str) and "api key not valid" in message.lower()


def error_from_response(
    status: int,
    body: bytes | str,
    headers: Mapping[str, str],
    *,
    provider: str = "",
    model: str = "",
    api_key: str | None = None,
) -> ProviderError:
    """The error for an HTTP answer with a status of 400 or more."""
    where = {"provider": provider, "model": model}
    payload = _loads(body) if body else None
    err = _error_object(payload)
    short = excerpt(body, api_key)
    detail = f": {short}" if short else ""
    if status == 429:
        retry_after = retry_after_from(headers, body)
        hint = f" (retry after {retry_after:g}s)" if retry_after is not None else ""
        return ProviderRateLimited(
            f"rate limited, HTTP 429{hint}{detail}", retry_after=retry_after, **where
        )
    if status in (401, 403) or (status == 400 and _is_bad_key(err)):
        return ProviderAuthError(f"API key rejected, HTTP {status}{detail}", **where)
    if status == 408:
        return ProviderTimeout(f"provider timed out, HTTP 408{detail}", phase="total", **where)
    if status >= 500:  # 500, 502, 503, 504, Anthropic's 529 overloaded, and the rest
        return ProviderServerError(f"server error, HTTP {status}{detail}", status=status, **where)
    if status in (400, 413, 422) and _is_context_too_long(err, _full_text(err, body)):
        return ContextTooLong(f"prompt does not fit the context window{detail}", **where)
    if status == 400 and err.get("code") in _CONTENT_CODES:
        return ContentFiltered(f"prompt refused by the content filter{detail}", **where)
    return ProviderBadRequest(
        f"request rejected, HTTP {status}{detail}", status=status, excerpt=short, **where
    )


def error_from_stream_payload(
    err: Mapping[str, Any],
    *,
    provider: str = "",
    model: str = "",
    api_key: str | None = None,
) -> ProviderError:
    """The error for an error event carried inside a stream that began with HTTP 200.

    Choice, documented: an *overloaded* report (Anthropic ``overloaded_error``, Gemini
    ``UNAVAILABLE``/503, ``529``) is a :class:`ProviderServerError` with status 529/503,
    exactly as if it had come as the HTTP status, so the breaker treats both alike; a rate
    limit report is :class:`ProviderRateLimited`; a context-too-long report is
    :class:`ContextTooLong`; anything else is :class:`ProviderStreamError`.
    """
    where = {"provider": provider, "model": model}
    kind = str(err.get("type") or err.get("status") or err.get("code") or "error")
    message = err.get("message")
    text = scrub(" ".join(str(message).split()), api_key)[:EXCERPT_CHARS] if message else ""
    detail = f"{kind}: {text}" if text else kind
    code = err.get("code")
    lowered = kind.lower()
    if lowered in ("overloaded_error", "unavailable") or code in (503, 529):
        status = 503 if lowered == "unavailable" or code == 503 else 529
        return ProviderServerError(f"overloaded mid-stream ({detail})", status=status, **where)
    if lowered in ("rate_limit_error", "resource_exhausted", "rate_limit_exceeded") or code == 429:
        return ProviderRateLimited(f"rate limited mid-stream ({detail})", retry_after=None, **where)
    if _is_context_too_long(err, str(message or "")):
        return ContextTooLong(f"prompt does not fit the context window ({detail})", **where)
    return ProviderStreamError(f"error event in the stream ({detail})", **where)


def error_from_transport(
    exc: httpx.HTTPError,
    *,
    mid_stream: bool,
    provider: str = "",
    model: str = "",
    api_key: str | None = None,
) -> ProviderError:
    """The error for an httpx failure; ``mid_stream`` once the answer's headers arrived."""
    where = {"provider": provider, "model": model}
    name = type(exc).__name__
    text = scrub(str(exc), api_key)[:EXCERPT_CHARS]
    detail = f"{name}: {text}" if text else name
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return ProviderTimeout(f"connect timed out ({detail})", phase="connect", **where)
    if isinstance(exc, httpx.TimeoutException):
        phase = "total" if mid_stream else "first_token"
        return ProviderTimeout(f"timed out ({detail})", phase=phase, **where)
    if mid_stream and isinstance(exc, httpx.TransportError):
        return ProviderStreamError(f"stream broke ({detail})", **where)
    if isinstance(exc, httpx.DecodingError):
        return ProviderStreamError(f"undecodable answer ({detail})", **where)
    return ProviderUnavailable(f"unreachable ({detail})", **where)
