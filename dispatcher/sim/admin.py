"""The simulator's admin interface: a contract used by tests, the demo and benchmarks.

``POST /admin/faults {"model", "fault", "retry_after"}``, ``GET /admin/faults``,
``POST /admin/latency {"model", "ttft_ms", "itl_ms", "tokens"}``, ``GET
/admin/latency?model=ID`` (the resolved settings; "*" by default), ``GET /admin/stats``,
``POST /admin/reset``. Bodies are checked strictly: a bad or unknown field gets 422 with
``{"detail": "..."}`` naming the field and the value.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dispatcher.sim.state import ANY_MODEL, SimState, parse_fault
from dispatcher.sim.wire import Reply

Endpoint = Callable[[Request], Awaitable[Response]]


class AdminError(Exception):
    """Raised when an admin request body is invalid; the message names the problem."""


def json_reply(doc: Any, status: int = 200) -> Reply:
    """Return ``doc`` as a JSON response."""
    return Reply(status, orjson.dumps(doc))


async def _object(request: Request, allowed: set[str]) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise AdminError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise AdminError(f"the body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise AdminError(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise AdminError(f"'model' must be a model id or '*', got {model!r}")
    return model


def _number(
    body: dict[str, Any], name: str, *, integer: bool = False, minimum: float = 0
) -> float | int | None:
    value = body.get(name)
    if value is None:
        return None
    wrong_type = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    if wrong_type or not minimum <= value < math.inf:
        kind = "a whole number" if integer else "a number"
        raise AdminError(f"'{name}' must be {kind} >= {minimum:g}, got {value!r}")
    return float(value) if not integer else int(value)


def admin_routes(state: SimState) -> list[Route]:
    """Return the admin routes bound to ``state``."""

    async def set_fault(request: Request) -> Response:
        body = await _object(request, {"model", "fault", "retry_after"})
        model = _model(body)
        text = body.get("fault")
        if not isinstance(text, str):
            raise AdminError(f"'fault' must be a string, got {text!r}")
        retry_after = _number(body, "retry_after")
        try:
            fault = parse_fault(text, retry_after=1.0 if retry_after is None else retry_after)
        except ValueError as exc:
            raise AdminError(str(exc)) from None
        state.set_fault(model, fault)
        return json_reply({"model": model, "fault": str(fault), "retry_after": fault.retry_after})

    async def get_faults(request: Request) -> Response:
        return json_reply(
            {
                "faults": {
                    m: {"fault": str(f), "retry_after": f.retry_after}
                    for m, f in sorted(state.faults.items())
                }
            }
        )

    async def set_latency(request: Request) -> Response:
        body = await _object(request, {"model", "ttft_ms", "itl_ms", "tokens"})
        model = _model(body)
        fields = {
            "ttft_ms": _number(body, "ttft_ms"),
            "itl_ms": _number(body, "itl_ms"),
            "tokens": _number(body, "tokens", integer=True, minimum=1),
        }
        state.set_latency(model, {k: v for k, v in fields.items() if v is not None})
        return _latency_reply(model)

    async def get_latency(request: Request) -> Response:
        return _latency_reply(request.query_params.get("model", ANY_MODEL))

    def _latency_reply(model: str) -> Response:
        latency = state.latency_for(model)
        return json_reply(
            {
                "model": model,
                "ttft_ms": latency.ttft_ms,
                "itl_ms": latency.itl_ms,
                "tokens": latency.tokens,
            }
        )

    async def get_stats(request: Request) -> Response:
        return json_reply(state.stats_json())

    async def reset(request: Request) -> Response:
        state.reset()
        return json_reply({"reset": True})

    async def health(request: Request) -> Response:
        return json_reply({"status": "ok"})

    def checked(endpoint: Endpoint) -> Endpoint:
        async def run(request: Request) -> Response:
            try:
                return await endpoint(request)
            except AdminError as exc:
                return json_reply({"detail": str(exc)}, 422)

        return run

    return [
        Route("/admin/faults", checked(set_fault), methods=["POST"]),
        Route("/admin/faults", get_faults, methods=["GET"]),
        Route("/admin/latency", checked(set_latency), methods=["POST"]),
        Route("/admin/latency", get_latency, methods=["GET"]),
        Route("/admin/stats", get_stats, methods=["GET"]),
        Route("/admin/reset", reset, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
