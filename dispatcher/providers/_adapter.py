"""What the three adapters share: the HTTP call, its timeouts and its error mapping.

A subclass says how to build the request (:meth:`HttpAdapter.build`) and how to parse the
answer (:meth:`HttpAdapter.parse_stream` over decoded SSE events, and
:meth:`HttpAdapter.parse_response` over a JSON body); both parsers are plain functions of
their input so the unit tests feed them recorded payloads without any HTTP.

Timeouts (``Provider.timeouts``):

* ``connect_s``: httpx's connect (and pool) timeout -> ``ProviderTimeout(phase="connect")``;
* ``first_token_s``: from the start of the call to the first text, tool-call or finish
  event (pings and headers do not count) -> ``ProviderTimeout(phase="first_token")``;
  applies to :meth:`stream` only, since a non-streamed answer arrives all at once;
* ``total_s``: the whole call -> ``ProviderTimeout(phase="total")``.

They are enforced with asyncio deadlines around each await, never across a ``yield``, so
the time a consumer spends between events is counted but the consumer is never cancelled
by us. The response lives in ``async with``: closing the stream early or cancelling the
task closes the connection at once (consumers should use ``contextlib.aclosing``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from typing import Any, ClassVar

import httpx
import orjson

from dispatcher.domain import Usage
from dispatcher.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderStreamError,
    ProviderTimeout,
)
from dispatcher.policy.models import Provider
from dispatcher.providers.base import (
    ChatRequest,
    Completion,
    Finish,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from dispatcher.providers.errors import error_from_response, error_from_transport, scrub
from dispatcher.providers.sse import SSEEvent, aiter_sse
from dispatcher.providers.transport import REUSE

__all__ = ["HttpAdapter", "collect", "loads_or_stream_error"]

Built = tuple[str, dict[str, str], dict[str, Any]]


def loads_or_stream_error(data: str | bytes, *, provider: str, model: str) -> Any:
    """Parse one JSON document from the provider, or raise ``ProviderStreamError``."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
        raise ProviderStreamError(
            f"malformed JSON from the provider: {scrub(text[:120], None)!r}",
            provider=provider,
            model=model,
        ) from None


async def collect(events: AsyncIterable[StreamEvent]) -> Completion:
    """Fold a stream of events into one :class:`Completion` (tool calls by ``index``)."""
    text: list[str] = []
    calls: dict[int, list[str]] = {}  # index -> [id, name, arguments...]
    finish: Finish | None = None
    async for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            slot = calls.setdefault(event.index, ["", ""])
            if event.id:
                slot[0] = event.id
            if event.name:
                slot[1] = event.name
            slot.append(event.arguments)
        else:
            finish = event
    if finish is None:
        raise ProviderStreamError("stream ended without a finish event")
    tool_calls = [
        ToolCall(id=slot[0], name=slot[1], arguments="".join(slot[2:]))
        for _, slot in sorted(calls.items())
    ]
    return Completion(
        text="".join(text), tool_calls=tool_calls, finish_reason=finish.reason, usage=finish.usage
    )


def _timeout(phase: str, limit: float, where: dict[str, str]) -> ProviderTimeout:
    what = "no first token" if phase == "first_token" else "call not finished"
    return ProviderTimeout(f"{what} within {limit:g}s", phase=phase, **where)


