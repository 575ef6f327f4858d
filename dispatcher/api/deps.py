"""Request dependencies: the process runtime, the caller's tenant, a validated body."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from dispatcher.api.errors import ApiError
from dispatcher.api.runtime import Runtime
from dispatcher.auth import tenant_for

M = TypeVar("M", bound=BaseModel)


async def runtime(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
    # thread hop and a GIL hand-off (up to the 5 ms switch interval) on every request
    rt: Runtime = request.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


async def tenant(request: Request, rt: RuntimeDep) -> str:
    """The tenant of the request's ``Authorization: Bearer`` key; 401 without a good one."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(
            401, "missing_api_key",
            "no API key: send the header Authorization: Bearer <key>",
            headers={"www-authenticate": "Bearer"},
        )
    found = await tenant_for(rt.fast, key)
    if found is None:
        raise ApiError(401, "invalid_api_key", "the API key is not valid",
                       headers={"www-authenticate": "Bearer"})
    return found


Tenant = Annotated[str, Depends(tenant)]


async def read_json(request: Request) -> Any:
    """The body as JSON; 400 when it is not JSON (413 comes from the size limit first)."""
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model``; 422 naming each bad field."""
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request",
                       f"the request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe(exc),
                       param=_first_field(exc)) from None


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:6]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = "required" if err["type"] == "missing" else err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _first_field(exc: ValidationError) -> str | None:
    errors = exc.errors()
    if errors and errors[0]["loc"]:
        return str(errors[0]["loc"][0])
    return None


def last_event_id(request: Request) -> int:
    """The ``Last-Event-ID`` header as an int, -1 without one; 400 when it is not a seq."""
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return -1
    try:
        value = int(raw.strip())
    except ValueError:
        raise ApiError(400, "invalid_last_event_id",
                       f"Last-Event-ID must be an event id (an integer), not {raw!r}") from None
    if value < -1:
        raise ApiError(400, "invalid_last_event_id", f"Last-Event-ID {value} is negative")
    return value
