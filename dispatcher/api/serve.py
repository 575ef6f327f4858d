"""Serving the ingress: ``run`` for the command line, ``running_ingress`` for tests.

``running_ingress`` serves the app from a background thread on a socket bound before the
thread starts (so the port is known and free), waits until the lifespan has run, and
stops the server on exit, as httpx's own test suite serves its test app.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from dispatcher.api.app import create_app
from dispatcher.api.runtime import Tuning
from dispatcher.settings import Settings

START_TIMEOUT_S = 10.0


def _config(app: Any, host: str, port: int, log_level: str, **extra: Any) -> uvicorn.Config:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return uvicorn.Config(
        app, host=host, port=port, loop=loop, http=http, ws="none", lifespan="on",
        log_level=log_level, access_log=False, backlog=4096, **extra,
    )


def run(settings: Settings, host: str = "0.0.0.0", port: int = 8000,
        log_level: str = "info") -> None:
    """Serve the ingress until interrupted (one process; scale with more processes)."""
    uvicorn.Server(
        _config(create_app(settings), host, port, log_level, timeout_graceful_shutdown=10)
    ).run()


@contextmanager
def running_ingress(
    settings: Settings,
    *,
    tuning: Tuning | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
) -> Iterator[str]:
    """Run the ingress in a background thread; yield its base URL ("http://host:port")."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    config = _config(
        create_app(settings, tuning=tuning), host, bound, log_level,
        log_config=None, timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"dispatcher-ingress:{bound}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the ingress did not start on {host}:{bound}")
            time.sleep(0.01)
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()
