"""OpenAI chat completions: ``POST /v1/chat/completions``, streamed and whole.

Stream: ``data: {chat.completion.chunk}`` events. The first carries ``role`` (with
``content: ""``, or the tool call's ``id`` and ``name`` with ``arguments: ""``), then one
chunk per token (``content``, or ``tool_calls[0].function.arguments`` fragments), a chunk
with an empty delta and ``finish_reason``, the ``usage`` chunk with ``choices: []`` when
``stream_options.include_usage`` is set (every other chunk then has ``usage: null``),
and ``data: [DONE]``. Chunks carry an ``obfuscation`` pad unless
``stream_options.include_obfuscation`` is false, as the real API does.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
from starlette.requests import Request

from dispatcher.sim.state import Fault
from dispatcher.sim.wire import (
    HOLE,
    Answer,
    ApiError,
    ErrorKind,
    Headers,
    ParsedTools,
    Reply,
    Script,
    SimCall,
    Template,
    ToolSpec,
    json_event,
    random_id,
    text_pieces_tokens,
)

CONTEXT_WINDOW = 128_000
FINGERPRINT = "fp_sim0000001"
_DONE = b"data: [DONE]\n\n"
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


def _error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def _reply(status: int, body: bytes, extra: Headers | None = None) -> Reply:
    headers: Headers = [(b"x-request-id", ("req_" + random_id(32)).encode())]
    return Reply(status, body, headers + (extra or []))


def _bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(
        _reply(400, _error_body(message, "invalid_request_error", param=param, code=code))
    )


def _mask(key: str) -> str:
    return key[:3] + "*" * max(len(key) - 7, 4) + key[-4:] if len(key) > 8 else "*" * len(key)


def _texts(content: Any) -> list[str]:
    """The text pieces of a message ``content``: a string or a list of content parts."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    return []


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            kind = type(value).__name__
            raise _bad_request(
                f"Invalid type for '{name}': expected an integer, but got a {kind} instead.",
                param=name,
                code="invalid_type",
            )
        if value < 1:
            raise _bad_request(
                f"Invalid '{name}': integer below minimum value. Expected a value "
                f">= 1, but got {value} instead.",
                param=name,
                code="integer_below_min_value",
            )
        return value
    return None


def _tools(body: dict[str, Any]) -> ParsedTools:
    parsed = ParsedTools()
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            parsed.tools.append(ToolSpec(fn["name"], fn.get("parameters") or {}))
    choice = body.get("tool_choice")
    if choice == "none":
        parsed.disabled = True
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        parsed.forced = choice["function"].get("name")
        if parsed.tools and parsed.pick() is None:
            raise _bad_request(
                f"Tool choice '{parsed.forced}' not found in 'tools' parameter.",
                param="tool_choice",
            )
    return parsed


