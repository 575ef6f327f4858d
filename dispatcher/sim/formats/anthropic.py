"""Anthropic Messages: ``POST /v1/messages``, streamed and whole.

Stream: ``message_start`` (the message with empty content and ``usage.input_tokens``),
``content_block_start`` (a ``text`` block, or a ``tool_use`` block with ``input: {}``),
``ping``, ``content_block_delta`` events (``text_delta``, or ``input_json_delta`` whose
first ``partial_json`` is empty), ``content_block_stop``, ``message_delta`` (stop_reason
and cumulative ``usage.output_tokens``), ``message_stop``. A refusal has no content block
and ends with stop_reason "refusal". Requests need ``x-api-key``, ``anthropic-version``
and ``max_tokens``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
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
    random_id,
    text_pieces_tokens,
)

CONTEXT_WINDOW = 200_000
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def _reply(status: int, error_type: str, message: str, extra: Headers | None = None) -> Reply:
    request_id = "req_011" + random_id(21)
    body = orjson.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        }
    )
    return Reply(status, body, [(b"request-id", request_id.encode()), *(extra or [])])


def _invalid(message: str) -> ApiError:
    return ApiError(_reply(400, "invalid_request_error", message))


def _event(name: str, doc: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"


def _texts(content: Any) -> tuple[list[str], list[str], bool]:
    """Return (own text blocks, every text incl. tool results and inputs, has tool_result)."""
    if isinstance(content, str):
        return [content], [content], False
    own: list[str] = []
    every: list[str] = []
    has_result = False
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            own.append(block["text"])
            every.append(block["text"])
        elif kind == "tool_result":
            has_result = True
            every.extend(_texts(block.get("content") or [])[1])
        elif kind == "tool_use":
            every.append(orjson.dumps(block.get("input") or {}).decode())
    return own, every, has_result


def _tools(body: dict[str, Any]) -> ParsedTools:
    parsed = ParsedTools()
    for tool in body.get("tools") or []:
        # Server tools (web search...) have a versioned "type" and no input_schema.
        if isinstance(tool, dict) and isinstance(tool.get("name"), str) and "input_schema" in tool:
            parsed.tools.append(ToolSpec(tool["name"], tool.get("input_schema") or {}))
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "none":
        parsed.disabled = True
    elif choice.get("type") == "tool":
        parsed.forced = choice.get("name")
        if parsed.pick() is None:
            raise _invalid(f"tool_choice: tool '{parsed.forced}' not found in tools")
    return parsed


def _usage(call: SimCall, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": call.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


class AnthropicFormat:
    """The Anthropic Messages wire format."""

    name = "anthropic"

    def authenticate(self, request: Request) -> Reply | None:
        """Require ``x-api-key`` (not starting with "bad") and ``anthropic-version``."""
        key = request.headers.get("x-api-key", "").strip()
        if not key:
            return _reply(401, "authentication_error", "x-api-key header is required")
        if key.startswith("bad"):
            return _reply(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _reply(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    def parse(self, request: Request, body: Any) -> SimCall:
        """Read model, system, messages, max_tokens, stream and tools."""
        if not isinstance(body, dict):
            raise _invalid("Input should be a valid dictionary")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("model: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise _invalid("messages: Field required")
        if not messages:
            raise _invalid("messages: at least one message is required")
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _invalid("max_tokens: Field required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
        pieces = _texts(body.get("system") or [])[1]
        prompt = ""
        has_result = False
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise _invalid("messages: each message needs a role of 'user' or 'assistant'")
            own, every, has_result = _texts(message.get("content"))
            pieces.extend(every)
            if message["role"] == "user" and own:
                prompt = "\n".join(own)
        last_is_user = messages[-1]["role"] == "user" and not has_result
        return SimCall(
            model=model,
            prompt=prompt,
            input_tokens=text_pieces_tokens(pieces),
            stream=body.get("stream") is True,
            max_tokens=max_tokens,
            tool=_tools(body).pick() if last_is_user else None,
        )

    def _message(
        self,
        call: SimCall,
        message_id: str,
        content: list[Any],
        stop: str | None,
        output_tokens: int,
    ) -> dict[str, Any]:
        usage = {**_usage(call, output_tokens), "service_tier": "standard"}
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    def script(self, call: SimCall, answer: Answer) -> Script:
        """Render the event sequence described in the module docstring."""
        message = self._message(call, "msg_01" + random_id(22), [], None, 1)
        head = [_event("message_start", {"type": "message_start", "message": message})]
        if answer.tool is not None:
            block = {
                "type": "tool_use",
                "id": "toolu_01" + answer.tool_id[:22],
                "name": answer.tool.name,
                "input": {},
            }
            delta = {"type": "input_json_delta", "partial_json": HOLE}
        else:
            block = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": HOLE}
        has_block = answer.finish != "content_filter"
        if has_block:
            head.append(
                _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": block},
                )
            )
        head.append(_PING)
        if answer.tool is not None:
            # The real API opens every tool input with an empty fragment.
            head.append(
                _event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": ""},
                    },
                )
            )
        token = Template(
            b"event: content_block_delta\ndata: ",
            {"type": "content_block_delta", "index": 0, "delta": delta},
            b"\n\n",
        )
        units: list[tuple[bytes, ...]] = [(token.fill(u),) for u in answer.units]
        tail = [_event("content_block_stop", {"type": "content_block_stop", "index": 0})]
        if not has_block:
            tail = []
        tail.append(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": STOP_REASONS[answer.finish], "stop_sequence": None},
                    "usage": _usage(call, len(answer.units)),
                },
            )
        )
        tail.append(_event("message_stop", {"type": "message_stop"}))
        error = _event(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
        headers: Headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"request-id", ("req_011" + random_id(21)).encode()),
        ]
        return Script(headers, head, units, tail, error)

    def body(self, call: SimCall, answer: Answer) -> Reply:
        """Render a ``message`` object with its usage."""
        content: list[Any] = []
        if answer.tool is not None:
            try:
                tool_input = orjson.loads(answer.arguments)
            except orjson.JSONDecodeError:
                tool_input = {}  # capped by max_tokens in the middle of the JSON
            content.append(
                {
                    "type": "tool_use",
                    "id": "toolu_01" + answer.tool_id[:22],
                    "name": answer.tool.name,
                    "input": tool_input,
                }
            )
        elif answer.finish != "content_filter":
            content.append({"type": "text", "text": answer.text})
        doc = self._message(
            call, "msg_01" + random_id(22), content, STOP_REASONS[answer.finish], len(answer.units)
        )
        return Reply(
            200, orjson.dumps(doc), [(b"request-id", ("req_011" + random_id(21)).encode())]
        )

    def error(self, kind: ErrorKind, call: SimCall, fault: Fault) -> Reply:
        """Render 429 (retry-after, anthropic-ratelimit-*), 500, 503, 529 or prompt too long."""
        if kind == "rate_limited":
            wait = fault.retry_after
            reset = (datetime.now(UTC) + timedelta(seconds=wait)).isoformat(timespec="seconds")
            reset = reset.replace("+00:00", "Z")
            headers: Headers = [(b"retry-after", str(math.ceil(wait)).encode())]
            for limit, size in (
                ("requests", b"50"),
                ("tokens", b"100000"),
                ("input-tokens", b"80000"),
                ("output-tokens", b"20000"),
            ):
                prefix = f"anthropic-ratelimit-{limit}-".encode()
                headers += [
                    (prefix + b"limit", size),
                    (prefix + b"remaining", b"0" if limit == "requests" else size),
                    (prefix + b"reset", reset.encode()),
                ]
            return _reply(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 "
                "requests per minute. For details, refer to: "
                "https://docs.claude.com/en/api/rate-limits. You can see the response "
                "headers for current usage. Please reduce the prompt length or the "
                "maximum tokens requested, or try again later.",
                headers,
            )
        if kind == "context_too_long":
            total = CONTEXT_WINDOW + call.input_tokens
            return _reply(
                400,
                "invalid_request_error",
                f"prompt is too long: {total} tokens > {CONTEXT_WINDOW} maximum",
            )
        if kind == "unavailable":
            return _reply(503, "overloaded_error", "Overloaded")
        if kind == "overloaded":
            return _reply(529, "overloaded_error", "Overloaded")
        return _reply(500, "api_error", "Internal server error")
