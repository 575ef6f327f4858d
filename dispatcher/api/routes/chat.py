"""``POST /v1/chat/completions``: the OpenAI-compatible face of a turn.

``model`` picks the route: ``auto`` lets the router decide, a tier name forces the tier,
a model id of the policy forces that model alone. The answer is OpenAI's: chunks with the
model that actually answered, or one ``chat.completion``; errors in OpenAI's shape.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from dispatcher.api.deps import RuntimeDep, Tenant, read_json, validate
from dispatcher.api.errors import ApiError, turn_error_status
from dispatcher.api.openai_compat import (
    CONTENT_EVENTS,
    DONE,
    ChunkWriter,
    answering_model,
    error_chunk,
)
from dispatcher.api.relay import Event
from dispatcher.api.runtime import Runtime
from dispatcher.api.schemas import ChatRequest
from dispatcher.api.service import Started, TurnInput, release, start_turn
from dispatcher.api.sse import unless_disconnected
from dispatcher.api.streams import Observer, collect_whole, event_stream, headers
from dispatcher.routing.text import content_text

router = APIRouter()

AUTO = "auto"


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, rt: RuntimeDep, tenant: Tenant) -> Response:
    received_at = time.time()
    body = validate(ChatRequest, await read_json(request))
    messages = [m.model_dump(exclude_unset=True) for m in body.messages]
    # The turn is the last user message; after a tool call the conversation ends with the
    # tool's result, and the turn to route is still the user's request that led to it.
    user_at = next((i for i in range(len(messages) - 1, -1, -1)
                    if messages[i]["role"] == "user"), None)
    if user_at is None:
        raise ApiError(422, "invalid_request", "messages: there is no user message",
                       param="messages")
    tier, model = _target(rt, body.model)
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    params: dict[str, Any] = {
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "temperature": body.temperature,
        "stop": stop or None,
        "tools": body.tools or None,
        "tool_choice": body.tool_choice,
    }
    turn = TurnInput(
        tenant=tenant,
        endpoint="chat",
        text=content_text(messages[user_at].get("content")),
        route_history=messages[:user_at] + messages[user_at + 1:],
        job_messages=messages,
        session_id=body.session_id or body.user,
        state=body.state,
        tier=tier,
        model=model,
        params=params,
        speculative=body.speculative,
        received_at=received_at,
    )
    started = await start_turn(rt, turn)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream:
        return await _streamed(request, rt, started, include_usage)
    return await _whole(request, rt, started)


def _target(rt: Runtime, name: str) -> tuple[str | None, str | None]:
    """(forced tier, forced model) for the request's ``model``; 404 when unknown."""
    policy = rt.policies.current.policy
    if name == AUTO:
        return None, None
    if name in policy.tiers:
        return name, None
    if name in policy.models:
        return None, name
    raise ApiError(
        404, "model_not_found",
        f"The model `{name}` does not exist; use `auto`, a tier ({', '.join(policy.tiers)}) "
        "or a model id listed by GET /v1/models",
        param="model",
    )


async def _whole(request: Request, rt: Runtime, started: Started) -> Response:
    created = int(time.time())
    collected = await collect_whole(request.receive, rt, started)
    if collected is None:
        return Response(status_code=499)
    hdrs = headers(started, collected.model or None)
    if collected.failed:
        raise _turn_failed(collected.terminal, hdrs)
    body = collected.completion(started.turn_id, created)
    return Response(orjson.dumps(body), 200, headers=hdrs, media_type="application/json")


async def _streamed(
    request: Request, rt: Runtime, started: Started, include_usage: bool
) -> Response:
    # Wait for the first token (or the end) before answering, so that the response
    # headers and the first chunk name the model that answers, and a turn that fails
    # before its first token is an HTTP error the SDK raises, not a broken stream.
    observer = Observer(rt, started)
    events = aiter(started.relay)
    first: list[Event] = []

    async def until_content() -> None:
        async for event in events:
            if event is None:
                continue
            observer.see(event)
            first.append(event)
            if event.type in CONTENT_EVENTS or event.terminal:
                return

    finished, _ = await unless_disconnected(
        request.receive, until_content(),
        lambda: release(rt, started, disconnected=True, grace_s=0),
    )
    if not finished:
        return Response(status_code=499)
    model = answering_model(first, started.model)
    hdrs = headers(started, model)
    if first and first[-1].type == "error":
        await release(rt, started, disconnected=False, grace_s=0)
        raise _turn_failed(first[-1], hdrs)
    writer = ChunkWriter(started.turn_id, model, include_usage)
    return event_stream(rt, started, _chunks(writer, observer, first, events), hdrs)


async def _chunks(
    writer: ChunkWriter, observer: Observer, first: list[Event],
    events: AsyncIterator[Event | None],
) -> AsyncIterator[bytes]:
    yield writer.role()
    for event in first:
        chunk, end = _encode(writer, event)
        if chunk:
            yield chunk
        if end:
            return
    async for later in events:
        if later is None:
            continue
        observer.see(later)
        chunk, end = _encode(writer, later)
        if chunk:
            yield chunk
        if end:
            return


def _encode(writer: ChunkWriter, event: Event) -> tuple[bytes, bool]:
    """The bytes for one event, and whether the stream ends with it."""
    if event.type == "done":
        out = writer.finish(event.data)
        if writer.include_usage:
            out += writer.usage(event.data)
        return out + DONE, True
    if event.type == "error":
        return error_chunk(event.data) + DONE, True
    if event.type == "failover" and event.data.get("to_model"):
        writer.model = str(event.data["to_model"])
    return writer.event(event) or b"", False


def _turn_failed(terminal: Event | None, hdrs: dict[str, str]) -> ApiError:
    data = terminal.data if terminal is not None else {}
    code = str(data.get("code") or "error")
    # The turn has had its chance (failover, deadline): the SDK's automatic retry of a
    # 5xx would only start it again, late; a voice bot wants to know now.
    return ApiError(turn_error_status(code), code,
                    str(data.get("message") or "the turn failed"),
                    headers={**hdrs, "x-should-retry": "false"})
