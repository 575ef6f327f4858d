"""Gemini generateContent: ``POST /v1beta/models/{model}:streamGenerateContent`` and
``:generateContent``.

Every chunk is a whole ``GenerateContentResponse``: ``candidates[0].content.parts``
(``text``, or one complete ``functionCall`` ``{name, args}``: Gemini does not stream
arguments), cumulative ``usageMetadata`` and ``modelVersion``; the last chunk carries
``finishReason`` ("STOP", "MAX_TOKENS", or "SAFETY" with ``safetyRatings`` and no
content). With ``?alt=sse`` chunks are ``data: {...}`` events separated by CRLF CRLF, as
Google sends them; without it the body is one JSON array streamed element by element.
The key comes in ``x-goog-api-key`` or ``?key=``. Field names are accepted in lowerCamel
and snake_case, as Google's JSON mapping does.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from dispatcher.sim.state import Fault
from dispatcher.sim.wire import (
    Answer,
    ApiError,
    ErrorKind,
    Headers,
    ParsedTools,
    Reply,
    Script,
    SimCall,
    ToolSpec,
    random_id,
    text_pieces_tokens,
)

CONTEXT_WINDOW = 1_048_576
FINISH_REASONS = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "tool_calls": "STOP",
    "content_filter": "SAFETY",
}
METHODS = ("generateContent", "streamGenerateContent")
_JSON = b"application/json; charset=UTF-8"
_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_requests"
_OVERLOADED = "The model is overloaded. Please try again later."
_SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"},
]


def _get(doc: Any, camel: str, snake: str) -> Any:
    if not isinstance(doc, dict):
        return None
    return doc[camel] if camel in doc else doc.get(snake)


def _error_doc(code: int, status: str, message: str, details: list[Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


def _reply(code: int, status: str, message: str, details: list[Any] | None = None) -> Reply:
    return Reply(code, _error_doc(code, status, message, details), content_type=_JSON)


def _invalid(message: str) -> ApiError:
    return ApiError(_reply(400, "INVALID_ARGUMENT", message))


def split_target(target: str) -> tuple[str, str]:
    """Split a path's ``{model}:{method}`` (a leading "models/" is dropped)."""
    model, _, method = target.rpartition(":")
    return model.removeprefix("models/"), method


def _parts(content: Any) -> tuple[list[str], list[str], bool]:
    """Return (text parts, every text incl. function calls/results, has functionResponse)."""
    own: list[str] = []
    every: list[str] = []
    has_response = False
    for part in _get(content, "parts", "parts") or []:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            own.append(part["text"])
            every.append(part["text"])
        call = _get(part, "functionCall", "function_call")
        if isinstance(call, dict):
            every.append(orjson.dumps(call.get("args") or {}).decode())
        response = _get(part, "functionResponse", "function_response")
        if isinstance(response, dict):
            has_response = True
            every.append(orjson.dumps(response.get("response") or {}).decode())
    return own, every, has_response


def _tools(body: dict[str, Any]) -> ParsedTools:
    parsed = ParsedTools()
    for tool in body.get("tools") or []:
        for decl in _get(tool, "functionDeclarations", "function_declarations") or []:
            if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                schema = decl.get("parameters")
                if schema is None:
                    schema = _get(decl, "parametersJsonSchema", "parameters_json_schema")
                parsed.tools.append(ToolSpec(decl["name"], schema or {}))
    config = _get(
        _get(body, "toolConfig", "tool_config"), "functionCallingConfig", "function_calling_config"
    )
    if _get(config, "mode", "mode") == "NONE":
        parsed.disabled = True
    allowed = _get(config, "allowedFunctionNames", "allowed_function_names")
    if isinstance(allowed, list) and allowed:
        parsed.forced = allowed[0]
    return parsed


