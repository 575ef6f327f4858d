"""The lean HTTP/1.1 transport under httpx, against real servers over loopback.

The simulator (uvicorn) for streams and connection reuse; small ``asyncio`` servers for
what a well-behaved server never does (closing a kept-alive connection, answering slowly,
sending garbage).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import orjson
import pytest

from dispatcher.policy.models import Provider, Timeouts
from dispatcher.providers import make_client, new_http_client
from dispatcher.providers.base import ChatRequest
from dispatcher.providers.transport import LeanTransport
from dispatcher.sim.answer import answer_tokens

pytestmark = pytest.mark.integration

PROMPT = "What are your opening hours tomorrow?"


def _chat(model: str = "sim-openai-model") -> bytes:
    return orjson.dumps({"model": model, "stream": True,
                         "messages": [{"role": "user", "content": PROMPT}]})


@pytest.fixture
async def transport() -> AsyncIterator[LeanTransport]:
    lean = LeanTransport(max_connections=4)
    yield lean
    await lean.aclose()


@contextlib.asynccontextmanager
async def _serve(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A raw TCP server running ``handler`` per connection; its URL. All closed at exit."""
    handlers: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for writer in writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def test_streams_reuse_one_connection(sim: str, transport: LeanTransport) -> None:
    # Given three streamed calls one after the other through an OpenAI adapter
    provider = Provider(family="openai", base_url="https://unused.example.com",
                        api_key_env="SIM_TEST_KEY",
                        timeouts=Timeouts(connect_s=1, first_token_s=5, total_s=10))
    async with httpx.AsyncClient(transport=transport) as http:
        client = make_client("p", provider, http, env={"SIM_TEST_KEY": "sk-test"}, sim_url=sim)
        request = ChatRequest(model="sim-openai-model",
                              messages=[{"role": "user", "content": PROMPT}])
        texts = []
        for _ in range(3):
            parts = [e.text async for e in client.stream(request) if hasattr(e, "text")]
            texts.append("".join(parts))

    # Then each answer is whole, and all three went over the one connection
    assert texts == ["".join(answer_tokens(PROMPT, 12))] * 3
    assert transport.connects == 1


async def test_closing_a_stream_early_closes_its_connection(
    sim: str, transport: LeanTransport
) -> None:
    # Given a long answer of which only the first bytes are read
    async with httpx.AsyncClient(base_url=sim, transport=transport) as http:
        await http.post("/admin/latency", json={"model": "sim-openai-model", "ttft_ms": 5,
                                                "itl_ms": 100, "tokens": 50})
        async with http.stream("POST", "/v1/chat/completions", content=_chat(),
                               headers={"authorization": "Bearer sk-test"}) as response:
            async for _ in response.aiter_bytes():
                break
        # Then the server sees the call cancelled, and the next call needs a new connection
        for _ in range(100):
            stats = (await http.get("/admin/stats")).json()["models"]["sim-openai-model"]
            if stats["cancelled"] == 1:
                break
            await asyncio.sleep(0.02)
        assert stats["cancelled"] == 1
    assert transport.connects == 2


async def test_a_kept_alive_connection_the_server_closed_is_retried_once(
    transport: LeanTransport,
) -> None:
    # Given a server that answers one request per connection, then closes it without a
    # Connection: close header (as a server whose keep-alive timer fired does)
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    async with _serve(once) as url, httpx.AsyncClient(transport=transport) as http:
        first = await http.post(url, content=b"{}")
        await asyncio.sleep(0.2)  # the server has closed the kept-alive connection
        second = await http.post(url, content=b"{}")
        await asyncio.sleep(0.1)  # the server's handler closes its side
    assert (first.text, second.text) == ("ok", "ok")
    assert transport.connects == 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", httpx.RemoteProtocolError),  # closed without a response
        (b"NOT HTTP AT ALL\r\n\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", httpx.RemoteProtocolError),
    ],
)
async def test_a_broken_server_raises_httpx_errors(
    transport: LeanTransport, reply: bytes, error: type[Exception]
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async with _serve(broken) as url, httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(error):
            await http.post(url, content=b"{}")


async def test_timeouts_and_refusals_are_httpx_errors(transport: LeanTransport) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async with _serve(silent) as url, httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url, content=b"{}", timeout=httpx.Timeout(1, read=0.2))
    # nothing listens on the port any more
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(url, content=b"{}")


async def test_waits_for_a_free_connection_then_gives_up(transport: LeanTransport) -> None:
    # Given a pool of 4 connections, all held by slow answers
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async with _serve(slow) as url, httpx.AsyncClient(transport=transport) as http:
        # a fifth request waits for a connection and gets one when an answer is read
        answers = await asyncio.gather(*(http.post(url, content=b"{}") for _ in range(5)))
        assert [a.text for a in answers] == ["ok"] * 5
        assert transport.connects == 4
        # with a pool timeout shorter than the answers, the fifth gives up
        timeout = httpx.Timeout(5, pool=0.1)
        results = await asyncio.gather(
            *(http.post(url, content=b"{}", timeout=timeout) for _ in range(5)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, httpx.PoolTimeout) for r in results) == 1


async def test_the_process_client_uses_it(sim: str) -> None:
    async with new_http_client() as http:
        response = await http.get(f"{sim}/health")
    assert response.status_code == 200
    assert isinstance(http._transport, LeanTransport)
