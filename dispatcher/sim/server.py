"""Serving the simulator: ``run`` for the command line, ``running_sim`` for tests.

``running_sim`` starts uvicorn in a background thread on a socket bound before the
thread starts (so the port is known and free), waits until it accepts requests, and
stops it on exit, as httpx's own test suite serves its test app.
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

from dispatcher.sim.app import create_sim_app
from dispatcher.sim.state import SimDefaults

#: How long ``running_sim`` waits for the server to start, and to stop.
START_TIMEOUT_S = 10.0


def _config(
    defaults: SimDefaults, host: str, port: int, log_level: str, **extra: Any
) -> uvicorn.Config:
    # uvloop and httptools roughly double the streams one core can carry.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return uvicorn.Config(
        create_sim_app(defaults),
        host=host,
        port=port,
        loop=loop,
        http=http,
        ws="none",
        lifespan="off",
        log_level=log_level,
        access_log=False,
        backlog=4096,
        **extra,
    )


def run(host: str, port: int, defaults: SimDefaults, log_level: str = "warning") -> None:
    """Serve the simulator on ``host:port`` until interrupted (Ctrl+C or SIGTERM)."""
    uvicorn.Server(_config(defaults, host, port, log_level, timeout_graceful_shutdown=5)).run()


@contextmanager
def running_sim(
    defaults: SimDefaults | None = None,
    port: int = 0,
    host: str = "127.0.0.1",
    log_level: str = "warning",
) -> Iterator[str]:
    """Run the simulator in a background thread; yield its base URL ("http://host:port").

    ``port=0`` picks a free port. The server stops when the block exits; requests still
    open then are cancelled after a second.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    # log_config=None: leave the host process's logging (pytest's, for one) as it is.
    config = _config(
        defaults or SimDefaults(),
        host,
        bound_port,
        log_level,
        log_config=None,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name=f"dispatcher-sim:{bound_port}",
        daemon=True,
    )
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start on {host}:{bound_port}")
            time.sleep(0.01)
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()