class GeminiFormat:
    """The Gemini (Google AI) generateContent wire format."""

    name = "gemini"

    def authenticate(self, request: Request) -> Reply | None:
        """Require a key; a missing key is 403 and a bad one 400, as Google answers."""
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key") or ""
        if not key.strip():
            return _reply(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity "
                "to call this API.",
            )
        if key.startswith("bad"):
            message = "API key not valid. Please pass a valid API key."
            return _reply(
                400,
                "INVALID_ARGUMENT",
                message,
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                        "locale": "en-US",
                        "message": message,
                    },
                ],
            )
        return None

    def parse(self, request: Request, body: Any) -> SimCall:
        """Read the model and method from the path, then contents, config and tools."""
        model, method = split_target(request.path_params["target"])
        if method not in METHODS or not model:
            raise ApiError(_reply(404, "NOT_FOUND", f"Method not found: {method or '(none)'}."))
        if not isinstance(body, dict):
            raise _invalid("Invalid JSON payload received. Expected an object.")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _invalid("* GenerateContentRequest.contents: contents is not specified\n")
        pieces = _parts(_get(body, "systemInstruction", "system_instruction"))[1]
        prompt = ""
        has_response = False
        for content in contents:
            own, every, has_response = _parts(content)
            pieces.extend(every)
            if _get(content, "role", "role") in (None, "", "user") and own:
                prompt = "\n".join(own)
        last_role = _get(contents[-1], "role", "role")
        last_is_user = last_role in (None, "", "user") and not has_response
        config = _get(body, "generationConfig", "generation_config")
        max_tokens = _get(config, "maxOutputTokens", "max_output_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            max_tokens = None  # Google treats a non-positive limit as "the model's default"
        return SimCall(
            model=model,
            prompt=prompt,
            input_tokens=text_pieces_tokens(pieces),
            stream=method == "streamGenerateContent",
            max_tokens=max_tokens,
            tool=_tools(body).pick() if last_is_user else None,
            sse=request.query_params.get("alt") == "sse",
        )

    def _usage(self, call: SimCall, out: int, *, final: bool = False) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": call.input_tokens}
        if out or not final:
            usage["candidatesTokenCount"] = out
        usage["totalTokenCount"] = call.input_tokens + out
        if final:
            usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": call.input_tokens}]
        return usage

    def _response(
        self, call: SimCall, response_id: str, parts: list[Any] | None, finish: str | None, out: int
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {}
        if parts is not None:
            candidate["content"] = {"parts": parts, "role": "model"}
        if finish is not None:
            candidate["finishReason"] = finish
        if finish == "SAFETY":
            candidate["safetyRatings"] = _SAFETY_RATINGS
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(call, out, final=finish is not None),
            "modelVersion": call.model,
            "responseId": response_id,
        }

    def _parts(self, answer: Answer) -> list[Any] | None:
        if answer.finish == "content_filter":
            return None
        if answer.tool is not None:
            if answer.finish == "length":
                return [{"text": ""}]  # the call did not fit: Gemini sends no functionCall
            args = orjson.loads(answer.arguments)
            return [{"functionCall": {"name": answer.tool.name, "args": args}}]
        return [{"text": answer.text}]

    def script(self, call: SimCall, answer: Answer) -> Script:
        """Render the chunks described in the module docstring."""
        response_id = random_id(22)
        finish = FINISH_REASONS[answer.finish]
        if call.sse:

            def frame(doc: Any, *, last: bool = False) -> bytes:
                return b"data: " + orjson.dumps(doc) + b"\r\n\r\n"

            head: list[bytes] = []
            media = b"text/event-stream"
        else:
            # A JSON array: each element is followed by ",\r\n", the last by "]", so a cut
            # leaves the array open and an error after N chunks still closes it.
            def frame(doc: Any, *, last: bool = False) -> bytes:
                return orjson.dumps(doc) + (b"]" if last else b",\r\n")

            head = [b"["]
            media = _JSON
        n = len(answer.units)
        units: list[tuple[bytes, ...]] = []
        open_last: tuple[bytes, ...] | None = None
        tail: list[bytes] = []
        if n == 0:
            tail = [
                frame(self._response(call, response_id, self._parts(answer), finish, 0), last=True)
            ]
        elif answer.tool is not None:
            # The whole call goes out once all its tokens are generated.
            units = [()] * (n - 1)
            units.append(
                (
                    frame(
                        self._response(call, response_id, self._parts(answer), finish, n), last=True
                    ),
                )
            )
            open_last = ()
        else:
            for i, token in enumerate(answer.units):
                is_last = i == n - 1
                doc = self._response(
                    call, response_id, [{"text": token}], finish if is_last else None, i + 1
                )
                units.append((frame(doc, last=is_last),))
            doc = self._response(call, response_id, [{"text": answer.units[-1]}], None, n)
            open_last = (frame(doc),)
        error = frame(
            {"error": {"code": 503, "message": _OVERLOADED, "status": "UNAVAILABLE"}}, last=True
        )
        headers: Headers = [(b"content-type", media), (b"cache-control", b"no-cache")]
        return Script(headers, head, units, tail, error, open_last)

    def body(self, call: SimCall, answer: Answer) -> Reply:
        """Render one ``GenerateContentResponse`` with the whole answer."""
        doc = self._response(
            call,
            random_id(22),
            self._parts(answer),
            FINISH_REASONS[answer.finish],
            len(answer.units),
        )
        return Reply(200, orjson.dumps(doc), content_type=_JSON)

    def error(self, kind: ErrorKind, call: SimCall, fault: Fault) -> Reply:
        """Render 429 (RetryInfo in the body, no header, as Google does), 500, 503, too long."""
        if kind == "rate_limited":
            return _reply(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing "
                "details. For more information on this error, head to: "
                "https://ai.google.dev/gemini-api/docs/rate-limits.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": _QUOTA_METRIC,
                                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                                "quotaDimensions": {"location": "global", "model": call.model},
                                "quotaValue": "60",
                            }
                        ],
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.Help",
                        "links": [
                            {
                                "description": "Learn more about Gemini API quotas",
                                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                            }
                        ],
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{fault.retry_after:g}s",
                    },
                ],
            )
        if kind == "context_too_long":
            total = CONTEXT_WINDOW + call.input_tokens
            return _reply(
                400,
                "INVALID_ARGUMENT",
                f"The input token count ({total}) exceeds the maximum number of tokens "
                f"allowed ({CONTEXT_WINDOW}).",
            )
        if kind in ("unavailable", "overloaded"):
            return _reply(503, "UNAVAILABLE", _OVERLOADED)
        return _reply(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting",
        )
