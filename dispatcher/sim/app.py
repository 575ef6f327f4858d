"""The provider simulator app: OpenAI, Anthropic and Gemini formats on one port.

Routes::

    POST /v1/chat/completions                       OpenAI (also /openai/v1/... for
    POST /openai/v1/chat/completions                 Groq-style base URLs, and Gemini's
    POST /v1beta/openai/chat/completions             OpenAI-compatible base URL)
    POST /v1/messages                               Anthropic
    POST /v1beta/models/{model}:streamGenerateContent   Gemini (also /v1/models/...)
    POST /v1beta/models/{model}:generateContent
    /admin/...  and  GET /health                    see :mod:`dispatcher.sim.admin`

A request is authenticated and parsed by its format, then the fault in force (the
``x-sim-fault`` header, else the model's admin fault, else the ``"*"`` one) decides
whether it gets an error, a hang, or an answer paced by the model's latency settings.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dispatcher.sim.admin import Endpoint, admin_routes, json_reply
from dispatcher.sim.engine import (
    GuardedResponse,
    complete_writer,
    hang_writer,
    quiet_cut_logs,
    stream_writer,
)
from dispatcher.sim.formats.anthropic import AnthropicFormat
from dispatcher.sim.formats.gemini import GeminiFormat
from dispatcher.sim.formats.openai import OpenAIFormat
from dispatcher.sim.state import Fault, SimDefaults, SimState, parse_fault
from dispatcher.sim.wire import ApiError, ErrorKind, ProviderFormat, plan_answer

#: Faults answered at once with an error reply, and the reply each gets.
ERROR_FAULTS: dict[str, ErrorKind] = {
    "http_429": "rate_limited",
    "http_500": "server_error",
    "http_503": "unavailable",
    "context_too_long": "context_too_long",
}


def _request_fault(request: Request, state: SimState, model: str) -> Fault | Response:
    """The fault for this request: the ``x-sim-fault`` header wins over admin faults.

    ``x-sim-retry-after`` (seconds, default 1) goes with a header ``http_429``.
    """
    header = request.headers.get("x-sim-fault")
    if header is None:
        return state.fault_for(model)
    try:
        fault = parse_fault(header)
    except ValueError as exc:
        return json_reply({"detail": f"x-sim-fault: {exc}"}, 422)
    text = request.headers.get("x-sim-retry-after", "1")
    try:
        retry_after = float(text)
    except ValueError:
        retry_after = -1.0
    if not 0 <= retry_after < math.inf:
        return json_reply({"detail": f"x-sim-retry-after: {text!r} is not a number >= 0"}, 422)
    return replace(fault, retry_after=retry_after)


def provider_endpoint(fmt: ProviderFormat, state: SimState) -> Endpoint:
    """Return the endpoint that serves one provider format."""

    async def endpoint(request: Request) -> Response:
        start = asyncio.get_running_loop().time()
        denied = fmt.authenticate(request)
        if denied is not None:
            return denied
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        try:
            call = fmt.parse(request, body)
        except ApiError as exc:
            return exc.reply
        fault = _request_fault(request, state, call.model)
        if isinstance(fault, Response):
            return fault
        record = state.begin(call.model)
        if fault.kind in ERROR_FAULTS:
            record.finish("failed")
            return fmt.error(ERROR_FAULTS[fault.kind], call, fault)
        if fault.kind == "hang":
            return GuardedResponse(hang_writer(record), record)
        latency = state.latency_for(call.model)
        answer = plan_answer(call, latency, fault)
        ttft_s = (fault.arg if fault.kind == "slow_first_token" else latency.ttft_ms) / 1000
        itl_s = latency.itl_ms / 1000
        if call.stream:
            writer = stream_writer(
                fmt.script(call, answer),
                start=start,
                ttft_s=ttft_s,
                itl_s=itl_s,
                fault=fault,
                record=record,
                input_tokens=call.input_tokens,
            )
        else:
            writer = complete_writer(
                fmt.body(call, answer),
                start=start,
                delay_s=ttft_s + itl_s * max(len(answer.units) - 1, 0),
                fault=fault,
                error=fmt.error("overloaded", call, fault),
                record=record,
                input_tokens=call.input_tokens,
                output_tokens=len(answer.units),
            )
        return GuardedResponse(writer, record)

    return endpoint


def create_sim_app(defaults: SimDefaults | None = None) -> Starlette:
    """Build the simulator app; its state is ``app.state.sim`` (a :class:`SimState`)."""
    state = SimState(defaults or SimDefaults())
    quiet_cut_logs()
    openai = provider_endpoint(OpenAIFormat(), state)
    anthropic = provider_endpoint(AnthropicFormat(), state)
    gemini = provider_endpoint(GeminiFormat(), state)
    routes = [
        Route("/v1/chat/completions", openai, methods=["POST"]),
        Route("/openai/v1/chat/completions", openai, methods=["POST"]),
        Route("/v1beta/openai/chat/completions", openai, methods=["POST"]),
        Route("/v1/messages", anthropic, methods=["POST"]),
        Route("/v1beta/models/{target}", gemini, methods=["POST"]),
        Route("/v1/models/{target}", gemini, methods=["POST"]),
        *admin_routes(state),
    ]
    app = Starlette(routes=routes)
    app.state.sim = state
    return app
