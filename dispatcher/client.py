"""A small client for the ingress's native ``/v1/turns`` SSE stream (demo, bench, tests)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import orjson

from dispatcher.providers.sse import aiter_sse


@dataclass
class SseEvent:
    event: str
    id: str | None
    data: dict[str, Any]


async def iter_sse(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Server-sent events of a streamed response, data decoded as JSON."""
    async for ev in aiter_sse(response.aiter_bytes()):
        yield SseEvent(ev.event, ev.id, orjson.loads(ev.data))


@dataclass
class TurnResult:
    """What one streamed turn gave back, as the client saw it."""

    status: int
    events: list[SseEvent] = field(default_factory=list)
    ttft_ms: float | None = None  # first token, measured at the client
    total_ms: float = 0.0

    @property
    def route(self) -> dict[str, Any]:
        return next((e.data for e in self.events if e.event == "route"), {})

    @property
    def terminal(self) -> SseEvent | None:
        return next((e for e in self.events if e.event in ("done", "error")), None)

    @property
    def text(self) -> str:
        return "".join(e.data.get("text", "") for e in self.events if e.event == "token")

    @property
    def cost(self) -> Decimal:
        t = self.terminal
        return Decimal(str(t.data.get("cost_usd", "0"))) if t else Decimal(0)

    @property
    def baseline_cost(self) -> Decimal:
        t = self.terminal
        return Decimal(str(t.data.get("baseline_cost_usd", "0"))) if t else Decimal(0)


async def stream_turn(
    client: httpx.AsyncClient,
    base_url: str,
    api_key: str,
    body: dict[str, Any],
    *,
    timeout: float = 120.0,
) -> TurnResult:
    """POST one turn and read its SSE stream to the terminal event."""
    t0 = time.perf_counter()
    headers = {"authorization": f"Bearer {api_key}", "accept": "text/event-stream"}
    async with client.stream(
        "POST", f"{base_url}/v1/turns", json=body, headers=headers, timeout=timeout
    ) as resp:
        result = TurnResult(resp.status_code)
        if resp.status_code != 200:
            await resp.aread()
            result.events.append(SseEvent("error", None, resp.json().get("error", {})))
            return result
        async for ev in iter_sse(resp):
            if ev.event == "token" and result.ttft_ms is None:
                result.ttft_ms = (time.perf_counter() - t0) * 1000
            result.events.append(ev)
            if ev.event in ("done", "error"):
                break
    result.total_ms = (time.perf_counter() - t0) * 1000
    return result