class HttpAdapter:
    """One provider of one API family, over a shared ``httpx.AsyncClient``. No retries."""

    family: ClassVar[str] = ""

    def __init__(
        self, name: str, config: Provider, http: httpx.AsyncClient, api_key: str | None
    ) -> None:
        self.name = name
        self.config = config
        self._http = http
        self._api_key = api_key
        t = config.timeouts
        # read=None: reads are bounded by the first-token and total deadlines instead.
        self._timeout = httpx.Timeout(
            connect=t.connect_s, read=None, write=t.total_s, pool=t.connect_s
        )
        self.base_url = config.base_url.rstrip("/")

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    # -- what each family provides -------------------------------------------------------

    def build(self, request: ChatRequest, *, stream: bool) -> Built:
        """The URL, headers and JSON body of the call."""
        raise NotImplementedError

    def parse_stream(
        self, events: AsyncIterator[SSEEvent], model: str
    ) -> AsyncGenerator[StreamEvent, None]:
        """The stream's events in the common form, ending with exactly one ``Finish``."""
        raise NotImplementedError

    def parse_response(self, payload: Any, model: str) -> Completion:
        """A non-streamed JSON answer in the common form."""
        raise NotImplementedError

    # -- the calls ------------------------------------------------------------------------

    def _where(self, request: ChatRequest) -> dict[str, str]:
        return {"provider": self.name, "model": request.model}

    def _headers(
        self, request: ChatRequest, own: dict[str, str], *, stream: bool
    ) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        headers.update(request.extra_headers)
        headers.update(own)
        return headers

    def _build(self, request: ChatRequest, *, stream: bool) -> Built:
        if self._api_key is None and self.config.api_key_env:
            # Fail without a network round trip, naming the variable (never a value).
            raise ProviderAuthError(
                f"no API key: environment variable {self.config.api_key_env} is not set",
                **self._where(request),
            )
        try:
            return self.build(request, stream=stream)
        except ProviderBadRequest as exc:  # raised by translation, before any I/O
            raise ProviderBadRequest(
                str(exc), status=exc.status, excerpt=exc.excerpt, **self._where(request)
            ) from None

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream one call; raises only :class:`dispatcher.errors.ProviderError`."""
        where = self._where(request)
        url, headers, body = self._build(request, stream=True)
        loop = asyncio.get_running_loop()
        t = self.config.timeouts
        started = loop.time()
        total_at = started + t.total_s
        deadline = min(started + t.first_token_s, total_at)
        phase = "first_token" if deadline < total_at else "total"
        limit = t.first_token_s if phase == "first_token" else t.total_s
        async with AsyncExitStack() as stack:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await stack.enter_async_context(
                        self._http.stream(
                            "POST",
                            url,
                            content=orjson.dumps(body),
                            headers=headers,
                            timeout=self._timeout,
                        )
                    )
                    if response.status_code >= 400:
                        raw = await response.aread()
                        raise error_from_response(
                            response.status_code,
                            raw,
                            response.headers,
                            api_key=self._api_key,
                            **where,
                        )
            except TimeoutError:
                raise _timeout(phase, limit, where) from None
            except httpx.HTTPError as exc:
                raise error_from_transport(
                    exc, mid_stream=False, api_key=self._api_key, **where
                ) from exc
            sse = aiter_sse(response.aiter_bytes())
            events = self.parse_stream(sse, request.model)
            try:
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            event = await anext(events)
                    except StopAsyncIteration:
                        # all was read that matters; the connection may serve another call
                        reuse = response.extensions.get(REUSE)
                        if reuse is not None:
                            reuse()
                        return
                    except TimeoutError:
                        raise _timeout(phase, limit, where) from None
                    except httpx.HTTPError as exc:
                        raise error_from_transport(
                            exc, mid_stream=True, api_key=self._api_key, **where
                        ) from exc
                    if phase == "first_token":
                        deadline, phase, limit = total_at, "total", t.total_s
                    yield event
            finally:
                await events.aclose()
                await sse.aclose()

    async def complete(self, request: ChatRequest) -> Completion:
        """One non-streamed call; raises only :class:`dispatcher.errors.ProviderError`."""
        where = self._where(request)
        url, headers, body = self._build(request, stream=False)
        total = self.config.timeouts.total_s
        answered = False
        try:
            async with (
                asyncio.timeout(total),
                self._http.stream(
                    "POST", url, content=orjson.dumps(body), headers=headers, timeout=self._timeout
                ) as response,
            ):
                answered = True
                raw = await response.aread()
        except TimeoutError:
            raise _timeout("total", total, where) from None
        except httpx.HTTPError as exc:
            raise error_from_transport(
                exc, mid_stream=answered, api_key=self._api_key, **where
            ) from exc
        if response.status_code >= 400:
            raise error_from_response(
                response.status_code, raw, response.headers, api_key=self._api_key, **where
            )
        payload = loads_or_stream_error(raw, **where)
        return self.parse_response(payload, request.model)


def usage_of(
    input_tokens: Any = 0, output_tokens: Any = 0, cached: Any = 0, reasoning: Any = 0
) -> Usage:
    """A :class:`Usage` from loosely typed JSON numbers (None and junk count as 0)."""

    def n(value: Any) -> int:
        return value if isinstance(value, int) and value > 0 else 0

    return Usage(n(input_tokens), n(output_tokens), n(cached), n(reasoning))
