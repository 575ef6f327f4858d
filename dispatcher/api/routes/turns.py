"""``/v1/turns``: start a turn (streamed or not), follow one, cancel one."""

from __future__ import annotations

import re
import time

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from dispatcher.api.deps import RuntimeDep, Tenant, last_event_id, read_json, validate
from dispatcher.api.errors import ApiError, turn_error_status
from dispatcher.api.schemas import TurnRequest
from dispatcher.api.service import Started, TurnInput, cancel, resume_turn, start_turn
from dispatcher.api.streams import collect_whole, event_stream, headers, native_events

router = APIRouter()

_TURN_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@router.post("/v1/turns")
async def post_turn(request: Request, rt: RuntimeDep, tenant: Tenant) -> Response:
    """Route and enqueue one user turn; stream its events (default) or answer once."""
    received_at = time.time()
    body = validate(TurnRequest, await read_json(request))
    history = [m.model_dump(exclude_unset=True) for m in body.messages]
    turn = TurnInput(
        tenant=tenant,
        endpoint="turns",
        text=body.text,
        route_history=history,
        job_messages=[*history, {"role": "user", "content": body.text}],
        session_id=body.session_id,
        state=body.state,
        tier=body.tier,
        speculative=body.speculative,
        turn_id=body.turn_id,
        after=last_event_id(request) if body.turn_id else -1,
        received_at=received_at,
    )
    started = await start_turn(rt, turn)
    if body.stream:
        return event_stream(rt, started, native_events(rt, started), headers(started))
    return await _whole(request, rt, started)


@router.get("/v1/turns/{turn_id}/events")
async def turn_events(turn_id: str, request: Request, rt: RuntimeDep, tenant: Tenant) -> Response:
    """Follow a turn: replay after ``Last-Event-ID`` (or from the start), then live."""
    _check_id(turn_id)
    started = await resume_turn(rt, tenant, turn_id, last_event_id(request))
    return event_stream(rt, started, native_events(rt, started), headers(started))


@router.delete("/v1/turns/{turn_id}", status_code=202)
async def delete_turn(turn_id: str, rt: RuntimeDep, tenant: Tenant) -> Response:
    """Cancel a turn: the worker stops the provider call; the stream ends with its error."""
    _check_id(turn_id)
    await cancel(rt, tenant, turn_id)
    body = {"turn_id": turn_id, "status": "cancelling"}
    return Response(orjson.dumps(body), 202, media_type="application/json")


async def _whole(request: Request, rt: RuntimeDep, started: Started) -> Response:
    collected = await collect_whole(request.receive, rt, started)
    if collected is None:
        return Response(status_code=499)
    body = collected.turn_body()
    status = turn_error_status(body["error"]["code"]) if collected.failed else 200
    return Response(orjson.dumps(body), status, headers=headers(started, collected.model),
                    media_type="application/json")


def _check_id(turn_id: str) -> None:
    if not _TURN_ID.match(turn_id):
        raise ApiError(404, "turn_not_found", f"no turn {turn_id!r}")
