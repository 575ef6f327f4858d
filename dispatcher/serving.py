"""Serving an ASGI app with uvicorn: in the foreground, or from a background thread.

``serving_in_thread`` binds the socket before the thread starts (so the port is known and
free), waits until the server has started (and its lifespan has run), and stops it on
exit, as httpx's own test suite serves its test app. The ingress and the simulator use it.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn

#: How long ``serving_in_thread`` waits for the server to start, and to stop.
START_TIMEOUT_S = 10.0


def loop_and_http() -> tuple[str, str]:
    """uvloop and httptools when installed: they roughly double the streams a core carries."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def uvicorn_config(
    app: Any, host: str, port: int, log_level: str, *,
    lifespan: Literal["on", "off"] = "on", **extra: Any,
) -> uvicorn.Config:
    loop, http = loop_and_http()
    return uvicorn.Config(
        app, host=host, port=port, loop=loop, http=http, ws="none", lifespan=lifespan,
        log_level=log_level, access_log=False, backlog=4096, **extra,
    )


@contextmanager
def serving_in_thread(
    app: Any,
    *,
    name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    lifespan: Literal["on", "off"] = "on",
    graceful_s: float = 1,
) -> Iterator[str]:
    """Serve ``app`` from a daemon thread; yield its base URL ("http://host:port")."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    # log_config=None: leave the host process's logging (pytest's, for one) as it is.
    config = uvicorn_config(app, host, bound, log_level, lifespan=lifespan, log_config=None,
                            timeout_graceful_shutdown=graceful_s)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"{name}:{bound}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start on {host}:{bound}")
            time.sleep(0.01)
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()