class OpenAIFormat:
    """The OpenAI chat completions wire format."""

    name = "openai"

    def authenticate(self, request: Request) -> Reply | None:
        """Require ``Authorization: Bearer KEY``; a key starting with "bad" is refused."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return _reply(
                401,
                _error_body(
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                    "or as the password field (with blank username) if you're accessing the API "
                    "from your browser and are prompted for a username and password. You can "
                    "obtain an API key from https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                ),
            )
        if key.startswith("bad"):
            return _reply(
                401,
                _error_body(
                    f"Incorrect API key provided: {_mask(key)}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    code="invalid_api_key",
                ),
            )
        return None

    def parse(self, request: Request, body: Any) -> SimCall:
        """Read model, messages, limits, stream options and tools."""
        if not isinstance(body, dict):
            raise _bad_request(
                "We could not parse the JSON body of your request. (HINT: This "
                "likely means you aren't using your HTTP library correctly.)"
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad_request("you must provide a model parameter")
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise _bad_request(
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        if not messages:
            raise _bad_request("[] is too short - 'messages'", param="messages")
        pieces: list[str] = []
        prompt = ""
        for message in messages:
            if not isinstance(message, dict):
                raise _bad_request(
                    "Invalid type for 'messages[0]': expected an object.",
                    param="messages",
                    code="invalid_type",
                )
            texts = _texts(message.get("content"))
            pieces.extend(texts)
            for call in message.get("tool_calls") or []:
                arguments = (call.get("function") or {}).get("arguments")
                if isinstance(arguments, str):
                    pieces.append(arguments)
            if message.get("role") == "user" and texts:
                prompt = "\n".join(texts)
        options = body.get("stream_options") or {}
        stream = body.get("stream") is True
        tool = _tools(body).pick() if messages[-1].get("role") == "user" else None
        return SimCall(
            model=model,
            prompt=prompt,
            input_tokens=text_pieces_tokens(pieces),
            stream=stream,
            max_tokens=_max_tokens(body),
            tool=tool,
            include_usage=stream and options.get("include_usage") is True,
            obfuscate=stream and options.get("include_obfuscation") is not False,
        )

    def _usage(self, call: SimCall, answer: Answer) -> dict[str, Any]:
        out = len(answer.units)
        return {
            "prompt_tokens": call.input_tokens,
            "completion_tokens": out,
            "total_tokens": call.input_tokens + out,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def script(self, call: SimCall, answer: Answer) -> Script:
        """Render the chunk sequence described in the module docstring."""
        base: dict[str, Any] = {
            "id": "chatcmpl-" + random_id(29),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": call.model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        extra: dict[str, Any] = {"usage": None} if call.include_usage else {}
        if call.obfuscate:
            extra["obfuscation"] = random_id(6)

        def chunk(delta: Any, finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice], **extra}

        def event(doc: Any) -> bytes:
            return json_event(b"data: ", doc, b"\n\n")

        if answer.tool is not None:
            first = event(
                chunk(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_" + answer.tool_id,
                                "type": "function",
                                "function": {"name": answer.tool.name, "arguments": ""},
                            }
                        ],
                        "refusal": None,
                    }
                )
            )
            token = Template(
                b"data: ",
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": HOLE}}]}),
                b"\n\n",
            )
        else:
            first = event(chunk({"role": "assistant", "content": "", "refusal": None}))
            token = Template(b"data: ", chunk({"content": HOLE}), b"\n\n")
        units: list[tuple[bytes, ...]] = [(token.fill(u),) for u in answer.units]
        tail = [event(chunk({}, answer.finish))]
        if units:
            units[0] = (first, *units[0])
        else:
            tail.insert(0, first)
        if call.include_usage:
            usage_extra = {k: v for k, v in extra.items() if k != "usage"}
            tail.append(
                event({**base, "choices": [], "usage": self._usage(call, answer), **usage_extra})
            )
        tail.append(_DONE)
        error = event(
            {
                "error": {
                    "message": _SERVER_ERROR,
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )
        headers: Headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-request-id", ("req_" + random_id(32)).encode()),
        ]
        return Script(headers, [], units, tail, error)

    def body(self, call: SimCall, answer: Answer) -> Reply:
        """Render a ``chat.completion`` object with its usage."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.text or None,
            "refusal": None,
            "annotations": [],
        }
        if answer.tool is not None:
            message["tool_calls"] = [
                {
                    "id": "call_" + answer.tool_id,
                    "type": "function",
                    "function": {"name": answer.tool.name, "arguments": answer.arguments},
                }
            ]
        doc = {
            "id": "chatcmpl-" + random_id(29),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish}
            ],
            "usage": self._usage(call, answer),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        return _reply(200, orjson.dumps(doc))

    def error(self, kind: ErrorKind, call: SimCall, fault: Fault) -> Reply:
        """Render 429 (with Retry-After and x-ratelimit-*), 500, 503 or context length."""
        if kind == "rate_limited":
            wait = fault.retry_after
            message = (
                f"Rate limit reached for {call.model} in organization org-sim on requests "
                f"per min (RPM): Limit 500, Used 500, Requested 1. Please try again in "
                f"{wait:g}s. Visit https://platform.openai.com/account/rate-limits to "
                "learn more."
            )
            headers: Headers = [
                (b"retry-after", str(math.ceil(wait)).encode()),
                (b"retry-after-ms", str(round(wait * 1000)).encode()),
                (b"x-ratelimit-limit-requests", b"500"),
                (b"x-ratelimit-remaining-requests", b"0"),
                (b"x-ratelimit-reset-requests", f"{wait:g}s".encode()),
                (b"x-ratelimit-limit-tokens", b"200000"),
                (b"x-ratelimit-remaining-tokens", b"200000"),
                (b"x-ratelimit-reset-tokens", b"0s"),
            ]
            return _reply(
                429, _error_body(message, "requests", code="rate_limit_exceeded"), headers
            )
        if kind == "context_too_long":
            total = CONTEXT_WINDOW + call.input_tokens
            return _reply(
                400,
                _error_body(
                    f"This model's maximum context length is {CONTEXT_WINDOW} tokens. However, "
                    f"your messages resulted in {total} tokens. Please reduce the length of the "
                    "messages.",
                    "invalid_request_error",
                    param="messages",
                    code="context_length_exceeded",
                ),
            )
        if kind == "unavailable":
            return _reply(
                503,
                _error_body(
                    "The engine is currently overloaded, please try again later.", "server_error"
                ),
            )
        return _reply(500, _error_body(_SERVER_ERROR, "server_error"))
